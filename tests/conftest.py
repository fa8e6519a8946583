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


@pytest.fixture(autouse=True)
def _seed():
    gradflow.manual_seed(0)
    numpy.random.seed(0)
    yield
