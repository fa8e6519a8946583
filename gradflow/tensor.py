"""Tensor, Function and the define-by-run tape.

Every op is a ``Function``: ``forward`` takes and returns raw arrays (NumPy or CuPy),
``backward`` takes and returns Tensors, so the backward pass can itself be recorded
(``create_graph=True``) for higher-order gradients. A Function holds its inputs
strongly and its outputs weakly, so the graph has no reference cycles and a step's
graph is freed as soon as the loss is dropped or backward has run.
"""
import contextlib
import heapq
import itertools
import threading
import weakref

import numpy

from gradflow import backend

class _TapeState(threading.local):
    """The tape's per-thread state, as in PyTorch: one thread's ``no_grad``, backward or
    compiled-step recording never changes what another thread's ops do. Class attributes
    are each new thread's starting values."""
    grad_enabled = True
    _recorder = None        # set by gradflow.compile while it records a step in this thread
    backward_depth = 0      # backward passes now running in this thread (nested ones included)

    def __init__(self):
        self.mode_stack = []          # grad modes to restore, one per open no_grad/enable_grad
        self.backward_callbacks = []  # run when this thread's outermost backward ends (queue_backward_callback)


_state = _TapeState()
_hooked_leaves = 0          # leaves with post-accumulate-grad hooks: backward counts their edges only then
_hook_ids = itertools.count()


def is_grad_enabled():
    return _state.grad_enabled


class _GradMode(contextlib.ContextDecorator):
    """Base of ``no_grad``/``enable_grad``: a context manager and a decorator.

    The mode to restore lives on the thread's own stack, so one instance (a decorator)
    can be entered by several threads at once."""
    mode = None

    def __enter__(self):
        state = _state
        state.mode_stack.append(state.grad_enabled)
        state.grad_enabled = self.mode

    def __exit__(self, *exc):
        state = _state
        state.grad_enabled = state.mode_stack.pop()
        return False


class no_grad(_GradMode):
    """Run ops without recording them (inference, optimizer updates)."""
    mode = False

    def __new__(cls, func=None):
        if func is not None and callable(func):  # bare @no_grad, as torch allows
            return cls()(func)
        return super().__new__(cls)

    def __init__(self, func=None):
        super().__init__()


class enable_grad(_GradMode):
    """Record ops again inside a ``no_grad`` region."""
    mode = True


class set_grad_enabled(_GradMode):
    """``set_grad_enabled(False)`` turns recording off now (a function call) or for a ``with`` block."""

    def __init__(self, mode):
        self.mode = bool(mode)
        self._prev_mode = _state.grad_enabled  # a plain call switches immediately, like torch
        _state.grad_enabled = self.mode

    def __enter__(self):
        pass  # already switched in __init__

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev_mode
        return False

    def __call__(self, func):
        _state.grad_enabled = self._prev_mode  # used as a decorator: undo the switch made by __init__
        return _GradModeSwitch(self.mode)(func)


class _GradModeSwitch(_GradMode):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode


class inference_mode(_GradMode):
    """``inference_mode()``: no recording (gradflow has no separate inference tensors); a decorator too."""

    def __new__(cls, mode=True):
        if callable(mode):  # bare @inference_mode
            return cls()(mode)
        return super().__new__(cls)

    def __init__(self, mode=True):
        super().__init__()
        self.mode = not bool(mode)


def is_inference_mode_enabled():
    return not _state.grad_enabled


# ---- default floating dtype (torch.set_default_dtype) ----------------------------------------
_default_float = numpy.dtype(numpy.float32)


def set_default_dtype(d):
    """The dtype of float tensors made from Python data and of zeros/ones/rand... without a dtype."""
    global _default_float
    d = numpy.dtype(d)
    if d not in (numpy.float16, numpy.float32, numpy.float64) and d.name != "bfloat16":
        raise TypeError(f"set_default_dtype: only floating-point types are supported as the default type, "
                        f"got {d}")
    _default_float = d


def get_default_dtype():
    return _default_float


# ---- printing (torch.set_printoptions) -------------------------------------------------------
_print_options = {}
_PRINT_PROFILES = {"default": dict(precision=4, threshold=1000, edgeitems=3, linewidth=80),
                   "short": dict(precision=2, threshold=1000, edgeitems=2, linewidth=80),
                   "full": dict(precision=4, threshold=2 ** 63 - 1, edgeitems=3, linewidth=80)}


def set_printoptions(precision=None, threshold=None, edgeitems=None, linewidth=None, profile=None,
                     sci_mode=None):
    """How ``repr`` shows tensor values (torch's names); ``None`` leaves a setting unchanged."""
    if profile is not None:
        if profile not in _PRINT_PROFILES:
            raise ValueError(f"set_printoptions: unknown profile {profile!r}")
        _print_options.clear()
        _print_options.update(_PRINT_PROFILES[profile])
    for key, value in (("precision", precision), ("threshold", threshold), ("edgeitems", edgeitems),
                       ("max_line_width", linewidth)):
        if value is not None:
            _print_options[key] = value
    if "linewidth" in _print_options:
        _print_options["max_line_width"] = _print_options.pop("linewidth")
    if sci_mode is not None:
        _print_options["suppress_small"] = not sci_mode
        _print_options["floatmode"] = "maxprec"


def _default_dtype_array(data, dtype, xp):
    """Python data becomes float32/int64/bool like ``torch.tensor``; arrays keep their dtype."""
    if data is None or isinstance(data, (str, bytes)):
        raise TypeError(f"cannot make a tensor from {type(data).__name__}: expected numbers, (nested) lists "
                        f"of numbers or a numeric array")
    try:
        arr = xp.asarray(data, dtype=dtype)
    except ValueError as e:
        if "inhomogeneous" not in str(e):
            raise
        raise ValueError(f"cannot make a tensor from ragged nested lists: every row needs the same length "
                         f"({e})") from None
    if dtype is not None:
        return arr
    if arr.dtype.kind not in "biufc":  # object (None, ragged lists, mixed), strings, bytes, records
        raise TypeError(f"cannot make a tensor from {type(data).__name__} data of dtype {arr.dtype}: expected "
                        f"numbers (bool, int, float, complex); ragged lists, strings and objects are refused")
    if not hasattr(data, "dtype"):  # Python numbers and lists
        listed = _listed_dtype(data) if isinstance(data, (list, tuple)) and arr.dtype.kind in "biuf" else None
        if listed is not None:
            arr = arr.astype(listed, copy=False)
        elif arr.dtype == numpy.float64:
            arr = arr.astype(_default_float)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(numpy.int64)
    return arr


def _listed_dtype(data):
    """torch.tensor's dtype for a (nested) list that holds NumPy scalars or arrays: each element counts with
    its own dtype (a Python float as the default float, an int as int64), promoted as torch promotes, so
    [numpy.float64(0.5), 1.0] is float64 and [numpy.int32(1), 2] int64; None when there are none
    (Python numbers only: the caller's defaults). Reads the element types of each level at once."""
    found, python, stack = [], set(), [data]
    while stack:
        level = stack.pop()
        nested = False
        for t in set(map(type, level)):
            if issubclass(t, numpy.generic):
                found.append(numpy.dtype(t))
            elif t in (bool, int, float):
                python.add(t)
            elif issubclass(t, (list, tuple, numpy.ndarray, Tensor)):
                nested = True
        if nested:
            for v in level:
                if isinstance(v, (list, tuple)):
                    stack.append(v)
                elif isinstance(v, (numpy.ndarray, Tensor)):
                    found.append(numpy.dtype(v.dtype))
    if not found:
        return None
    python = [d for kind, d in ((bool, numpy.dtype(bool)), (int, numpy.dtype(numpy.int64)), (float, _default_float))
              if kind in python]
    result = found[0]
    for d in found[1:] + python:
        result = ops.promote_types(result, d)
    return result


class Tensor:
    """An n-d array of either backend, plus what autograd needs to know about it."""
    __array_priority__ = 200  # numpy scalars and arrays defer binary ops to Tensor
    # defaults as class attributes keep the per-op wrap cheap
    _grad = None
    creator = None
    generation = 0
    _index = 0            # which output of ``creator`` this is
    _vc = None            # version counter [n], created on first need, shared by views
    _view_base = None     # a view's tensor whose memory it views (ops._view_of)
    _view_replay = None   # how a view is taken again from _view_base (None: a view made with grad off)
    _view_version = 0     # the version of the memory when a view's history was last set
    _retain_grad = False
    _post_accumulate_grad_hooks = None   # {id: hook}, set by register_post_accumulate_grad_hook

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        on_gpu = hasattr(data, "__cuda_array_interface__")
        device = backend.check_device(device or ("cuda" if on_gpu else "cpu"))
        if on_gpu and device == "cpu":
            data = data.get()
        self.data = _default_dtype_array(data, dtype, backend.xp_for(device))  # cupy.asarray uploads
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        """Fast constructor for op outputs (no conversion, no checks)."""
        t = cls.__new__(cls)
        t.data = array
        t.requires_grad = requires_grad
        return t

    # ---- basic properties ------------------------------------------------------------
    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        """A user's ``p.grad = ...``; inside a step that ``gradflow.compile`` records, the recorder
        is told, so a replay does it too (``p.grad = None``) instead of silently accumulating
        into the previous step's gradient. gradflow's own deliveries write ``_grad``."""
        recorder = _state._recorder
        if recorder is not None:
            recorder.on_grad_assigned(self, value)
        self._grad = value

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: ops._sync_view(self).creator is None)
    _version = property(lambda self: 0 if self._vc is None else self._vc[0])

    def size(self, dim=None):
        """The shape as a ``Size`` (a tuple), or one dim's length: ``x.size()``, ``x.size(0)``, as PyTorch."""
        if dim is None:
            return Size(self.data.shape)
        if self.data.ndim == 0:
            raise IndexError(f"dimension specified as {dim} but tensor has no dimensions")
        return self.data.shape[ops._dim(dim, self.data.ndim)]

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = numpy.array2string(self.numpy(), separator=", ", prefix="tensor(", **_print_options)
        extra = "" if self.dtype in (numpy.float32, _default_float) else f", dtype={self.dtype}"
        extra += "" if self.device == "cpu" else ", device='cuda'"
        if self.creator is not None:
            extra += f", grad_fn=<{self.creator.name}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind not in "fc" and self.data.dtype.name != "bfloat16":
            raise DTypeError(f"only floating-point tensors can require gradients, got dtype {self.dtype}")
        if not requires_grad and self.creator is not None:
            raise RuntimeError("requires_grad can only be turned off on leaf tensors; use detach()")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward, as in PyTorch."""
        self._retain_grad = True
        return self

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` once per backward pass, when this leaf's ``.grad`` holds every
        gradient that pass delivers to it (PyTorch's name). DistributedDataParallel uses it to
        start a bucket's all-reduce as soon as the bucket's gradients are final. Returns a
        handle whose ``remove()`` unregisters the hook.
        """
        global _hooked_leaves
        if self.creator is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = {}
        handle = _PostAccumulateHookHandle(self._post_accumulate_grad_hooks)
        self._post_accumulate_grad_hooks[handle.id] = hook
        _hooked_leaves += 1
        return handle

    def _bump_version(self):
        """Record an in-place change so backward can detect stale saved tensors."""
        self._version_box()[0] += 1

    def _version_box(self):
        if self._vc is None:
            self._vc = [0]
        return self._vc

    # ---- conversion -----------------------------------------------------------------
    def numpy(self):
        """A host copy: never aliases device memory or the tensor's own buffer."""
        _host_sync("numpy()")
        return backend.to_numpy(self.data)

    def __array__(self, dtype=None, copy=None):
        _host_sync("conversion to a NumPy array")
        a = backend.to_numpy(self.data)
        return a if dtype is None else a.astype(dtype, copy=False)

    def item(self):
        _host_sync("item()")
        if self.data.size != 1:
            raise OpError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item() if self.device == "cpu" else self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        """The same data with no history (shares memory and version counter)."""
        t = Tensor._wrap(self.data)
        t._vc = self._version_box()
        return t

    def to(self, *args, **kwargs):
        """``to('cpu'|'cuda')`` moves; ``to(dtype)`` casts; also ``to(device, dtype)``, ``to(other)``
        and the keywords ``device=``, ``dtype=`` (``non_blocking``/``copy`` accepted). Differentiable."""
        device, dtype, copy = _to_args(args, kwargs)
        out = self
        if dtype is not None:
            out = ops.astype(out, dtype)
        if device is not None:
            out = ops.to_device(out, device)
        if copy and out is self:
            out = ops.clone(self)
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return ops.astype(self, numpy.float32)

    def double(self):
        return ops.astype(self, numpy.float64)

    def type_as(self, other):
        return ops.astype(self, other.dtype)

    # ---- autograd -------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=False, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        ops._sync_view(self)
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad and has no grad_fn; "
                               "make an input require grad (requires_grad=True) before computing it")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward(): gradient can only be implicit for scalar outputs; this "
                                   f"tensor has shape {self.shape}, so pass backward(gradient) of that shape")
            gradient = Tensor._wrap(backend.xp_of(self.data).ones_like(self.data))
        else:
            gradient = as_tensor(gradient, like=self)
            if gradient.shape != self.shape:
                raise RuntimeError(f"backward(): gradient shape {gradient.shape} does not match "
                                   f"tensor shape {self.shape}")
        run_backward([self], [gradient], retain_graph or create_graph, create_graph)

    # ---- operators (ops.py holds the implementations) -------------------------------
    def __add__(self, o): return ops.add(self, o)
    def __radd__(self, o): return ops.add(o, self)
    def __sub__(self, o): return ops.sub(self, o)
    def __rsub__(self, o): return ops.sub(o, self)
    def __mul__(self, o): return ops.mul(self, o)
    def __rmul__(self, o): return ops.mul(o, self)
    def __truediv__(self, o): return ops.div(self, o)
    def __rtruediv__(self, o): return ops.div(o, self)
    def __pow__(self, o): return ops.pow(self, o)
    def __rpow__(self, o): return ops.pow(o, self)
    def __matmul__(self, o): return ops.matmul(self, o)
    def __rmatmul__(self, o): return ops.matmul(o, self)
    def __neg__(self): return ops.neg(self)
    def __pos__(self): return self if self.dtype != bool else ops.neg(self)  # neg's bool error, as torch
    def __abs__(self): return ops.abs(self)
    def __getitem__(self, index): return ops.getitem(self, index)
    def __setitem__(self, index, value): ops.setitem_(self, index, value)
    def __iadd__(self, o): return ops.inplace_(self, o, "add")
    def __isub__(self, o): return ops.inplace_(self, o, "subtract")
    def __imul__(self, o): return ops.inplace_(self, o, "multiply")
    def __itruediv__(self, o): return ops.inplace_(self, o, "divide")
    # without these Python falls back to x = x // o: a new tensor, so views and other names of x kept the old value
    def __ifloordiv__(self, o): return ops.inplace_(self, o, "floor_divide")
    def __imod__(self, o): return ops.inplace_(self, o, "remainder")
    def __ipow__(self, o): return ops.inplace_(self, o, "power")
    def __iand__(self, o): return ops.inplace_(self, o, "bitwise_and")
    def __ior__(self, o): return ops.inplace_(self, o, "bitwise_or")
    def __ixor__(self, o): return ops.inplace_(self, o, "bitwise_xor")
    def __lt__(self, o): return ops.compare(self, o, "less")
    def __le__(self, o): return ops.compare(self, o, "less_equal")
    def __gt__(self, o): return ops.compare(self, o, "greater")
    def __ge__(self, o): return ops.compare(self, o, "greater_equal")
    def __eq__(self, o): return ops.compare(self, o, "equal")
    def __ne__(self, o): return ops.compare(self, o, "not_equal")
    __hash__ = object.__hash__

    def __bool__(self):
        _host_sync("bool() (data-dependent Python control flow)")
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self): return float(self.item())
    def __int__(self): return int(self.item())

    T = property(lambda self: ops.transpose(self))
    mT = property(lambda self: ops._matrix_transpose(self))

    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def abs(self): return ops.abs(self)
    def clamp(self, min=None, max=None): return ops.clamp(self, min, max)
    clip = clamp
    def matmul(self, o): return ops.matmul(self, o)
    def sum(self, axis=None, keepdims=False, **kw): return ops.sum(self, axis, keepdims, **kw)
    def mean(self, axis=None, keepdims=False, **kw): return ops.mean(self, axis, keepdims, **kw)
    def var(self, dim=None, unbiased=None, keepdim=False, **kw): return ops.var(self, dim, unbiased, keepdim, **kw)
    def std(self, dim=None, unbiased=None, keepdim=False, **kw): return ops.std(self, dim, unbiased, keepdim, **kw)
    def max(self, axis=None, keepdims=False, **kw): return ops.max(self, axis, keepdims, **kw)
    def min(self, axis=None, keepdims=False, **kw): return ops.min(self, axis, keepdims, **kw)
    def argmax(self, dim=None, keepdim=False, **kw): return ops.argmax(self, dim, keepdim, **kw)
    def argmin(self, dim=None, keepdim=False, **kw): return ops.argmin(self, dim, keepdim, **kw)
    def reshape(self, *shape): return ops.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    def view(self, *shape): return ops.view(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    def flatten(self, start_dim=0, end_dim=-1): return ops.flatten(self, start_dim, end_dim)
    def transpose(self, *axes): return ops.transpose(self, *axes)
    def permute(self, *axes): return ops.permute(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes)
    def squeeze(self, *dims, **kw): return ops.squeeze(self, dims[0] if len(dims) == 1 else (dims or None), **kw)
    def unsqueeze(self, dim=None, **kw): return ops.unsqueeze(self, dim, **kw)
    def broadcast_to(self, shape): return ops.broadcast_to(self, shape)
    def expand(self, *shape): return ops.expand(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    def sum_to(self, shape): return ops.sum_to(self, shape)
    def astype(self, dtype): return ops.astype(self, dtype)

    # ==== API breadth (issue 13): the everyday torch.Tensor methods ==========================
    def dim(self): return self.data.ndim
    ndimension = dim
    def numel(self): return int(self.data.size)
    def nelement(self): return int(self.data.size)
    def element_size(self): return self.data.dtype.itemsize
    grad_fn = property(lambda self: ops._sync_view(self).creator)
    is_cuda = property(lambda self: self.device == "cuda")
    def is_floating_point(self): return self.dtype.kind == "f" or self.dtype.name == "bfloat16"
    def clone(self): return ops.clone(self)
    def long(self): return ops.astype(self, numpy.int64)
    def int(self): return ops.astype(self, numpy.int32)
    def bool(self): return ops.astype(self, numpy.bool_)
    def half(self): return ops.astype(self, numpy.float16)

    def bfloat16(self):
        import ml_dtypes
        return ops.astype(self, ml_dtypes.bfloat16)

    def type(self, dtype=None):
        """No argument: the torch type name ('torch.FloatTensor'); with a dtype: a cast."""
        if dtype is None:
            name = _TYPE_NAMES.get(self.dtype.name, self.dtype.name)
            return f"torch.{'cuda.' if self.device == 'cuda' else ''}{name}"
        return ops.astype(self, _TYPE_BY_NAME.get(dtype, dtype) if isinstance(dtype, str) else dtype)

    def view_as(self, other): return ops.view(self, other.shape)
    def reshape_as(self, other): return ops.reshape(self, other.shape)
    def expand_as(self, other): return ops.broadcast_to(self, other.shape)
    def contiguous(self): return ops.contiguous(self)
    def is_contiguous(self): return bool(self.data.flags.c_contiguous)
    def pow(self, e): return ops.pow(self, e)
    def neg(self): return ops.neg(self)
    negative = neg
    def add(self, o, alpha=1): return ops.add(self, o if alpha == 1 else o * alpha)
    def sub(self, o, alpha=1): return ops.sub(self, o if alpha == 1 else o * alpha)
    def mul(self, o): return ops.mul(self, o)
    multiply = mul
    def div(self, o, rounding_mode=None): return ops.true_divide(self, o, rounding_mode)
    divide = div
    def true_divide(self, o): return ops.true_divide(self, o)
    def remainder(self, o): return ops.remainder(self, o)
    def floor_divide(self, o): return ops.floor_divide(self, o)

    def relu(self):
        from gradflow import activation
        return activation.relu(self)

    def sigmoid(self):
        from gradflow import activation
        return activation.sigmoid(self)

    def tanh(self):
        from gradflow import activation
        return activation.tanh(self)

    def softmax(self, dim, dtype=None):
        from gradflow import softmax_ops
        return softmax_ops.softmax(self, dim, dtype=dtype)

    def log_softmax(self, dim, dtype=None):
        from gradflow import softmax_ops
        return softmax_ops.log_softmax(self, dim, dtype=dtype)

    def exp2(self): return ops.exp2(self)
    def sin(self): return ops.sin(self)
    def cos(self): return ops.cos(self)
    def floor(self): return ops.floor(self)
    def ceil(self): return ops.ceil(self)
    def trunc(self): return ops.trunc(self)
    def round(self, decimals=0): return ops.round(self, decimals=decimals)
    def sign(self): return ops.sign(self)
    def rsqrt(self): return ops.rsqrt(self)
    def log2(self): return ops.log2(self)
    def log10(self): return ops.log10(self)
    def square(self): return ops.mul(self, self)
    def eq(self, o): return ops.compare(self, o, "equal")
    def ne(self, o): return ops.compare(self, o, "not_equal")
    def lt(self, o): return ops.compare(self, o, "less")
    def le(self, o): return ops.compare(self, o, "less_equal")
    def gt(self, o): return ops.compare(self, o, "greater")
    def ge(self, o): return ops.compare(self, o, "greater_equal")
    def equal(self, o): return ops.equal(self, o)
    def allclose(self, o, rtol=1e-05, atol=1e-08, equal_nan=False): return ops.allclose(self, o, rtol, atol, equal_nan)
    def isclose(self, o, rtol=1e-05, atol=1e-08, equal_nan=False): return ops.isclose(self, o, rtol, atol, equal_nan)
    def all(self, dim=None, keepdim=False): return ops.reduce_all(self, dim, keepdim)
    def any(self, dim=None, keepdim=False): return ops.reduce_any(self, dim, keepdim)
    def isnan(self): return ops.isnan(self)
    def isinf(self): return ops.isinf(self)
    def isfinite(self): return ops.isfinite(self)
    def logical_not(self): return ops.logical_not(self)
    def t(self): return ops.t(self)
    def repeat(self, *sizes): return ops.repeat(self, *sizes)
    def repeat_interleave(self, repeats, dim=None, *, output_size=None):
        return ops.repeat_interleave(self, repeats, dim, output_size=output_size)
    def tile(self, *dims): return ops.tile(self, dims[0] if len(dims) == 1 and not isinstance(dims[0], int) else dims)
    def flip(self, *dims): return ops.flip(self, dims[0] if len(dims) == 1 and not isinstance(dims[0], int) else dims)
    def roll(self, shifts, dims=None): return ops.roll(self, shifts, dims)
    def masked_fill(self, mask, value): return ops.masked_fill(self, mask, value)
    def gather(self, dim, index): return ops.gather(self, dim, index)
    def scatter(self, dim, index, src=None, value=None, reduce=None):
        return ops.scatter(self, dim, index, src, value, reduce)
    def scatter_add(self, dim, index, src): return ops.scatter_add(self, dim, index, src)
    def index_add(self, dim, index, source, *, alpha=1): return ops.index_add(self, dim, index, source, alpha=alpha)
    def index_add_(self, dim, index, source, *, alpha=1):
        return ops.index_add_(self, dim, index, source, alpha=alpha)
    def topk(self, k, dim=-1, largest=True, sorted=True): return ops.topk(self, k, dim, largest, sorted)
    def sort(self, dim=-1, descending=False, stable=False): return ops.sort(self, dim, descending, stable)
    def argsort(self, dim=-1, descending=False, stable=False): return ops.argsort(self, dim, descending, stable)
    def cumsum(self, dim, dtype=None): return ops.cumsum(self, dim, dtype)
    def cumprod(self, dim, dtype=None): return ops.cumprod(self, dim, dtype)
    def prod(self, dim=None, keepdim=False, dtype=None): return ops.prod(self, dim, keepdim, dtype)
    def norm(self, p="fro", dim=None, keepdim=False, dtype=None): return ops.norm(self, p, dim, keepdim, dtype)
    def tril(self, diagonal=0): return ops.tril(self, diagonal)
    def triu(self, diagonal=0): return ops.triu(self, diagonal)
    def chunk(self, chunks, dim=0): return ops.chunk(self, chunks, dim)
    def split(self, split_size, dim=0): return ops.split(self, split_size, dim)
    def unbind(self, dim=0): return ops.unbind(self, dim)
    def logsumexp(self, dim, keepdim=False): return ops.logsumexp(self, dim, keepdim)
    def lerp(self, end, weight): return ops.lerp(self, end, weight)
    def clamp_min(self, min): return ops.clamp(self, min=min)
    def clamp_max(self, max): return ops.clamp(self, max=max)
    def __and__(self, o): return ops.bitwise_and(self, o)
    def __rand__(self, o): return ops.bitwise_and(o, self)
    def __or__(self, o): return ops.bitwise_or(self, o)
    def __ror__(self, o): return ops.bitwise_or(o, self)
    def __xor__(self, o): return ops.bitwise_xor(self, o)
    def __rxor__(self, o): return ops.bitwise_xor(o, self)
    def __invert__(self): return ops.bitwise_not(self)
    def __mod__(self, o): return ops.remainder(self, o)
    def __rmod__(self, o): return ops.remainder(o, self)
    def __floordiv__(self, o): return ops.floor_divide(self, o)
    def __rfloordiv__(self, o): return ops.floor_divide(o, self)

    # in place: versioned, refused where the tape could not account for them (as torch)
    def zero_(self): return ops.zero_(self)
    def fill_(self, value): return ops.fill_(self, value)
    def add_(self, o, alpha=1): return ops.add_(self, o, alpha)
    def sub_(self, o, alpha=1): return ops.sub_(self, o, alpha)
    def mul_(self, o): return ops.mul_(self, o)
    def div_(self, o): return ops.div_(self, o)
    def copy_(self, src, non_blocking=False): return ops.copy_(self, src)
    def clamp_(self, min=None, max=None): return ops.clamp_(self, min, max)
    clip_ = clamp_
    def normal_(self, mean=0.0, std=1.0, generator=None): return ops.normal_(self, mean, std, generator)
    def uniform_(self, a=0.0, b=1.0, generator=None): return ops.uniform_(self, a, b, generator)

    def __dlpack__(self, *args, **kwargs):
        """Export without a copy (torch.from_dlpack(x), numpy.from_dlpack(x), cupy.from_dlpack(x))."""
        if self.requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def register_hook(self, hook):
        """Call ``hook(grad)`` with this tensor's gradient during backward; a non-None return replaces it.

        As torch's, a non-leaf's hook belongs to the node that made the tensor's value now (its
        grad_fn), not to the tensor: after an in-place op (``y.mul_(2)``), or once a view's base
        changed, the tensor has a new node, and hooks registered before see the gradient of the
        old value (once, where that value was used), hooks registered after that of the new one.
        A leaf keeps its hooks (an in-place op under no_grad leaves it a leaf)."""
        if not ops._sync_view(self).requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        fn = self.creator
        if fn is None:
            if "_hooks" not in self.__dict__:
                self._hooks = {}
            registry = self._hooks
        else:
            if fn._tensor_hooks is None:
                fn._tensor_hooks = {}
            registry = fn._tensor_hooks.setdefault(self._index, {})
        handle = RemovableHandle(registry)
        registry[handle.id] = hook
        return handle


_TYPE_NAMES = {"float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor",
               "bfloat16": "BFloat16Tensor", "int64": "LongTensor", "int32": "IntTensor", "int16": "ShortTensor",
               "int8": "CharTensor", "uint8": "ByteTensor", "bool": "BoolTensor"}
_TYPE_BY_NAME = {f"torch.{v}": k for k, v in _TYPE_NAMES.items()}


def _device_name(device):
    """'cpu', 'cuda', 'cuda:0' or a ``gradflow.device`` as gradflow's device string."""
    name = str(getattr(device, "type", device))
    if name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index not in ("0", ""):
            raise ValueError(f"device {name!r}: gradflow uses one GPU per process (cuda:0)")
        name = "cuda"
    return backend.check_device(name)


def _is_device(value):
    return isinstance(value, str) and (value in ("cpu", "cuda") or value.startswith("cuda:")) or \
        hasattr(value, "type") and isinstance(getattr(value, "type"), str)


def _to_args(args, kwargs):
    """Parse ``Tensor.to``'s overloads into (device or None, dtype or None, copy)."""
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    copy = bool(kwargs.pop("copy", False))
    kwargs.pop("non_blocking", None)
    kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            device, dtype = a.device, a.dtype
        elif _is_device(a):
            device = a
        elif isinstance(a, bool):
            continue  # to(dtype, non_blocking)
        elif a is not None:
            dtype = a
    if device is not None:
        device = _device_name(device)
    return device, (None if dtype is None else numpy.dtype(dtype)), copy


class RemovableHandle:
    """What ``register_hook``/``register_forward_hook`` return: ``remove()`` unregisters the hook."""
    _next = itertools.count()

    def __init__(self, registry):
        self._registry = registry
        self.id = next(RemovableHandle._next)

    def remove(self):
        self._registry.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _run_hooks(hooks, g):
    """Pass g through the hooks of ``hooks`` ({id: hook}) in registration order."""
    for hook in list(hooks.values()):
        out = hook(g)
        if out is not None:
            if not isinstance(out, Tensor):
                raise TypeError(f"a tensor hook must return a Tensor or None, got {type(out).__name__}")
            if out.shape != g.shape:
                raise RuntimeError(f"a tensor hook returned a gradient of shape {out.shape}, expected {g.shape}")
            g = out
    return g


class _PostAccumulateHookHandle(RemovableHandle):
    """Also keeps count of the registered post-accumulate-grad hooks (backward looks for them only then)."""

    def remove(self):
        global _hooked_leaves
        if self._registry.pop(self.id, None) is not None:
            _hooked_leaves -= 1


def queue_backward_callback(callback):
    """Run ``callback()`` once the backward pass now running has finished (every gradient
    delivered), as PyTorch's ``queue_callback``: DistributedDataParallel's final sync."""
    if _state.backward_depth == 0:
        raise RuntimeError("queue_backward_callback: no backward pass is running")
    _state.backward_callbacks.append(callback)


def as_tensor(value, like=None):
    """``value`` as a Tensor; Python scalars take ``like``'s dtype and device."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, (int, float, bool, numpy.generic)):
        xp = backend.xp_of(like.data)
        dtype = like.dtype if like.dtype.kind in "fc" or isinstance(value, (int, bool)) else numpy.float32
        return Tensor._wrap(xp.asarray(value, dtype=dtype))
    if like is not None and not hasattr(value, "shape"):
        return Tensor._wrap(backend.xp_of(like.data).asarray(value, dtype=like.dtype))
    return Tensor(value)


class OpError(ValueError, RuntimeError):
    """An op's arguments do not fit (shapes, values): a ValueError, as NumPy and gradflow
    raise, that is also the RuntimeError PyTorch raises, so ported ``except RuntimeError``
    code still catches it."""


class DTypeError(TypeError, RuntimeError):
    """An op does not support a dtype (or a mix of dtypes): a TypeError that is also
    PyTorch's RuntimeError."""


def _raise_op_error(e):
    """Re-raise a ValueError/TypeError from an op's forward as OpError/DTypeError (also RuntimeErrors, as
    PyTorch raises), unless it is a RuntimeError or IndexError (NumPy's AxisError) already."""
    if isinstance(e, (RuntimeError, IndexError)):
        raise e
    raise (OpError if isinstance(e, ValueError) else DTypeError)(*e.args) from e


class Size(tuple):
    """A shape, as ``torch.Size``: a tuple of ints with ``numel()``."""
    __slots__ = ()

    def numel(self):
        n = 1
        for s in self:
            n *= s
        return n

    def __repr__(self):
        return f"gradflow.Size({list(self)})"


class Function:
    """One recorded op. Subclasses define ``forward`` (arrays) and ``backward`` (Tensors)."""
    generation = 0
    inputs = None
    edges = None   # [(the node that made each input, its output index)], set when recorded
    needs_input_grad = ()
    _saved = ()
    # per array that forward saves, the inputs whose gradient reads it (None: always kept); an
    # array no input that needs a gradient reads is not kept, as torch saves a variable only when
    # backward will use it: `z = y * 2; y.mul_(3)` leaves z's backward working, and memory free
    _saved_for = None
    _tensor_hooks = None  # {output index: {id: hook}}: hooks registered on a non-leaf whose value this made

    @property
    def name(self):
        return type(self).__name__

    def __call__(self, *inputs):
        # the hot path of every op: keep it flat and cheap
        try:
            if len(inputs) > 1:
                _check_same_device(self, inputs)
            arrays = [x.data for x in inputs]
        except AttributeError:
            if all(isinstance(x, Tensor) for x in inputs):
                raise
            raise _not_tensor_error(self, inputs) from None
        state = _state
        record = False
        if state.grad_enabled:
            for x in inputs:
                if x._view_base is not None and x._view_version != x._vc[0]:
                    ops._refresh_view(x)  # its base changed in place since: take the view's current history
                if x.requires_grad:
                    record = True
        recorder = state._recorder
        if recorder is not None:
            constructed = dict(vars(self))  # set by __init__: must be equal in every step
            recorder.before_function(inputs)
            ys = self._forward_checked(arrays)
            recorder.on_function(self, inputs, arrays, ys, constructed)
        else:
            try:
                ys = self.forward(*arrays)
            except (ValueError, TypeError) as e:  # NumPy's types for bad shapes/dtypes: also PyTorch's RuntimeError
                _raise_op_error(e)
        if type(ys) is not tuple:
            y = Tensor._wrap(ys, record)
            if record:
                self._record(inputs, (y,))
            else:
                self._saved = ()
            return y
        outputs = tuple(Tensor._wrap(a, record) for a in ys)
        if record:
            self._out_meta = [(a.shape, a.dtype) for a in ys]  # for outputs that get no gradient
            self._record(inputs, outputs)
        else:
            self._saved = ()
        return outputs

    def _forward_checked(self, arrays):
        try:
            return self.forward(*arrays)
        except (ValueError, TypeError) as e:
            _raise_op_error(e)

    def _record(self, inputs, outputs):
        self.inputs = inputs
        self.needs_input_grad = tuple([x.requires_grad for x in inputs])
        generation = 0
        edges = []
        for x in inputs:
            if x.generation > generation:
                generation = x.generation
            edges.append((x.creator, x._index))
        # where each input's gradient goes: the node that made the value this op read. Not
        # x.creator at backward time -- an in-place op on x since (x.mul_(2), x[0] = 1) gives x
        # a new node, which must not receive the gradient of a value it did not make.
        self.edges = edges
        self.generation = generation
        self.outputs = [weakref.ref(y) for y in outputs]
        for i, y in enumerate(outputs):
            y.creator = self
            y.generation = generation + 1
            if i:
                y._index = i
        if self._saved:
            saved, needs = self._saved, self.needs_input_grad
            if self._saved_for is not None:
                saved = [a if users is None or any(needs[i] for i in users) else None
                         for a, users in zip(saved, self._saved_for)]
            self._saved = [self._resolve_saved(a, inputs, outputs) for a in saved]

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, *gys):
        raise NotImplementedError

    # ---- saving what backward needs ---------------------------------------------------
    def save_for_backward(self, *arrays):
        """Call from ``forward`` with the arrays backward will read.

        Inputs and outputs among them come back in ``saved_tensors`` as graph-connected
        Tensors (so double backward works), each checked against in-place changes.
        """
        self._saved = arrays

    @staticmethod
    def _resolve_saved(a, inputs, outputs):
        if a is None:
            return None
        for x in inputs:
            if x.data is a:
                vc = x._version_box()
                return ("tensor", x, vc, vc[0])
        for y in outputs:
            if y.data is a:
                return ("output", (y._index, a), y._version_box(), 0)
        return ("array", a, None, 0)

    @property
    def saved_tensors(self):
        if self.inputs is None and self._saved:
            raise _freed_error()
        result = []
        for item in self._saved:
            if item is None:
                result.append(None)
                continue
            kind, ref, vc, version = item
            if vc is not None and vc[0] != version:
                raise RuntimeError(
                    f"a tensor saved by {self.name} for backward was modified in place after it was "
                    f"used (its version is {vc[0]}, expected {version}); compute a new tensor "
                    f"instead of modifying it, or call backward before modifying it")
            if kind == "tensor":
                result.append(ref)
            elif kind == "output":
                index, array = ref
                y = self.outputs[index]()
                if y is None:  # output dropped: a fresh alias that still points at this node
                    y = Tensor._wrap(array, True)
                    y.creator, y._index, y.generation, y._vc = self, index, self.generation + 1, vc
                result.append(y)
            else:
                result.append(Tensor._wrap(ref))
        return tuple(result)

    def release(self):
        """Drop everything backward needed (called after backward unless retain_graph)."""
        self.inputs = self.edges = None
        self._saved = ()


def _in_place(what):
    recorder = _state._recorder
    if recorder is not None:
        recorder.on_in_place(what)


def _host_sync(what):
    recorder = _state._recorder
    if recorder is not None:
        recorder.on_host_sync(what)


def _active_recorder():
    """The compile recorder of the calling thread, or None."""
    return _state._recorder


def _freed_error():
    return RuntimeError("trying to backward through the graph a second time (its saved tensors were "
                        "freed by the first backward); pass retain_graph=True to the first backward")


def _not_tensor_error(fn, inputs):
    bad = next(x for x in inputs if not isinstance(x, Tensor))
    return TypeError(f"{fn.name}: expected a Tensor, got {type(bad).__name__}; convert it with "
                     f"gradflow.tensor(...) (or gradflow.from_numpy for a NumPy array)")


def _check_same_device(fn, inputs):
    first = type(inputs[0].data)
    for x in inputs[1:]:
        if type(x.data) is not first and not all(isinstance(y, Tensor) for y in inputs):
            raise _not_tensor_error(fn, inputs)  # a NumPy array's .data is a memoryview
        if type(x.data) is not first and backend.device_of(x.data) != backend.device_of(inputs[0].data):
            raise RuntimeError(f"{fn.name}: inputs are on different devices "
                               f"('{inputs[0].device}' and '{x.device}'); move them with .to(device)")


# ---- the backward engine -------------------------------------------------------------------
def run_backward(roots, grads, retain_graph=False, create_graph=False, targets=None):
    """Walk the tape from ``roots`` in reverse topological order (iteratively).

    With ``targets`` (a list of tensors), gradients for those are returned instead of being
    accumulated into leaves' ``.grad``.
    """
    pending = {}      # Function -> list of gradient Tensors, one per output
    heap = []
    counter = itertools.count()
    results = None
    if targets is not None:
        results = {id(t): None for t in targets}
        target_outputs = {(id(t.creator), t._index): id(t) for t in targets if t.creator is not None}
    # arrays already handed to a leaf's .grad in this pass, and the caller's gradients (a leaf's .grad
    # is accumulated into in place: it must never be an array the caller holds, as torch clones them)
    assigned = {id(_owner(g.data)) for g in grads if isinstance(g, Tensor)}
    hooked = _hooked_edges(roots) if _hooked_leaves and targets is None else None
    hooked_leaves = {}  # id -> (leaf with tensor hooks, its summed gradient): hooked once, at the end

    def deliver(x, gx, edge=None):
        """Hand gradient gx to x: to the node that made x's value (``edge``, recorded with the op
        that read it; x's own node for a root), else into the leaf."""
        if gx.dtype != x.dtype:
            gx = gx.astype(x.dtype)
        fn, index = edge if edge is not None else (x.creator, x._index)
        if fn is not None:
            slots = pending.get(fn)
            if slots is None:
                if fn.inputs is None:
                    raise _freed_error()
                slots = pending[fn] = [None] * len(fn.outputs)
                heapq.heappush(heap, (-fn.generation, next(counter), fn))
            prev = slots[index]
            slots[index] = gx if prev is None else prev + gx
        elif results is not None:
            if id(x) in results:
                prev = results[id(x)]
                results[id(x)] = gx if prev is None else prev + gx
        elif "_hooks" in x.__dict__ and x._hooks:  # hooked leaf: sum first, hook once at the end
            prev = hooked_leaves.get(id(x))
            hooked_leaves[id(x)] = (x, gx if prev is None else prev[1] + gx)
        else:
            _accumulate_leaf(x, gx, create_graph, assigned)
            if hooked is not None and id(x) in hooked:
                _leaf_edge_done(hooked, x, True)

    state = _state
    if create_graph and state._recorder is not None:
        state._recorder.on_create_graph()
    state.backward_depth += 1
    try:
        results = _walk(roots, grads, targets, target_outputs if targets is not None else None, results, deliver,
                        heap, pending, retain_graph, create_graph, hooked, assigned)
        if hooked_leaves:
            with enable_grad() if create_graph else no_grad():
                for x, gx in hooked_leaves.values():
                    assigned.add(id(_owner(gx.data)))  # the hooks may keep it: never the leaf's buffer
                    hooked_gx = _run_hooks(x._hooks, gx)
                    assigned.add(id(_owner(hooked_gx.data)))  # nor a hook's own tensor
                    _accumulate_leaf(x, hooked_gx, create_graph, assigned)
                    if hooked is not None and hooked.pop(id(x), None) is not None:
                        _fire_post_accumulate_hooks(x)
    except BaseException:
        state.backward_depth -= 1
        if state.backward_depth == 0:
            state.backward_callbacks.clear()
        raise
    state.backward_depth -= 1
    if hooked:  # leaves whose last edge gave no gradient (a backward returned None for it)
        for entry in list(hooked.values()):
            if entry[2]:
                _fire_post_accumulate_hooks(entry[0])
    if state.backward_depth == 0:
        while state.backward_callbacks:
            state.backward_callbacks.pop(0)()
    return results


def _walk(roots, grads, targets, target_outputs, results, deliver, heap, pending, retain_graph, create_graph, hooked,
          exposed):
    """The body of ``run_backward``: pop Functions off the heap and push their input gradients.

    ``exposed`` collects the arrays of gradients handed to the user (tensor hooks, retain_grad):
    a leaf's ``.grad`` is never one of them (it is accumulated into in place later)."""
    mode = enable_grad() if create_graph else no_grad()
    with mode:
        for t, g in zip(roots, grads):
            if targets is not None and t.creator is not None and (id(t.creator), t._index) in target_outputs:
                results[id(t)] = g
            deliver(t, g)
        while heap:
            _, _, fn = heapq.heappop(heap)
            gys = pending.pop(fn)
            xp = None
            for i, g in enumerate(gys):
                if g is None:
                    shape, dtype = fn._out_meta[i]
                    xp = xp or backend.xp_of(fn.inputs[0].data)
                    gys[i] = Tensor._wrap(xp.zeros(shape, dtype=dtype))
                else:
                    hooks = fn._tensor_hooks
                    if hooks is not None and hooks.get(i):
                        exposed.add(id(_owner(g.data)))
                        g = gys[i] = _run_hooks(hooks[i], g)
                        exposed.add(id(_owner(g.data)))
                    ref = fn.outputs[i]()
                    # retain_grad follows the tensor: only the node that makes its value now fills
                    # its .grad (the node of a value an in-place op replaced does not), as torch's
                    if ref is not None and ref._retain_grad and ref.creator is fn and ref._index == i:
                        ref._grad = g if create_graph else g.detach()
                        exposed.add(id(_owner(g.data)))
                if targets is not None and (id(fn), i) in target_outputs:
                    tid = target_outputs[(id(fn), i)]
                    results[tid] = gys[i]
            if fn.inputs is None:
                raise _freed_error()
            gxs = fn.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, edge, gx, need in zip(fn.inputs, fn.edges, gxs, fn.needs_input_grad):
                if not need or gx is None:
                    if need and hooked is not None and id(x) in hooked:
                        _leaf_edge_done(hooked, x, False)
                    continue
                if gx.shape != x.shape:
                    raise RuntimeError(f"{fn.name}.backward returned a gradient of shape {gx.shape} "
                                       f"for an input of shape {x.shape}")
                deliver(x, gx, edge)
            if not retain_graph:
                fn.release()
    return results


def _hooked_edges(roots):
    """{id(leaf): [leaf, gradients still to come, got one]} for the hooked leaves this pass reaches."""
    counts, seen = {}, set()
    stack = []
    for t in roots:
        if t.creator is not None:
            stack.append(t.creator)
        elif t._post_accumulate_grad_hooks:
            counts.setdefault(id(t), [t, 0, False])[1] += 1
    while stack:
        fn = stack.pop()
        if id(fn) in seen or fn.inputs is None:
            continue
        seen.add(id(fn))
        for x, (creator, _), need in zip(fn.inputs, fn.edges, fn.needs_input_grad):
            if not need:
                continue
            if creator is not None:
                stack.append(creator)
            elif x._post_accumulate_grad_hooks:
                counts.setdefault(id(x), [x, 0, False])[1] += 1
    return counts


def _leaf_edge_done(hooked, x, received):
    entry = hooked[id(x)]
    entry[1] -= 1
    entry[2] = entry[2] or received
    if entry[1] == 0:
        del hooked[id(x)]
        if entry[2]:
            _fire_post_accumulate_hooks(x)


def _fire_post_accumulate_hooks(x):
    recorder = _state._recorder
    if recorder is not None:  # gradflow.compile records the hooks as one call that each replay repeats
        recorder.on_post_accumulate_hooks(x, _fire_post_accumulate_hooks)
        recorder.check_leaves()
        _state._recorder = None
        try:
            _fire_post_accumulate_hooks(x)
        finally:
            _state._recorder = recorder
            recorder.on_call_returned()  # hooks may update parameters (an optimizer step in backward)
        return
    for hook in list((x._post_accumulate_grad_hooks or {}).values()):
        hook(x)


def _owner(a):
    return a if getattr(a, "base", None) is None else a.base


def _accumulates_in_place(grad, a):
    """Whether a leaf's existing ``.grad`` takes the new gradient ``a`` in place, as torch's
    (``grad += new``: a reference to ``p.grad`` held across backward sees the sum): a writable
    array of the same shape and dtype, not a broadcast view, without a graph."""
    g = grad.data
    return grad.creator is None and not grad.requires_grad and g.shape == a.shape and g.dtype == a.dtype and \
        type(g) is type(a) and getattr(g.flags, "writeable", True) and not (g.size > 1 and 0 in g.strides)


def _accumulate_leaf(x, gx, create_graph, assigned):
    if not x.requires_grad:
        return
    if create_graph and (gx.requires_grad or (x.grad is not None and x.grad.requires_grad)):
        x._grad = gx if x.grad is None else x.grad + gx
        return
    # a gradient without history gets its own buffer, whether or not create_graph was asked
    a = gx.data
    copy = False
    grad = x.grad
    if grad is None:
        # .grad must be its own writable buffer (optimizers and clipping update it in
        # place), never a broadcast view or an array another leaf's .grad (or the caller) also uses
        owner = id(_owner(a))
        copy = owner in assigned or not getattr(a.flags, "writeable", True) or (a.size > 1 and 0 in a.strides)
        result = a.copy() if copy else a
        assigned.add(id(result) if copy else owner)
    elif id(_owner(grad.data)) not in assigned and _accumulates_in_place(grad, a):
        # a .grad from an earlier pass (one handed out in this pass may still be a pending gradient)
        result = grad.data
        result += a
        grad._bump_version()
        recorder = _state._recorder
        if recorder is not None:
            recorder.on_leaf_grad(x, a, copy, result, in_place=True)
        return
    else:
        result = grad.data + a
    if isinstance(result, numpy.generic):  # NumPy's result of an op on 0-d arrays: a read-only scalar
        result = numpy.array(result)
    x._grad = Tensor._wrap(result)  # a delivery the recorder logs below, not a user's assignment
    recorder = _state._recorder
    if recorder is not None:
        recorder.on_leaf_grad(x, a, copy, result)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, without touching any ``.grad``."""
    single_out = isinstance(outputs, Tensor)
    outputs = [outputs] if single_out else list(outputs)
    single_in = isinstance(inputs, Tensor)
    inputs = [inputs] if single_in else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    for t in outputs + inputs:
        ops._sync_view(t)
    gs = []
    for y, g in zip(outputs, grad_outputs):
        if not y.requires_grad:
            raise RuntimeError("grad(): an output does not require grad; nothing to differentiate")
        if g is None:
            if y.data.size != 1:
                raise RuntimeError(f"grad(): grad_outputs is needed for a non-scalar output of shape {y.shape}")
            g = Tensor._wrap(backend.xp_of(y.data).ones_like(y.data))
        gs.append(as_tensor(g, like=y))
    for x in inputs:
        if not x.requires_grad:
            raise RuntimeError("grad(): an input does not require grad, so it has no gradient")
    if retain_graph is None:
        retain_graph = create_graph
    results = run_backward(outputs, gs, retain_graph, create_graph, targets=inputs)
    out = []
    for x in inputs:
        g = results[id(x)]
        if g is None and not allow_unused:
            raise RuntimeError("grad(): one of the inputs was not used to compute the outputs; "
                               "pass allow_unused=True to get None for it")
        out.append(g if g is None or create_graph else g.detach())
    return tuple(out)  # always a tuple, as torch.autograd.grad: ``g, = grad(loss, x)``


from gradflow import ops  # noqa: E402  (ops needs Tensor and Function defined first)
