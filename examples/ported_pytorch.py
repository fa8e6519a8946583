"""A plain PyTorch training script, run by gradflow: only the two import lines marked below differ.

It uses what ported scripts typically use: a custom map-style ``Dataset`` loaded by
``DataLoader(num_workers=2)``, a custom ``autograd.Function``, ``Module.apply`` for weight
initialization, ``ReduceLROnPlateau`` and a safetensors checkpoint that is saved, reloaded
and checked. Swap the two marked lines back (``import torch`` and
``from safetensors.torch import load_file, save_file``) and the same file runs on PyTorch;
``tests/test_ported_pytorch.py`` runs it both ways.

    python examples/ported_pytorch.py [--epochs 8] [--samples 1200] [--out runs/ported]
"""
import argparse
import math
import os
import tempfile

# ---- the only lines that differ from the PyTorch original --------------------------------------------
import gradflow as torch                                # import torch
from gradflow.interop import load_file, save_file      # from safetensors.torch import load_file, save_file
# ------------------------------------------------------------------------------------------------------

nn = torch.nn
F = torch.nn.functional


class TwoRings(torch.utils.data.Dataset):
    """Points on two concentric noisy rings, labelled by ring: a small task no linear model solves."""

    def __init__(self, n, seed=0, noise=0.08):
        g = torch.Generator().manual_seed(seed)
        self.n = n
        angle = torch.rand(n, generator=g) * 2 * math.pi
        self.labels = torch.randint(0, 2, (n,), generator=g)
        radius = self.labels.float() * 0.6 + 0.4 + torch.randn(n, generator=g) * noise
        self.points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.points[i], int(self.labels[i])


class ScaledSwish(torch.autograd.Function):
    """swish(x) = x * sigmoid(beta x), with a hand-written backward (beta is a plain float)."""

    @staticmethod
    def forward(ctx, x, beta):
        s = torch.sigmoid(x * beta)
        ctx.save_for_backward(x, s)
        ctx.beta = beta
        return x * s

    @staticmethod
    def backward(ctx, grad_output):
        x, s = ctx.saved_tensors
        return grad_output * (s + x * ctx.beta * s * (1 - s)), None


class Swish(nn.Module):
    def __init__(self, beta=1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return ScaledSwish.apply(x, self.beta)


class Net(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, hidden), Swish(), nn.Linear(hidden, hidden), Swish())
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.body(x))


def init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def evaluate(model, loader):
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for xb, yb in loader:
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(dim=1) == yb).sum().item()
            total += yb.shape[0]
    model.train()
    return loss_sum / total, correct / total


def main(epochs=8, samples=1200, out=None, num_workers=2, seed=0, verbose=True):
    torch.manual_seed(seed)
    train_set, val_set = TwoRings(samples, seed=seed), TwoRings(samples // 4, seed=seed + 1)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True, num_workers=num_workers,
                                               drop_last=True)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=128, num_workers=num_workers)

    model = Net()
    model.apply(init_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)

    for epoch in range(epochs):
        for xb, yb in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
        val_loss, val_acc = evaluate(model, val_loader)
        scheduler.step(val_loss)
        if verbose:
            print(f"epoch {epoch + 1}: val loss {val_loss:.4f}  val acc {val_acc:.3f}  "
                  f"lr {optimizer.param_groups[0]['lr']:.4g}")

    out = out or tempfile.mkdtemp(prefix="ported_pytorch_")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.safetensors")
    save_file(model.state_dict(), path)
    restored = Net()
    restored.load_state_dict(load_file(path))
    restored_loss, restored_acc = evaluate(restored, val_loader)
    if verbose:
        print(f"checkpoint {path}: reloaded val acc {restored_acc:.3f}")
    return dict(val_loss=val_loss, val_acc=val_acc, restored_acc=restored_acc, restored_loss=restored_loss,
                lr=optimizer.param_groups[0]["lr"], checkpoint=path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    main(args.epochs, args.samples, args.out, args.workers)
