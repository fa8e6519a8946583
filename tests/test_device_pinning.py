"""Every test has an explicit device: CPU tests are pinned, core tests also run over cuda."""
import os

import pytest

import gradflow as gf


def test_unparametrized_tests_are_pinned_to_the_cpu():
    assert os.environ["GRADFLOW_DEVICE"] == "cpu"
    assert gf.zeros(2).device == "cpu" and gf.tensor([1.0]).device == "cpu"


def test_device_parametrized_tests_default_to_their_device(device):
    assert os.environ["GRADFLOW_DEVICE"] == device
    assert gf.zeros(2).device == device and gf.randn(3).device == device


@pytest.mark.gpu
def test_gpu_tests_default_to_cuda():
    assert os.environ["GRADFLOW_DEVICE"] == "cuda" and gf.zeros(1).device == "cuda"


CORE_MODULES = ("test_ops_grad.py", "test_autograd.py", "test_optim.py")


def test_core_tests_are_also_parametrized_over_cuda(request):
    """A GPU run (pytest -m gpu) must check the core ops, gradients and optimizers, not just kernels."""
    items = request.session.items
    for module in CORE_MODULES:
        mine = [i for i in items if i.path.name == module]
        if not mine:
            continue  # not collected in this run
        cuda = [i for i in mine if getattr(i, "callspec", None) and i.callspec.params.get("device") == "cuda"]
        assert cuda, f"{module}: no test parametrized over the cuda device"
        assert all(i.get_closest_marker("gpu") for i in cuda), f"{module}: cuda tests without the gpu mark"
