"""CNN layers inside gradflow.compile, and the MNIST CNN example (smoke run)."""
import importlib.util
import json
import os

import numpy
import pytest

import gradflow as gf
from gradflow import nn, optim
from gradflow.nn import functional as F

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mnist_cnn.py")


def _example():
    spec = importlib.util.spec_from_file_location("mnist_cnn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(momentum):
    gf.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False), nn.GroupNorm(2, 6), nn.AvgPool2d(2),
        nn.Dropout2d(0.2), nn.Flatten(), nn.LayerNorm(24), nn.Linear(24, 8), nn.BatchNorm1d(8, momentum=momentum),
        nn.Dropout(0.3), nn.Linear(8, 3))


def _step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.parametrize("momentum", [0.1, None])
def test_compiled_cnn_steps_equal_eager(momentum):
    """Replay == eager, bit for bit: weights, BatchNorm running stats and num_batches_tracked included."""
    rng = numpy.random.default_rng(0)
    data = [(gf.tensor(rng.standard_normal((5, 2, 8, 8)).astype(numpy.float32)), gf.tensor(rng.integers(0, 3, 5)))
            for _ in range(3)]
    eager_model, comp_model = _model(momentum), _model(momentum)
    eager = _step(eager_model, optim.Adam(eager_model.parameters(), lr=1e-2))
    compiled = gf.compile(_step(comp_model, optim.Adam(comp_model.parameters(), lr=1e-2)), strict=True)
    gf.manual_seed(7)
    eager_losses = [eager(*data[i % 3]).numpy() for i in range(8)]
    gf.manual_seed(7)
    losses = [compiled(*data[i % 3]).numpy() for i in range(8)]
    assert compiled.captured
    numpy.testing.assert_array_equal(losses, eager_losses)
    comp_state = comp_model.state_dict()
    for name, value in eager_model.state_dict().items():
        numpy.testing.assert_array_equal(comp_state[name].numpy(), value.numpy(), err_msg=name)
    assert int(comp_state["1.num_batches_tracked"].item()) == 8
    eager_model.eval()
    comp_model.eval()
    x = data[0][0]
    numpy.testing.assert_array_equal(comp_model(x).numpy(), eager_model(x).numpy())


def test_mnist_cnn_example_smoke(tmp_path):
    """One epoch on a tiny subset: the script runs end to end and writes its outputs."""
    example = _example()
    rc = example.main(["--device", "cpu", "--epochs", "1", "--limit", "600", "--val-size", "200", "--test-limit",
                       "300", "--batch-size", "100", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.2  # far above chance (0.1) after 4 steps
    assert os.path.exists(tmp_path / "checkpoint.npz")


def test_mnist_cnn_model_matches_torch_layout():
    torch = pytest.importorskip("torch")
    example = _example()
    model, tmodel = example.lenet(), example.lenet(nn=torch.nn)
    tstate = tmodel.state_dict()
    assert list(model.state_dict()) == list(tstate)
    model.load_state_dict({k: v.numpy() for k, v in tstate.items()})
    model.eval()
    tmodel.eval()
    x = numpy.random.default_rng(0).random((4, 28, 28), dtype=numpy.float32)
    numpy.testing.assert_allclose(model(gf.Tensor(x)).numpy(), tmodel(torch.tensor(x)).detach().numpy(), atol=1e-4)
