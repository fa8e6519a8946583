"""The contestants: gradflow (eager, and captured when ``gradflow.compile`` exists), the
PyTorch eager peer and the hand-written NumPy/CuPy loop, each on the CPU and the GPU.

Every contestant answers the same questions -- is it available here, how to put a host
array on its device, how to build a trainer from given initial weights, which clock times
it, how to measure its peak memory -- so the cases can treat them alike.
"""
import numpy

from benchmarks import harness, numpy_mlp, torch_peer
from gradflow import backend


# ---- the reference initial weights ---------------------------------------------------------------------
def reference_weights(sizes, seed=0):
    """Initial weights for an MLP of ``sizes``, as (W (out, in), b) float32 host arrays.

    They come from ``gradflow.nn.MLP`` seeded with ``seed`` -- gradflow's own
    initialisation, copied into every other contestant. Returns (weights, source).
    """
    try:
        import gradflow
        from gradflow import nn
        gradflow.manual_seed(seed)
        model = nn.MLP(sizes, device="cpu")
        return export_gradflow_weights(model), "gradflow.nn.MLP"
    except (ImportError, AttributeError) as e:
        # gradflow.nn is not importable: PyTorch's default Linear init, drawn with NumPy
        rng = numpy.random.default_rng(seed)
        weights = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / numpy.sqrt(n_in)
            weights.append((rng.uniform(-bound, bound, (n_out, n_in)).astype(numpy.float32),
                            rng.uniform(-bound, bound, n_out).astype(numpy.float32)))
        return weights, f"numpy (gradflow.nn unavailable: {e})"


def lenet(nn):
    """examples/mnist_cnn.py's CNN built with ``nn`` (gradflow.nn or torch.nn): the ``cnn`` case's model."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mnist_cnn.py")
    spec = importlib.util.spec_from_file_location("_gradflow_mnist_cnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lenet(nn=nn)


def reference_cnn_weights(seed=0):
    """The CNN's initial state_dict (parameters and BatchNorm buffers) as host arrays, from gradflow's init."""
    import gradflow
    from gradflow import nn
    gradflow.manual_seed(seed)
    model = lenet(nn)
    return {k: v.numpy() for k, v in model.state_dict().items()}, "gradflow examples/mnist_cnn.py lenet"


def _linears(model):
    from gradflow import nn
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def export_gradflow_weights(model):
    return [(lin.weight.numpy().astype(numpy.float32), lin.bias.numpy().astype(numpy.float32))
            for lin in _linears(model)]


def load_gradflow_weights(model, weights):
    lins = _linears(model)
    if len(lins) != len(weights):
        raise ValueError(f"model has {len(lins)} Linear layers, weights have {len(weights)}")
    for lin, (w, b) in zip(lins, weights):
        for param, value in ((lin.weight, w), (lin.bias, b)):
            if tuple(param.shape) != tuple(value.shape):
                raise ValueError(f"shape mismatch: {param.shape} vs {value.shape}")
            param.data[...] = backend.to_device(numpy.asarray(value, dtype=param.dtype), param.device)
            param._bump_version()


# ---- gradflow ----------------------------------------------------------------------------------------------------
class GradflowTrainer:
    """The user-level gradflow training step: MLP, cross_entropy, SGD(momentum)."""

    def __init__(self, sizes, weights, lr, momentum, device):
        import gradflow
        from gradflow import nn, optim
        self.gf = gradflow
        self.model = nn.MLP(sizes, device=device)
        load_gradflow_weights(self.model, weights)
        self.opt = optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.loss_fn = nn.functional.cross_entropy

    def step(self, x, y):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def predict(self, x):
        with self.gf.no_grad():
            return self.model(x)

    def weights(self):
        return export_gradflow_weights(self.model)


class GradflowCNNTrainer(GradflowTrainer):
    """The same user-level step on the MNIST CNN (conv, BatchNorm, pooling, dropout, Linear)."""

    def __init__(self, state, lr, momentum, device):
        import gradflow
        from gradflow import nn, optim
        self.gf = gradflow
        self.model = lenet(nn).to(device)
        self.model.load_state_dict(state)
        self.opt = optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.loss_fn = nn.functional.cross_entropy


class CapturedTrainer(GradflowTrainer):
    """The same step, captured once by ``gradflow.compile`` and replayed."""

    def __init__(self, sizes, weights, lr, momentum, device):
        super().__init__(sizes, weights, lr, momentum, device)
        self._captured = self.gf.compile(super().step)
        self._forward = self.gf.compile(self.model)   # inference: recorded under no_grad, replayed
        self._used = self._captured

    def step(self, x, y):
        self._used = self._captured
        return self._captured(x, y)

    def predict(self, x):
        self._used = self._forward
        with self.gf.no_grad():
            return self._forward(x)

    def capture_status(self):
        """Whether the last used compiled function (step or predict) replays a plan, and if not, why."""
        used = self._used
        reasons = [e.eager_reason for e in getattr(used, "cache", {}).values() if getattr(e, "eager_reason", None)]
        return {"captured": bool(getattr(used, "captured", False)),
                "eager_reason": reasons[-1] if reasons else None}


class CapturedCNNTrainer(CapturedTrainer):
    """The CNN's step (and forward), captured by ``gradflow.compile`` and replayed."""

    def __init__(self, state, lr, momentum, device):
        GradflowCNNTrainer.__init__(self, state, lr, momentum, device)
        self._captured = self.gf.compile(GradflowTrainer.step.__get__(self))
        self._forward = self.gf.compile(self.model)
        self._used = self._captured


class Contestant:
    """Base: one framework on one device."""
    name = "?"
    framework = "?"

    def __init__(self, device):
        self.device = device

    @property
    def label(self):
        return f"{self.name}/{self.device}"

    def available(self):
        """(True, '') or (False, why not)."""
        return True, ""

    def clock(self):
        """CUDA events on the GPU (CuPy's stream; PyTorch overrides), the wall clock on the CPU."""
        return harness.CupyClock() if self.device == "cuda" else harness.WallClock()

    def sync(self):
        if self.device == "cuda":
            backend.cupy().cuda.get_current_stream().synchronize()

    def put(self, array):
        """A host array on this contestant's device, in its native type."""
        raise NotImplementedError

    def trainer(self, sizes, weights, lr, momentum):
        raise NotImplementedError

    def peak_memory(self, build, step):
        """Memory at the peak of ``step(build())`` and before it; see ``harness`` (a dict of bytes
        plus ``meter``, naming what measured it)."""
        raise NotImplementedError

    def to_host(self, value):
        raise NotImplementedError


class Gradflow(Contestant):
    name = "gradflow"
    framework = "gradflow"

    def available(self):
        if self.device == "cuda" and not backend.cuda_is_available():
            return False, "no usable CUDA device for CuPy"
        try:
            from gradflow import nn, optim  # noqa: F401
            nn.MLP, nn.functional.cross_entropy, optim.SGD  # noqa: B018
        except (ImportError, AttributeError) as e:
            return False, f"gradflow.nn / gradflow.optim not available yet ({e})"
        return True, ""

    def put(self, array):
        from gradflow.tensor import Tensor
        return Tensor._wrap(backend.to_device(numpy.ascontiguousarray(array), self.device))

    def trainer(self, sizes, weights, lr, momentum):
        return GradflowTrainer(sizes, weights, lr, momentum, self.device)

    def cnn_trainer(self, state, lr, momentum):
        return GradflowCNNTrainer(state, lr, momentum, self.device)

    def peak_memory(self, build, step):
        if self.device == "cuda":
            return dict(harness.cupy_peak(build, step), meter="CuPy pool")
        return dict(harness.host_tracemalloc_peak(build, step), meter="tracemalloc")

    def to_host(self, value):
        return backend.to_numpy(value.data)


class GradflowCaptured(Gradflow):
    name = "gradflow-captured"

    def available(self):
        import gradflow
        if not hasattr(gradflow, "compile"):
            return False, "gradflow.compile does not exist (yet)"
        return super().available()

    def trainer(self, sizes, weights, lr, momentum):
        return CapturedTrainer(sizes, weights, lr, momentum, self.device)

    def cnn_trainer(self, state, lr, momentum):
        return CapturedCNNTrainer(state, lr, momentum, self.device)


class Torch(Contestant):
    name = "torch"
    framework = "torch"

    def available(self):
        return torch_peer.available(self.device)

    def clock(self):
        return harness.TorchCudaClock() if self.device == "cuda" else harness.WallClock()

    def sync(self):
        torch_peer.synchronize(self.device)

    def put(self, array):
        return torch_peer.to_torch(array, self.device)

    def trainer(self, sizes, weights, lr, momentum):
        return torch_peer.TorchMLP(weights, lr, momentum, self.device)

    def cnn_trainer(self, state, lr, momentum):
        return torch_peer.TorchCNN(lenet(torch_peer.torch.nn), state, lr, momentum, self.device)

    def peak_memory(self, build, step):
        if self.device == "cuda":
            return dict(harness.torch_cuda_peak(build, step), meter="torch CUDA allocator")
        return dict(harness.torch_cpu_peak(build, step), meter="torch profiler")

    def to_host(self, value):
        return value.detach().cpu().numpy()


class TorchCudaGraph(Torch):
    """PyTorch's own whole-step capture: ``torch.cuda.CUDAGraph`` over forward, backward and
    ``optimizer.step()``, replayed after copying each batch into static inputs (GPU only)."""
    name = "torch-cudagraph"

    def available(self):
        if self.device != "cuda":
            return False, "CUDA graphs need a GPU"
        return torch_peer.available(self.device)

    def trainer(self, sizes, weights, lr, momentum):
        return torch_peer.TorchCudaGraphMLP(weights, lr, momentum, self.device)


class NumpyLoop(Contestant):
    """The hand-written loop: NumPy on the CPU, the same code on CuPy on the GPU."""
    name = "numpy-loop"
    framework = "numpy"

    def available(self):
        if self.device == "cuda" and not backend.cuda_is_available():
            return False, "no usable CUDA device for CuPy"
        return True, ""

    @property
    def xp(self):
        return backend.xp_for(self.device)

    def put(self, array):
        return backend.to_device(numpy.ascontiguousarray(array), self.device)

    def trainer(self, sizes, weights, lr, momentum):
        return numpy_mlp.NumpyMLP(weights, lr, momentum, xp=self.xp)

    def peak_memory(self, build, step):
        if self.device == "cuda":
            return dict(harness.cupy_peak(build, step), meter="CuPy pool")
        return dict(harness.host_tracemalloc_peak(build, step), meter="tracemalloc")

    def to_host(self, value):
        return backend.to_numpy(value)


ALL = (Gradflow, GradflowCaptured, Torch, TorchCudaGraph, NumpyLoop)


def contestants(devices, kinds=ALL):
    """Every contestant kind on every device, available or not, GPU ones after CPU ones."""
    return [kind(device) for device in devices for kind in kinds]


def split_available(candidates):
    """(available contestants, {label: why not} for the others)."""
    ok, skipped = [], {}
    for c in candidates:
        good, why = c.available()
        if good:
            ok.append(c)
        else:
            skipped[c.label] = why
    return ok, skipped
