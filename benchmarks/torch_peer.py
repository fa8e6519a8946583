"""The PyTorch eager peer: the same MLP, initial weights, loss and optimizer as gradflow's.

Plain eager mode as a user writes it -- ``nn.Sequential`` of ``nn.Linear``/``nn.ReLU``,
``F.cross_entropy``, ``torch.optim.SGD(momentum=...)`` with its default implementation,
``zero_grad(set_to_none=True)`` -- no ``torch.compile``, no CUDA graphs.
"""
import numpy

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the suite reports PyTorch rows as skipped
    torch = None
    F = None


def available(device="cpu"):
    """(True, '') or (False, why) for running the peer on ``device``."""
    if torch is None:
        return False, "PyTorch is not importable"
    if device == "cuda" and not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (CPU-only PyTorch build or no GPU)"
    return True, ""


def build_mlp(weights, device="cpu"):
    """``nn.Sequential`` of Linear+ReLU with the given (W (out, in), b) pairs copied in."""
    layers = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(numpy.ascontiguousarray(w, dtype=numpy.float32)))
            lin.bias.copy_(torch.from_numpy(numpy.ascontiguousarray(b, dtype=numpy.float32)))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device)


class TorchMLP:
    """Training and inference steps with the PyTorch peer."""

    def __init__(self, weights, lr=0.1, momentum=0.9, device="cpu"):
        self.device = device
        self.model = build_mlp(weights, device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def predict(self, x):
        with torch.no_grad():
            return self.model(x)

    def weights(self):
        lins = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        return [(m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy()) for m in lins]


class TorchCudaGraphMLP(TorchMLP):
    """The same step captured whole with ``torch.cuda.CUDAGraph`` (PyTorch's recipe for
    whole-network capture): warm-up steps on a side stream, then forward, backward and
    ``optimizer.step()`` captured once; each step copies the batch into the static inputs
    and replays the graph. SGD keeps no step count, so it needs no ``capturable`` flag
    (Adam would: ``capturable=True``). The loss returned is the graph's static output."""

    def __init__(self, weights, lr=0.1, momentum=0.9, device="cuda"):
        super().__init__(weights, lr, momentum, device)
        self.graph = None
        self.static_x = self.static_y = self.static_loss = None

    def _capture(self, x, y):
        self.static_x, self.static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):   # warm-up (allocates grads and momentum buffers) outside the graph
                super().step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = F.cross_entropy(self.model(self.static_x), self.static_y)
            self.static_loss.backward()
            self.opt.step()

    def step(self, x, y):
        if self.graph is None:
            self._capture(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss
class TorchCNN(TorchMLP):
    """The MNIST CNN (built by the caller with torch.nn) from a given initial state_dict."""

    def __init__(self, model, state, lr=0.1, momentum=0.9, device="cpu"):
        self.device = device
        model.load_state_dict({k: torch.from_numpy(numpy.array(v)) for k, v in state.items()})
        self.model = model.to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)


def to_torch(array, device="cpu"):
    """A host NumPy array as a torch tensor on ``device`` (shares memory on the CPU)."""
    t = torch.from_numpy(numpy.ascontiguousarray(array))
    return t.to(device) if device != "cpu" else t


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()
