import numpy
import pytest

import gradflow


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a usable CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if gradflow.cuda_is_available():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (CuPy missing or no GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The devices a test can be parametrized over: use the ``device`` fixture (or mark a whole module
# with ``pytestmark = pytest.mark.usefixtures("device")``). The cuda case carries the gpu mark,
# so it is skipped without a usable device and selected by ``pytest -m gpu``.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device this test instance runs on; it is also the default device during the test."""
    return request.param


@pytest.fixture(autouse=True)
def _pin_default_device(request, monkeypatch):
    """Every test has an explicit default device (GRADFLOW_DEVICE, also inherited by subprocesses).

    On a GPU host the default would be cuda, so an unpinned CPU test would silently run on the
    GPU. A test parametrized over ``device`` runs on that device; other tests marked ``gpu``
    default to cuda; every other test to the CPU.
    """
    if "device" in request.fixturenames:
        pinned = request.getfixturevalue("device")
    elif request.node.get_closest_marker("gpu") is not None:
        pinned = "cuda"
    else:
        pinned = "cpu"
    monkeypatch.setenv("GRADFLOW_DEVICE", pinned)
    yield pinned


@pytest.fixture(autouse=True)
def _seed():
    gradflow.manual_seed(0)
    numpy.random.seed(0)
    yield
