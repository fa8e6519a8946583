"""Every declared kernel compiles the way CuPy 14.2 compiles it on a GPU: NVRTC, CuPy's code
generator, headers and flags (-ftz=true included), for sm_80 and sm_90.

Covered from gradflow's registries (``gradflow.kernel.ELEMENTWISE`` and ``RAW_KERNELS``,
filled by importing every gradflow module), so a new kernel is compiled without touching
this file: each ``Elementwise`` for float32 and float64, with a contiguous 32-bit-index
and a strided 64-bit-index layout; each ``kernels/*.cu`` file as the ``RawModule`` gradflow
builds, whose entries must be exactly the declared ``RawKernel``s.

From the PTX and NVRTC's ptxas (-v) it also checks: no register spills, no double-precision
instruction in a float32 kernel (an accidental promotion) except where documented, no
flush-to-zero float comparison in the kernels whose sign decisions must match PyTorch on
subnormals; and it writes a report of registers, FP64 instructions and every .ftz
comparison (``build/nvrtc_report.txt``, also printed with ``-s``).
Needs: ``pip install -e '.[test]'`` (cupy-cuda13x 14.2.0, nvidia-cuda-nvrtc, nvidia-cuda-runtime).
"""
import concurrent.futures
import importlib
import os
import pkgutil
from pathlib import Path

import numpy
import pytest

import cupy_nvrtc as N

REASON = N.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"NVRTC compile test skipped: {REASON}")

import gradflow  # noqa: E402
from gradflow import kernel as K  # noqa: E402

UNIMPORTABLE = {}  # module -> error: a module that cannot be imported could hide kernel declarations
for _m in pkgutil.walk_packages(gradflow.__path__, "gradflow.", onerror=lambda name: None):
    if not _m.name.startswith("gradflow.kernels"):  # every module: every declaration registers
        try:
            importlib.import_module(_m.name)
        except Exception as _e:  # noqa: BLE001  (reported by test_every_module_was_searched)
            UNIMPORTABLE[_m.name] = f"{type(_e).__name__}: {_e}"

DTYPES = ("float32", "float64")
ARCHS = N.ARCHS
RAW_SOURCES = sorted(p.name for p in K.kernel_directory().iterdir() if p.name.endswith(".cu"))

# float32 kernels allowed to compute in double, and why.
FP64_BY_DESIGN = {
    "noisy_relu_fwd": "Box-Muller in double so host and device draw the same normals (philox.cuh)",
    "amp_update_scale_f32": "PyTorch's _amp_update_scale_ multiplies the float scale by a double factor (amp.cu)",
    "amp_update_scale_dev_f32": "amp_update_scale_f32 with its factors read from device memory (amp.cu)",
}
# Kernels whose sign tests must see subnormals as PyTorch does (no flush): their masks are
# compared bit for bit with the NumPy twins.
NO_FTZ_COMPARISONS = ("relu_out", "relu_grad", "leaky_relu_fwd", "prelu_fwd", "prelu_bwd", "noisy_relu_fwd")
# ... except comparisons inside CUDA's libdevice, counted per kernel: log(double) tests the high word
# of its argument as a float against 0 (Box-Muller's u1 >= 2**-32 never makes that a subnormal).
FTZ_INSIDE_LIBDEVICE = {"noisy_relu_fwd": 1}
# device-scalar twins (kernel.device_scalar_twin) run their kernel's operation: the same allowances
FP64_BY_DESIGN.update({k + "_dev": v for k, v in FP64_BY_DESIGN.items()})
NO_FTZ_COMPARISONS += tuple(k + "_dev" for k in NO_FTZ_COMPARISONS)
FTZ_INSIDE_LIBDEVICE.update({k + "_dev": v for k, v in FTZ_INSIDE_LIBDEVICE.items()})


def _jobs():
    jobs = [("elementwise", name, dtype, layout, arch) for name in sorted(K.ELEMENTWISE) for dtype in DTYPES
            for layout in N.LAYOUTS for arch in ARCHS]
    jobs += [("raw", source, None, None, arch) for source in RAW_SOURCES for arch in ARCHS]
    return jobs


def _run(job):
    kind, name, dtype, layout, arch = job
    try:
        if kind == "elementwise":
            return job, N.compile_elementwise(K.ELEMENTWISE[name], dtype, layout, arch)
        return job, N.compile_raw_module(name, arch)
    except Exception as e:  # noqa: BLE001  (reported per kernel by the tests below)
        return job, e


@pytest.fixture(scope="session")
def compiled():
    """Every compile once per session, two at a time (NVRTC releases the GIL)."""
    with N.offline(), concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        results = dict(pool.map(_run, _jobs()))
    _write_report(results)
    return results


def _write_report(results):
    lines = ["gradflow kernels as CuPy %s compiles them (NVRTC %s): registers, spills, FP64, ftz comparisons"
             % (N.CUPY_VERSION, ".".join(map(str, __import__("cupy").cuda.nvrtc.getVersion())))]
    for job, c in sorted(results.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if isinstance(c, Exception):
            lines.append(f"{job}: COMPILE ERROR {str(c).splitlines()[0] if str(c) else type(c).__name__}")
            continue
        for entry, r in sorted(c.resources().items()):
            fp64 = c.fp64_instructions(entry)
            ftz = c.ftz_comparisons(entry)
            lines.append(f"{c.label:48s} {entry:24s} regs={r['registers']:<3} spill={r['spill_stores']}/"
                         f"{r['spill_loads']} stack={r['stack']} fp64={len(fp64)} ftz_cmp={len(ftz)}"
                         + (f"  [{'; '.join(sorted(set(x.split()[0] for x in ftz)))}]" if ftz else ""))
    text = "\n".join(lines) + "\n"
    out = Path(__file__).resolve().parents[1] / "build"
    out.mkdir(exist_ok=True)
    (out / "nvrtc_report.txt").write_text(text)
    print("\n" + text)


def _get(compiled, job):
    c = compiled[job]
    if isinstance(c, Exception):
        pytest.fail(f"{job}: CuPy/NVRTC compile failed:\n{c}")
    return c


def test_every_module_was_searched():
    """Kernels are found by importing every gradflow module; only a missing optional package may stop one."""
    hard = {m: e for m, e in UNIMPORTABLE.items() if not e.startswith("ModuleNotFoundError")}
    assert not hard, f"modules that fail to import (their kernels would go unchecked): {hard}"
    if UNIMPORTABLE:
        pytest.skip(f"optional packages missing, not searched: {UNIMPORTABLE}")


def test_every_kernel_is_registered():
    """Importing every module registered the kernels gradflow launches (nothing defined on the side)."""
    assert {"relu_out", "relu_grad", "dropout_fwd", "adam", "xent_bwd"} <= set(K.ELEMENTWISE)
    declared_sources = {source for source, _ in K.RAW_KERNELS}
    assert declared_sources == set(RAW_SOURCES), \
        f"kernels/*.cu files {sorted(set(RAW_SOURCES) - declared_sources)} have no declared RawKernel"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", N.LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(K.ELEMENTWISE))
def test_elementwise_compiles(compiled, name, dtype, layout, arch):
    c = _get(compiled, ("elementwise", name, dtype, layout, arch))
    assert c.entries() == ["gf_" + name]
    assert c.cubin and len(c.cubin) > 100
    assert "-ftz=true" in c.options and f"-arch=sm_{arch}" in c.options
    assert "--device-as-default-execution-space" in c.options
    assert c.source.startswith("#include <cupy/complex.cuh>")  # CuPy's header prefix
    index = "long long" if layout == "strided64" else "int"
    assert f"CIndexer<{1 if layout == 'contiguous32' else 2}, {int(layout == 'contiguous32')}>" in c.source, index


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", RAW_SOURCES)
def test_raw_module_entries_are_exactly_the_declared_ones(compiled, source, arch):
    c = _get(compiled, ("raw", source, None, None, arch))
    assert c.cubin
    assert not c.source.startswith("#include <cupy/")  # RawModule: no header prefix
    declared = {f"{entry}_{s}" for (src, entry) in K.RAW_KERNELS if src == source for s in ("f32", "f64")}
    present = set(c.entries())
    assert not declared - present, f"{source}: declared but not compiled: {sorted(declared - present)}"
    assert not present - declared, (f"{source}: entries not declared with gradflow.kernel.RawKernel "
                                    f"(so not launched or not covered): {sorted(present - declared)}")


def _all_compiled(compiled):
    for job, c in compiled.items():
        if isinstance(c, Exception):
            continue  # reported by the compile tests
        for entry in c.entries():
            yield job, c, entry


def test_no_register_spills(compiled):
    spills = [(c.label, e, r) for job, c, e in _all_compiled(compiled) for ee, r in c.resources().items()
              if ee == e and (r["spill_stores"] or r["spill_loads"])]
    assert not spills, f"register spills: {spills}"
    missing = [(c.label, e) for _, c, e in _all_compiled(compiled) if e not in c.resources()]
    assert not missing, f"ptxas -v printed no resource usage for {missing}"


def _is_f32(job, entry):
    return job[2] == "float32" if job[0] == "elementwise" else entry.endswith("_f32")


def test_no_double_precision_in_float32_kernels(compiled):
    found = {}
    for job, c, entry in _all_compiled(compiled):
        if _is_f32(job, entry) and job[1] not in FP64_BY_DESIGN and entry not in FP64_BY_DESIGN:
            fp64 = c.fp64_instructions(entry)
            if fp64:
                found[f"{c.label}:{entry}"] = fp64[:4]
    assert not found, f"float32 kernels computing in double (accidental promotion?): {found}"


def test_fp64_detector_sees_the_documented_exception(compiled):
    """The FP64 check can fail: the Box-Muller kernel does compute in double."""
    c = _get(compiled, ("elementwise", "noisy_relu_fwd", "float32", "contiguous32", ARCHS[0]))
    assert c.fp64_instructions("gf_noisy_relu_fwd")


def test_sign_decisions_do_not_flush_subnormals(compiled):
    found = {}
    for job, c, entry in _all_compiled(compiled):
        if job[0] == "elementwise" and job[1] in NO_FTZ_COMPARISONS and job[2] == "float32":
            ftz = c.ftz_comparisons(entry)
            if len(ftz) > FTZ_INSIDE_LIBDEVICE.get(job[1], 0):
                found[c.label] = ftz
    assert not found, f"-ftz=true comparisons would treat positive subnormals as 0 (torch does not): {found}"


def test_ftz_detector_sees_plain_float_comparisons(compiled):
    """The ftz check can fail: elu's x <= 0 is an ordinary (flushing) float comparison."""
    c = _get(compiled, ("elementwise", "elu_fwd", "float32", "contiguous32", ARCHS[0]))
    assert c.ftz_comparisons("gf_elu_fwd")


def test_generated_source_matches_cupy_layouts():
    """The two layouts give CuPy's CArray/CIndexer types for 32- and 64-bit indexing."""
    _, code32 = N.elementwise_code(K.ELEMENTWISE["leaky_relu_fwd"], numpy.float32, "contiguous32")
    _, code64 = N.elementwise_code(K.ELEMENTWISE["relu_out"], numpy.float64, "strided64")
    assert "CArray<float, 1, 1, 1> _raw_x" in code32 and "CArray<bool, 1, 1, 1> _raw_mask" in code32
    assert "CArray<double, 2, 0, 0> _raw_x" in code64 and "CIndexer<2, 0> _ind" in code64
    assert "typedef float T;" in code32 and "typedef double T;" in code64
    _, code = N.elementwise_code(K.ELEMENTWISE["dropout_fwd"], numpy.float32, "contiguous32")
    assert "const float scale" in code and "const unsigned long long seed" in code  # scalars by value
