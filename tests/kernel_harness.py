"""Compile gradflow's kernels without a GPU: with nvcc (device code) and with g++ (host code).

Both builds are generated from the declarations in ``gradflow.kernel`` (every
``Elementwise`` registered by importing gradflow's modules), so what is compiled is the
exact operation string CuPy would compile, with the same headers as its preamble. The
host build runs each operation in a plain loop over contiguous arrays and is called
through ctypes; ``softmax.cu`` compiles for the host as it is (its entry points emulate a
block's threads one after another).
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy

import gradflow.activation  # noqa: F401  (registers the kernels)
import gradflow.dropout_ops  # noqa: F401
import gradflow.softmax_ops  # noqa: F401
import gradflow.optim.fused  # noqa: F401
from gradflow import kernel as K

C_TYPES = {"float32": "float", "float64": "double", "bool": "bool", "uint8": "unsigned char", "int32": "int",
           "int64": "long long", "uint32": "unsigned int", "uint64": "unsigned long long"}
CTYPES = {"float": ctypes.c_float, "double": ctypes.c_double, "bool": ctypes.c_bool, "unsigned char": ctypes.c_ubyte,
          "int": ctypes.c_int, "long long": ctypes.c_longlong, "unsigned int": ctypes.c_uint,
          "unsigned long long": ctypes.c_ulonglong}
NUMPY = {"float": numpy.float32, "double": numpy.float64, "bool": numpy.bool_, "unsigned char": numpy.uint8,
         "int": numpy.int32, "long long": numpy.int64, "unsigned int": numpy.uint32,
         "unsigned long long": numpy.uint64}
FLOATS = {"f32": "float", "f64": "double"}
SOURCES = ("activations.cuh", "dropout.cuh", "softmax.cuh", "optimizers.cuh")
ROW_ENTRIES = ("gf_softmax_fwd", "gf_log_softmax_fwd", "gf_softmax_bwd", "gf_log_softmax_bwd")


def kernels():
    return [K.ELEMENTWISE[name] for name in sorted(K.ELEMENTWISE)]


def _ctype(param, t):
    return t if param.placeholder else C_TYPES[param.type]


def _signature(k, t):
    params = ["long long n"]
    for p in k.params:
        c = _ctype(p, t)
        params.append(f"{c} {p.name}" if p.scalar else f"{'' if p.output else 'const '}{c}* {p.name}_p")
    return ", ".join(params)


def kernel_source(k, suffix, device):
    """One dtype's instance of an Elementwise, as CuPy lays it out: typedef T, then the loop."""
    if any(p.raw for p in k.params):
        raise NotImplementedError(f"{k.name}: raw parameters are not supported by the harness")
    t = FLOATS[suffix]
    loads = [f"const {_ctype(p, t)} {p.name} = {p.name}_p[i];" for p in k.params if not p.output and not p.scalar]
    loads += [f"{_ctype(p, t)}& {p.name} = {p.name}_p[i];" for p in k.params if p.output]
    if device:
        head = f'extern "C" __global__ void gfk_{k.name}_{suffix}({_signature(k, t)})'
        loop = ("for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; "
                "i += (long long)gridDim.x * blockDim.x)")
    else:
        head = f'extern "C" void gfh_{k.name}_{suffix}({_signature(k, t)})'
        loop = "for (long long i = 0; i < n; ++i)"
    body = "\n    ".join(loads + [k.operation.rstrip().rstrip(";") + ";"])
    return f"{head} {{\n  typedef {t} T;\n  {loop} {{\n    {body}\n  }}\n}}\n"


PHILOX_HOST = r'''
extern "C" void gfh_philox4x64_10(const unsigned long long* ctr, const unsigned long long* key,
                                  unsigned long long* out, long long n) {
  for (long long i = 0; i < n; ++i) {
    unsigned long long c[4] = {ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]};
    gf_philox4x64_10(c, key[2 * i], key[2 * i + 1]);
    for (int j = 0; j < 4; ++j) out[4 * i + j] = c[j];
  }
}
extern "C" void gfh_mulhi64(const unsigned long long* a, const unsigned long long* b, unsigned long long* out,
                            long long n) {
  for (long long i = 0; i < n; ++i) out[i] = gf_mulhi64(a[i], b[i]);
}
extern "C" void gfh_philox_bits(unsigned long long seed, unsigned long long offset, unsigned long long* out,
                                long long n) {
  for (long long i = 0; i < n; ++i) out[i] = gf_philox_bits(seed, offset + i);
}
extern "C" void gfh_dropout_keep(unsigned long long seed, unsigned long long offset, unsigned long long threshold,
                                 bool* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = gf_dropout_keep(seed, offset + i, threshold);
}
extern "C" void gfh_philox_normal(unsigned long long seed, unsigned long long offset, double* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = gf_philox_normal(seed, offset + i);
}
'''


def host_source():
    """One translation unit: every header and softmax.cu, then a host loop per kernel and dtype."""
    parts = ["typedef double T;  // as CuPy's type preamble", K.expand(*SOURCES, "softmax.cu"), PHILOX_HOST]
    parts += [kernel_source(k, s, device=False) for k in kernels() for s in FLOATS]
    return "\n".join(parts)


def raw_sources():
    """The .cu files of kernels/ (RawModule sources such as softmax.cu)."""
    return sorted(p.name for p in K.kernel_directory().iterdir() if p.name.endswith(".cu"))


def device_sources():
    """{file name: text}: one unit per distinct elementwise preamble (as CuPy builds them), plus
    every .cu file as a RawModule sees it."""
    units = {}
    for k in kernels():
        units.setdefault(k.headers, []).append(k)
    files = {name: K.expand(name) for name in raw_sources()}
    for i, (headers, ks) in enumerate(sorted(units.items())):
        # CuPy puts "typedef <dtype> T;" before the preamble: the headers' template parameters
        # named T must coexist with it
        text = ["typedef float T;", K.expand(*headers)] + [kernel_source(k, s, device=True) for k in ks
                                                             for s in FLOATS]
        files[f"elementwise_{i}.cu"] = "\n".join(text)
    return files


def find_compiler(name):
    path = shutil.which(name)
    if path is None and name == "nvcc":
        for candidate in (os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"):
            p = Path(candidate) / "bin" / "nvcc"
            if candidate and p.exists():
                return str(p)
    return path


def build_host(directory):
    """Compile the host harness with g++ into a shared library; returns a HostLib."""
    gxx = find_compiler("g++")
    directory = Path(directory)
    src = directory / "gradflow_host.cpp"
    lib = directory / "gradflow_host.so"
    src.write_text(host_source())
    cmd = [gxx, "-O2", "-shared", "-fPIC", "-std=c++11", "-ffp-contract=off", "-Wall", "-Werror",
           "-Wno-unused-variable", "-Wno-unused-function", "-Wno-unused-local-typedefs", str(src), "-o", str(lib)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"g++ failed:\n{' '.join(cmd)}\n{result.stderr}")
    return HostLib(str(lib))


def compile_device(directory, archs=("sm_80", "sm_90")):
    """nvcc -c every device unit for each arch (one nvcc process per arch, run side by side)."""
    nvcc = find_compiler("nvcc")
    directory = Path(directory)
    files = device_sources()
    for name, text in files.items():
        (directory / name).write_text(text)
    procs = {}
    for arch in archs:
        out = directory / arch
        out.mkdir(exist_ok=True)
        cmd = [nvcc, "-c", f"-arch={arch}", "-std=c++11", "-Werror", "all-warnings", "-odir", str(out)]
        procs[arch] = (cmd, subprocess.Popen(cmd + [str(directory / n) for n in files], cwd=out,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for arch, (cmd, p) in procs.items():
        stdout, stderr = p.communicate()
        results[arch] = (p.returncode, stdout + stderr, sorted(x.name for x in (directory / arch).glob("*.o")))
    return results


class HostLib:
    """ctypes front end of the host build: call kernels like ``Elementwise`` objects."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.path = path

    def elementwise(self, name, *args):
        """Run kernel ``name`` on NumPy arrays/scalars given like the Elementwise call (inputs, then outputs
        optionally, updated in place). Returns the outputs."""
        k = K.ELEMENTWISE[name]
        inputs = [p for p in k.params if not p.output]
        outputs = [p for p in k.params if p.output]
        if len(args) not in (len(inputs), len(inputs) + len(outputs)):
            raise TypeError(f"{name}: expected {len(inputs)} inputs (+ {len(outputs)} outputs), got {len(args)}")
        arrays = [a for p, a in zip(k.params, args) if not p.scalar]
        shape = numpy.broadcast_shapes(*[numpy.shape(a) for a in arrays])
        ref = next(a for p, a in zip(k.params, args) if p.placeholder and not p.scalar)
        t = {numpy.float32: "float", numpy.float64: "double"}[numpy.asarray(ref).dtype.type]
        fn = getattr(self.lib, f"gfh_{name}_{'f32' if t == 'float' else 'f64'}")
        n = int(numpy.prod(shape))
        call, argtypes, outs = [n], [ctypes.c_longlong], []
        for i, p in enumerate(k.params):
            c = _ctype(p, t)
            if p.scalar:
                kind = numpy.dtype(NUMPY[c]).kind
                call.append(float(args[i]) if kind == "f" else bool(args[i]) if kind == "b" else int(args[i]))
                argtypes.append(CTYPES[c])
                continue
            if p.output:
                given = args[i] if i < len(args) else None
                if given is not None:
                    if given.shape != shape or given.dtype != NUMPY[c] or not given.flags.c_contiguous:
                        raise ValueError(f"{name}: output {p.name} must be a contiguous {shape} {NUMPY[c]} array")
                    arr = given
                else:
                    arr = numpy.zeros(shape, dtype=NUMPY[c])
                outs.append(arr)
            else:
                arr = numpy.ascontiguousarray(numpy.broadcast_to(numpy.asarray(args[i]), shape), dtype=NUMPY[c])
            call.append(arr.ctypes.data_as(ctypes.c_void_p))
            argtypes.append(ctypes.c_void_p)
        fn.argtypes, fn.restype = argtypes, None
        fn(*call)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def rows(self, entry, a, b=None):
        """A softmax.cu row kernel on a (rows, cols) array (threads emulated on the host)."""
        a = numpy.ascontiguousarray(a)
        b = a if b is None else numpy.ascontiguousarray(b, dtype=a.dtype)
        out = numpy.empty_like(a)
        fn = getattr(self.lib, f"{entry}_{K.dtype_suffix(a.dtype)}")
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_longlong] * 2
        fn(a.ctypes.data, b.ctypes.data, out.ctypes.data, a.shape[0], a.shape[1])
        return out

    def xent(self, x, target, ignore_index):
        x = numpy.ascontiguousarray(x)
        target = numpy.ascontiguousarray(target, dtype=numpy.int64)
        loss = numpy.empty(x.shape[0], x.dtype)
        m = numpy.empty(x.shape[0], x.dtype)
        logs = numpy.empty(x.shape[0], x.dtype)
        fn = getattr(self.lib, f"gf_xent_fwd_{K.dtype_suffix(x.dtype)}")
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_longlong] * 3
        fn(x.ctypes.data, target.ctypes.data, loss.ctypes.data, m.ctypes.data, logs.ctypes.data, x.shape[0],
           x.shape[1], ignore_index)
        return loss, m, logs

    def philox4x64_10(self, ctr, key):
        """gf_philox4x64_10 on rows of 4 counter words under rows of 2 key words (uint64)."""
        ctr = numpy.ascontiguousarray(ctr, dtype=numpy.uint64).reshape(-1, 4)
        key = numpy.ascontiguousarray(numpy.broadcast_to(numpy.asarray(key, numpy.uint64), (len(ctr), 2)))
        out = numpy.empty_like(ctr)
        fn = self.lib.gfh_philox4x64_10
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_longlong]
        fn(ctr.ctypes.data, key.ctypes.data, out.ctypes.data, len(ctr))
        return out

    def mulhi64(self, a, b):
        a = numpy.ascontiguousarray(a, dtype=numpy.uint64)
        b = numpy.ascontiguousarray(b, dtype=numpy.uint64)
        out = numpy.empty_like(a)
        fn = self.lib.gfh_mulhi64
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_longlong]
        fn(a.ctypes.data, b.ctypes.data, out.ctypes.data, len(a))
        return out

    def philox_bits(self, seed, offset, n):
        out = numpy.empty(n, numpy.uint64)
        fn = self.lib.gfh_philox_bits
        fn.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_longlong]
        fn(seed, offset, out.ctypes.data, n)
        return out

    def dropout_keep(self, seed, offset, threshold, n):
        out = numpy.empty(n, numpy.bool_)
        fn = self.lib.gfh_dropout_keep
        fn.argtypes = [ctypes.c_ulonglong] * 3 + [ctypes.c_void_p, ctypes.c_longlong]
        fn(seed, offset, threshold, out.ctypes.data, n)
        return out

    def philox_normal(self, seed, offset, n):
        out = numpy.empty(n, numpy.float64)
        fn = self.lib.gfh_philox_normal
        fn.argtypes = [ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_longlong]
        fn(seed, offset, out.ctypes.data, n)
        return out
