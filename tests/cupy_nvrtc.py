"""Compile gradflow's kernels exactly as CuPy 14.2 does at their first launch, with no GPU.

CuPy builds an ``ElementwiseKernel`` at its first call: ``_decide_params_type`` binds the
type placeholders, ``_ArgInfo``s describe each argument (array: dtype, ndim after
``_reduce_dims``, C-contiguity, 32- or 64-bit indexing; scalar; the ``CIndexer``),
``_get_elementwise_kernel_code`` writes the source and ``core.compile_with_cache``
compiles it (CuPy's headers prepended, ``assemble_cupy_compiler_options``: CCCL and CuPy
include paths, ``--std=c++17`` unless given, the CUDA headers; then
``compiler._compile_with_cache_cuda``: ``-ftz=true``; then
``_compile_using_nvrtc_no_warning``: ``-arch=sm_XX`` and
``--device-as-default-execution-space``; then ``_NVRTCProgram``). A ``RawModule`` goes
through the same ``compile_with_cache`` without the header prefix.

Everything here calls those very CuPy functions. Only three device-bound pieces are
replaced while :func:`offline` is active: ``_get_arch_for_options_for_nvrtc`` (memoized per
device; re-implemented with the same rule for a given arch), ``function.Module`` (loading
a cubin needs a driver; the stand-in keeps the cubin) and ``_NVRTCProgram`` (subclassed
to keep the PTX and the ptxas log as well). ``--ptxas-options=-v`` is added to the
options: it only makes NVRTC's ptxas print its resource usage into the program log.

Written against CuPy 14.2.0 (``CUPY_VERSION``): CuPy's internals change between releases,
so the test skips on any other version.
"""
import contextlib
import hashlib
import os
import re
import threading
import types

import numpy

CUPY_VERSION = "14.2.0"
ARCHS = ("80", "90")
PTXAS_VERBOSE = "--ptxas-options=-v"


def unavailable():
    """Why the NVRTC compile cannot run here (None when it can)."""
    try:
        import cupy
    except ImportError as e:
        return f"CuPy is not installed ({e}); pip install -e '.[test]'"
    if cupy.__version__ != CUPY_VERSION:
        return (f"written for CuPy {CUPY_VERSION}'s internals (cupy._core._kernel, cupy.cuda.compiler), "
                f"found CuPy {cupy.__version__}")
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001  (a missing libnvrtc surfaces as several error types)
        return f"NVRTC is not loadable ({type(e).__name__}: {e}); pip install 'nvidia-cuda-nvrtc==13.*'"
    try:
        from cupy._core import core
        core.assemble_cupy_compiler_options(())
    except Exception as e:  # noqa: BLE001
        return f"CUDA runtime headers not found ({e}); pip install 'nvidia-cuda-runtime==13.*'"
    return None


class Compiled:
    """One NVRTC compile: the cubin CuPy would load, the PTX, ptxas's resource usage."""

    def __init__(self, label, source, options, cubin, ptx, log):
        self.label, self.source, self.options = label, source, options
        self.cubin, self.ptx, self.log = cubin, ptx, log

    def entries(self):
        return re.findall(r"^\s*\.(?:visible\s+)?\.entry\s+(\w+)\s*\(", self.ptx, re.MULTILINE)

    def resources(self):
        """{entry: dict(registers, spill_stores, spill_loads, stack)} from ptxas -v."""
        out = {}
        for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", self.log):
            m = re.search(r"Compiling entry function '(\w+)'", block)
            if not m:
                continue
            r = re.search(r"Used (\d+) registers", block)
            s = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
            out[m.group(1)] = dict(registers=int(r.group(1)) if r else None,
                                   stack=int(s.group(1)) if s else None,
                                   spill_stores=int(s.group(2)) if s else None,
                                   spill_loads=int(s.group(3)) if s else None)
        return out

    def body(self, entry):
        """The PTX text of one entry's body (instructions only, declarations dropped)."""
        m = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\(.*?\n\{(.*?)\n\}", self.ptx, re.S)
        if m is None:
            raise KeyError(entry)
        return [ln.strip() for ln in m.group(1).splitlines()
                if ln.strip() and not ln.strip().startswith((".reg", ".local", ".shared", "//", "$", "{", "}"))]

    def fp64_instructions(self, entry):
        """Instructions computing in or converting to/from double."""
        return [ln for ln in self.body(entry) if re.match(r"[\w.]*\.f64\b", ln.split()[0] + " ")
                and not ln.startswith(("ld.", "st.", "mov.b64"))]

    def ftz_comparisons(self, entry):
        """float compares/min/max that -ftz=true makes flush subnormal operands to zero."""
        return [ln for ln in self.body(entry) if re.match(r"(setp|set|min|max|slct)\.[\w.]*ftz[\w.]*\.f32", ln)]


_state = threading.local()


@contextlib.contextmanager
def offline():
    """Patch CuPy's device-bound compile steps (see the module docstring); restore on exit."""
    from cupy.cuda import compiler, function, nvrtc

    class Module(function.Module):  # keeps the cubin instead of loading it (that needs a driver)
        def load(self, cubin):
            self.cubin = cubin

    class Program(compiler._NVRTCProgram):
        def compile(self, options=(), log_stream=None):
            result = super().compile(options, log_stream)
            _state.last = (self.src, nvrtc.getPTX(self.ptr).decode(), nvrtc.getProgramLog(self.ptr).rstrip("\0"),
                           tuple(options))
            return result

    def arch_options(arch=None):  # compiler._get_arch_for_options_for_nvrtc, without the per-device memo
        if not compiler._use_ptx and int(arch) <= int(compiler._get_max_compute_capability()):
            return f"-arch=sm_{arch}", "cubin"
        return f"-arch=compute_{arch}", "ptx"

    saved = (compiler._NVRTCProgram, compiler._get_arch_for_options_for_nvrtc, compiler.function,
             os.environ.get("CUPY_CACHE_IN_MEMORY"))
    compiler._NVRTCProgram = Program
    compiler._get_arch_for_options_for_nvrtc = arch_options
    compiler.function = types.SimpleNamespace(Module=Module, LinkState=compiler.function.LinkState)
    os.environ["CUPY_CACHE_IN_MEMORY"] = "1"  # always compile; never read or write ~/.cupy
    try:
        yield
    finally:
        compiler._NVRTCProgram, compiler._get_arch_for_options_for_nvrtc, compiler.function = saved[:3]
        if saved[3] is None:
            os.environ.pop("CUPY_CACHE_IN_MEMORY", None)
        else:
            os.environ["CUPY_CACHE_IN_MEMORY"] = saved[3]


def _compile(label, code, options, arch, prepend_cupy_headers):
    from cupy._core import core
    _state.last = None
    mod = core.compile_with_cache(code, tuple(options) + (PTXAS_VERBOSE,), arch=arch,
                                  prepend_cupy_headers=prepend_cupy_headers)
    source, ptx, log, used = _state.last  # source: as NVRTC got it (CuPy's header prefix included)
    return Compiled(label, source, used, mod.cubin, ptx, log)


# ---- ElementwiseKernel -------------------------------------------------------------------------------
LAYOUTS = ("contiguous32", "strided64")


def elementwise_arginfos(ek, k, dtype, layout):
    """The ``_ArgInfo``s and ``_TypeMap`` a call of ``ek`` (gradflow declaration ``k``) would have.

    contiguous32: every array C-contiguous and reduced to 1-D, 32-bit indexing (under 2**31
    elements). strided64: 2-D non-contiguous views (transposed, sliced or broadcast) of an
    array of 2**31 elements or more, 64-bit indexing. Scalars get the dtype CuPy gives them.
    """
    import cupy
    from cupy._core import _carray, _kernel, _scalar
    dtype = numpy.dtype(dtype)

    def declared(p):
        return dtype if p.placeholder else numpy.dtype(p.type)

    inputs = [p for p in k.params if not p.output]
    outputs = [p for p in k.params if p.output]
    in_types, out_types, type_map = ek._decide_params_type(
        tuple(None if p.scalar else declared(p) for p in inputs), tuple(declared(p) for p in outputs))
    ndim, contiguous, index32 = (1, True, True) if layout == "contiguous32" else (2, False, False)
    infos = []
    for p, t in zip(inputs + outputs, tuple(in_types) + tuple(out_types)):
        if p.scalar:
            infos.append(_kernel._ArgInfo(3, _scalar.CScalar, numpy.dtype(t), 0, True, True))  # ARG_KIND_SCALAR
        else:
            infos.append(_kernel._ArgInfo(1, cupy.ndarray, numpy.dtype(t), ndim, contiguous, index32))  # NDARRAY
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, ndim, True, index32))  # ARG_KIND_INDEXER
    return tuple(infos), type_map


def elementwise_code(k, dtype, layout):
    """CuPy's generated source for one instance of gradflow Elementwise ``k``."""
    import cupy
    from cupy._core import _kernel
    ek = k.make_cupy_kernel(cupy)
    infos, type_map = elementwise_arginfos(ek, k, dtype, layout)
    code = _kernel._get_elementwise_kernel_code(infos, type_map, ek.params, ek.operation, ek.name, ek.preamble,
                                                **ek.kwargs)
    return ek, code


def compile_elementwise(k, dtype, layout, arch):
    ek, code = elementwise_code(k, dtype, layout)
    label = f"{k.name}/{numpy.dtype(dtype).name}/{layout}/sm_{arch}"
    return _compile(label, code, ek.kwargs.get("options", ()), arch, prepend_cupy_headers=True)


def compile_raw_module(source_name, arch):
    import cupy
    from gradflow import kernel as K
    mod = K.make_raw_module(cupy, source_name)
    return _compile(f"{source_name}/sm_{arch}", mod.code, mod.options, arch, prepend_cupy_headers=False)


def digest(text):
    return hashlib.sha1(text.encode()).hexdigest()[:12]
