"""Tensor basics, conversions and backend selection."""
import numpy
import pytest

import gradflow as gf
from gradflow import backend


def test_properties_and_conversions():
    x = gf.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert x.shape == (2, 2) and x.ndim == 2 and x.numel() == 4 and x.size() == (2, 2) and x.size(-1) == 2 and x.dtype == numpy.float32
    assert x.device == "cpu" and len(x) == 2
    host = x.numpy()
    host[0, 0] = 100
    assert x.data[0, 0] == 1.0          # numpy() is a copy
    assert numpy.asarray(x).shape == (2, 2)
    assert x[1, 0].item() == 3.0 and float(x.sum()) == 10.0
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert "tensor(" in repr(x) and "grad_fn=<Mul>" in repr(gf.tensor([1.0], requires_grad=True) * 2)
    with pytest.raises(ValueError, match="one element"):
        x.item()


def test_from_numpy_shares_memory_and_tensor_copies():
    a = numpy.zeros(3, numpy.float32)
    shared, copied = gf.from_numpy(a), gf.tensor(a)
    a[0] = 5
    assert shared.data[0] == 5 and copied.data[0] == 0


def test_float64_supported_throughout():
    x = gf.tensor(numpy.ones((2, 3)), requires_grad=True)
    assert x.dtype == numpy.float64
    y = (x @ x.T).exp().log().mean()
    y.backward()
    assert x.grad.dtype == numpy.float64


def test_factories():
    gf.manual_seed(3)
    a = gf.randn(2, 3)
    gf.manual_seed(3)
    b = gf.randn((2, 3))
    assert numpy.array_equal(a.numpy(), b.numpy()) and a.dtype == numpy.float32
    assert gf.zeros(2, 3).shape == (2, 3) and gf.ones(4).sum().item() == 4
    assert gf.arange(5).dtype == numpy.int64 and gf.eye(3).sum().item() == 3
    assert gf.full((2, 2), 7.0).numpy().tolist() == [[7, 7], [7, 7]]
    assert gf.zeros_like(a).shape == a.shape and gf.randint(0, 3, (10,)).numpy().max() < 3


def test_comparisons_are_not_differentiable():
    x = gf.tensor([1.0, -2.0], requires_grad=True)
    m = x > 0
    assert m.dtype == bool and not m.requires_grad
    assert (x == x).numpy().all()


def test_cpu_fallback_and_explicit_device(monkeypatch):
    monkeypatch.setenv("GRADFLOW_DEVICE", "cpu")
    assert backend.default_device() == "cpu"
    x = gf.tensor([1.0])
    monkeypatch.setenv("GRADFLOW_DEVICE", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        backend.default_device()
    assert x.to("cpu") is x and x.cpu() is x


@pytest.mark.skipif(backend.cuda_is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_gpu_is_a_clear_error(monkeypatch):
    with pytest.raises(RuntimeError, match="'cuda' requested but unavailable"):
        gf.tensor([1.0]).cuda()
    monkeypatch.setenv("GRADFLOW_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="unavailable"):
        backend.default_device()


def test_import_without_gpu_falls_back_silently(capfd):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import gradflow as g; print(g.zeros(2).device)"],
                         capture_output=True, text=True, env={**__import__("os").environ, "GRADFLOW_DEVICE": ""})
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.strip() in ("cpu", "cuda")


@pytest.mark.gpu
def test_gpu_roundtrip_and_mixed_device_error():
    x = gf.tensor([1.0, 2.0], device="cpu", requires_grad=True)  # explicit: on a GPU host the default is cuda
    y = x.cuda()
    assert y.device == "cuda"
    (y * y).sum().backward()
    assert x.grad.device == "cpu" and numpy.allclose(x.grad.numpy(), [2, 4])
    with pytest.raises(RuntimeError, match="different devices.*'cuda'.*'cpu'|different devices.*'cpu'.*'cuda'"):
        y + gf.tensor([1.0, 1.0], device="cpu")


@pytest.mark.gpu
def test_gpu_gradients_match_cpu():
    rng = numpy.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    results = []
    for device in ("cpu", "cuda"):
        ta = gf.tensor(a, device=device, requires_grad=True)
        tb = gf.tensor(b, device=device, requires_grad=True)
        ((ta @ tb).exp().sum(axis=1) ** 0.5).mean().backward()
        results.append((ta.grad.numpy(), tb.grad.numpy()))
    for c, g in zip(*results):
        assert numpy.allclose(c, g)
