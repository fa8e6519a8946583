"""Every kernel source compiles with nvcc for sm_80 and sm_90, as CuPy would build it.

The device units are generated from gradflow's kernel declarations: one unit per distinct
preamble (the headers an ElementwiseKernel gets), holding each operation string in a
float and a double kernel laid out like CuPy's, plus every ``.cu`` file of ``kernels/`` as
CuPy's RawModule sees it. One nvcc process per architecture compiles all units (-Werror all-warnings).
"""
import subprocess

import pytest

import kernel_harness as H
from gradflow import kernel as K

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if H.find_compiler("nvcc") is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH): CUDA sources not compiled")
    directory = tmp_path_factory.mktemp("gradflow_nvcc")
    return dict(H.compile_device(directory, ARCHS), directory=directory)


@pytest.mark.parametrize("arch", ARCHS)
def test_all_sources_compile(compiled, arch):
    rc, output, objects = compiled[arch]
    assert rc == 0, f"nvcc -arch={arch} failed:\n{output}"
    assert set(objects) == {name.replace(".cu", ".o") for name in H.device_sources()}


def test_every_kernel_is_in_the_objects(compiled):
    """nvcc emits a host stub per __global__ function: every declared kernel must have one."""
    nm = H.find_compiler("nm")
    if nm is None:
        pytest.skip("nm not found")
    rc, _, objects = compiled[ARCHS[0]]
    assert rc == 0
    directory = compiled["directory"] / ARCHS[0]
    symbols = "\n".join(subprocess.run([nm, str(directory / o)], capture_output=True, text=True, check=True).stdout
                        for o in objects)
    expected = [f"gfk_{name}_{s}" for name in K.ELEMENTWISE for s in ("f32", "f64")]
    expected += [f"{entry}_{s}" for entry in list(K.ROW_KERNELS) + ["gf_xent_fwd"] for s in ("f32", "f64")]
    missing = [name for name in expected if name not in symbols]
    assert not missing, f"kernels missing from the nvcc objects: {missing}"


def test_every_header_is_compiled():
    text = "\n".join(H.device_sources().values())
    for header in (p.name for p in K.kernel_directory().iterdir() if p.name.endswith(".cuh")):
        guard = "GF_" + header.replace(".cuh", "").upper() + "_CUH"
        assert f"#define {guard}" in text, f"{header} is not compiled by any unit"
