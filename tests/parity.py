"""The torch-parity harness: run one expression in gradflow and in PyTorch and compare everything.

``tests/test_torch_parity.py`` holds the table (one ``Row`` per op or method); this module
holds the machinery and the shared input sets. Everything runs on the CPU.

How to add a row
----------------
Add to ``ROWS`` in ``tests/test_torch_parity.py``::

    Row("relu", lambda m, x: m.F.relu(x), UNARY),
    Row("add", lambda m, a, b: a + b, BINARY),
    Row("sum(dim)", lambda m, x, d: x.sum(dim=d), dims(FLOATS)),

* ``m`` is the library namespace: ``m.<name>`` is ``gradflow.<name>`` or ``torch.<name>``
  (``m.F`` is its ``nn.functional``, ``m.name`` is ``"gradflow"`` or ``"torch"``); write the
  expression once, as PyTorch code.
* The other arguments come from each input set (a tuple): NumPy arrays (0-d ones
  included) become CPU tensors of that library with the array's dtype; float64 arrays
  require grad (unless ``grad=False``); anything else (Python numbers, tuples, None) is
  passed as it is.
* Input sets: the shared ones below (``UNARY``, ``FLOATS``, ``BINARY``, ...) or your own
  list of tuples. They cover random values, 0-d, empty, broadcasting, int/bool inputs,
  Python scalars on either side, and extremes (±1e4, ±3e38, 0, -0, subnormals, NaN, inf).
* A row passes when, for every input set, either both libraries raise exceptions of the
  same type (gradflow's may be a subclass of torch's), or both return results with equal
  structure (tuples, named tuples), shapes, dtypes, ``requires_grad`` and values (NaN
  where NaN, infinities equal; ``rtol``/``atol`` for floats, exact otherwise) and, when
  the output is float and an input requires grad, equal gradients of ``sum(out * w)``
  (w fixed random) for every float64 input.
* Options: ``grad=False`` skips the gradient check; ``rtol``/``atol`` widen float tolerances;
  ``skip`` is a predicate on the input set for cases that must not be compared (say why);
  ``known`` maps input-set indices to a reason for a known difference: the row fails if such a
  set starts to agree with torch (then delete the entry), so the list cannot go stale.
"""
import dataclasses
import math
import warnings
from typing import Callable

import numpy
import torch

import gradflow
import gradflow.nn.functional

torch.set_default_dtype(torch.float32)


class Lib:
    """One library as the rows see it: its top-level names plus ``F`` and ``name``."""

    def __init__(self, module, functional, name):
        self.module, self.F, self.name = module, functional, name

    def __getattr__(self, attr):
        return getattr(self.module, attr)

    def tensor(self, data, **kw):
        if self.name == "gradflow":
            kw.setdefault("device", "cpu")  # the parity module pins the CPU
        return self.module.tensor(data, **kw)


GF = Lib(gradflow, gradflow.nn.functional, "gradflow")
TORCH = Lib(torch, torch.nn.functional, "torch")
TENSOR_TYPES = {"gradflow": gradflow.Tensor, "torch": torch.Tensor}


@dataclasses.dataclass
class Row:
    name: str
    fn: Callable
    inputs: list
    grad: bool = True
    rtol: float = None
    atol: float = None
    skip: Callable = None
    known: dict = dataclasses.field(default_factory=dict)


# ---- inputs ----------------------------------------------------------------------------------------
_rng = numpy.random.default_rng(20260101)
f32, f64, i32, i64 = numpy.float32, numpy.float64, numpy.int32, numpy.int64
inf, nan = math.inf, math.nan


def randn(*shape, dtype=f64, scale=1.0):
    return (_rng.standard_normal(shape) * scale).astype(dtype)


def randint(*shape, low=-5, high=6, dtype=i64):
    return _rng.integers(low, high, shape).astype(dtype)


def boolean(*shape):
    return _rng.random(shape) < 0.5


EXTREME32 = numpy.array([0.0, -0.0, 1e-45, -1e-40, 1.5, -2.5, 1e4, -1e4, 3e38, -3e38, inf, -inf, nan], f32)
EXTREME64 = numpy.array([0.0, -0.0, 5e-324, -1e-310, 1.5, -2.5, 1e4, -1e4, 3e38, -3e38, 1e308, inf, -inf, nan], f64)

FLOATS = [(randn(3, 4),), (randn(3, 4, dtype=f32),), (numpy.array(0.7),), (numpy.zeros((0, 3)),),
          (randn(2, 1, 3),), (EXTREME32,), (EXTREME64,)]
INTS = [(randint(3, 4),), (randint(5, dtype=i32),), (boolean(2, 3),), (numpy.array(3),)]
UNARY = FLOATS + INTS
POSITIVE = [(numpy.abs(randn(3, 4)) + 0.1,), (numpy.abs(randn(4, dtype=f32)) + 0.1,), (numpy.array(2.0),)]

BINARY = [
    (randn(3, 4), randn(3, 4)),                          # same shape
    (randn(3, 1), randn(1, 4)),                          # broadcasting both ways
    (randn(4), randn(2, 3, 4)),                          # rank broadcasting
    (numpy.array(0.5), randn(2, 3)),                     # 0-d with n-d
    (randn(3, 4), randn(2, 4)),                          # not broadcastable: both raise
    (randn(3), 2.5), (1.5, randn(3)), (randn(3), 2), (-3, randn(3)),   # Python scalars either side
    (randn(3, dtype=f32), 0.1), (randint(3), 0.5), (randint(3), 2), (boolean(3), 2),
    (randint(3), randn(3, dtype=f32)),                   # int64 with float32 -> float32
    (randn(3, dtype=f32), randn(3)),                     # float32 with float64 -> float64
    (randn(3, dtype=f32), numpy.array(2.0)),             # a float64 0-d does not upcast float32
    (randint(3, dtype=i32), randint(3)), (boolean(3), boolean(3)), (boolean(3), randint(3)),
    (randn(0, 3), randn(1, 3)),                          # empty
    (EXTREME32, EXTREME32[::-1].copy()), (EXTREME64, EXTREME64[::-1].copy()),
    (EXTREME64, 0.0), (EXTREME32, -inf),
]


def dims(sets, extra=(None, 0, 1, -1, -2, 2, -3, 5)):
    """Each input set with a ``dim`` argument appended (valid, negative and out-of-range ones)."""
    return [s + (d,) for s in sets for d in extra]


# ---- running and comparing ----------------------------------------------------------------------------
def _make(lib, value, grad):
    if isinstance(value, numpy.ndarray):
        requires_grad = grad and value.dtype == f64
        return lib.tensor(value.copy(), requires_grad=requires_grad)
    return value


def run(lib, row, inputs):
    args = [_make(lib, v, row.grad) for v in inputs]
    try:
        with numpy.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation and degrees-of-freedom warnings
            return "ok", row.fn(lib, *args), args
    except Exception as e:  # noqa: BLE001  (the exception type is what is compared)
        return "raise", e, args


def _to_numpy(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.detach().numpy()


def _dtype_name(t):
    return str(t.dtype).replace("torch.", "").replace("bool_", "bool")


def _tolerances(row, dtype):
    low = dtype in ("float32", "float16")
    rtol = row.rtol if row.rtol is not None else (2e-6 if low else 1e-12)
    atol = row.atol if row.atol is not None else (1e-6 if low else 1e-13)
    return rtol, atol


def compare(row, got, want, where="result"):
    """Assert that gradflow's result ``got`` equals torch's ``want`` in structure, dtype, shape and value."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, gradflow.Tensor), f"{where}: torch gives a tensor, gradflow {type(got).__name__}"
        assert tuple(got.shape) == tuple(want.shape), f"{where}: shape {tuple(got.shape)} != torch {tuple(want.shape)}"
        assert _dtype_name(got) == _dtype_name(want), f"{where}: dtype {_dtype_name(got)} != torch {_dtype_name(want)}"
        assert bool(got.requires_grad) == bool(want.requires_grad), \
            f"{where}: requires_grad {got.requires_grad} != torch {want.requires_grad}"
        g, w = _to_numpy(got), _to_numpy(want)
        if w.dtype.kind == "f":
            rtol, atol = _tolerances(row, _dtype_name(want))
            numpy.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
        else:
            numpy.testing.assert_array_equal(g, w, err_msg=where)
        return
    if isinstance(want, tuple):  # tuples, torch.Size and named tuples (torch.return_types)
        assert isinstance(got, tuple), f"{where}: torch gives a {type(want).__name__}, gradflow {type(got).__name__}"
        assert len(got) == len(want), f"{where}: {len(got)} items != torch {len(want)}"
        for field in getattr(want, "_fields", ()):
            assert hasattr(got, field), f"{where}: gradflow's result has no field {field!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            compare(row, g, w, f"{where}[{i}]")
        return
    if isinstance(want, (bool, int, float)):
        assert type(got) is type(want) or isinstance(got, (int, float)) and not isinstance(want, bool), \
            f"{where}: {type(got).__name__} != torch {type(want).__name__}"
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), f"{where}: {got} != torch nan"
        else:
            assert got == want or abs(got - want) <= 1e-6 * abs(want), f"{where}: {got} != torch {want}"
        return
    assert got == want, f"{where}: {got!r} != torch {want!r}"


def _first_tensor(out):
    if isinstance(out, tuple):
        return out[0] if out else None
    return out


def check(row, inputs):
    """Run ``row`` on one input set in both libraries and assert parity (see the module docstring)."""
    g_kind, g_out, g_args = run(GF, row, inputs)
    t_kind, t_out, t_args = run(TORCH, row, inputs)
    if t_kind == "raise":
        assert g_kind == "raise", f"torch raises {type(t_out).__name__}({t_out}) but gradflow returns {g_out!r}"
        # torch's "not implemented for dtype" is a NotImplementedError, a RuntimeError: gradflow raises RuntimeErrors
        want = RuntimeError if type(t_out) is NotImplementedError else type(t_out)
        assert isinstance(g_out, want), \
            f"torch raises {type(t_out).__name__}({t_out}), gradflow {type(g_out).__name__}({g_out})"
        return
    if g_kind == "raise":
        raise AssertionError(f"gradflow raises {type(g_out).__name__}({g_out}); torch returns {t_out!r}") from g_out
    compare(row, g_out, t_out)
    if not row.grad:
        return
    g_y, t_y = _first_tensor(g_out), _first_tensor(t_out)
    if not (isinstance(t_y, torch.Tensor) and t_y.requires_grad and t_y.dtype.is_floating_point):
        return
    w = numpy.random.default_rng(7).standard_normal(tuple(t_y.shape)).astype(_dtype_name(t_y))
    (t_y * torch.tensor(w)).sum().backward()
    with numpy.errstate(all="ignore"):
        (g_y * gradflow.tensor(w, device="cpu")).sum().backward()
    rtol, atol = _tolerances(row, _dtype_name(t_y))  # gradients are only as precise as the output
    grad_row = dataclasses.replace(row, rtol=rtol, atol=atol)
    for i, (ga, ta) in enumerate(zip(g_args, t_args)):
        if isinstance(ta, torch.Tensor) and ta.requires_grad:
            where = f"grad of input {i}"
            if ta.grad is None:
                assert ga.grad is None or not _to_numpy(ga.grad).any(), f"{where}: torch has none"
                continue
            assert ga.grad is not None, f"{where}: gradflow has none, torch {ta.grad}"
            compare(grad_row, gradflow.Tensor(_to_numpy(ga.grad)), ta.grad.detach(), where)
