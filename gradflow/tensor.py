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
    _recorder = None   # set by gradflow.compile while it records a step in this thread

    def __init__(self):
        self.mode_stack = []   # grad modes to restore, one per open no_grad/enable_grad


_state = _TapeState()


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


class enable_grad(_GradMode):
    """Record ops again inside a ``no_grad`` region."""
    mode = True


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
        if arr.dtype == numpy.float64:
            arr = arr.astype(numpy.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(numpy.int64)
    return arr


class Tensor:
    """An n-d array of either backend, plus what autograd needs to know about it."""
    __array_priority__ = 200  # numpy scalars and arrays defer binary ops to Tensor
    # defaults as class attributes keep the per-op wrap cheap
    grad = None
    creator = None
    generation = 0
    _index = 0            # which output of ``creator`` this is
    _vc = None            # version counter [n], created on first need, shared by views
    _retain_grad = False

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
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self.creator is None)
    _version = property(lambda self: 0 if self._vc is None else self._vc[0])

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = numpy.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = "" if self.dtype == numpy.float32 else f", dtype={self.dtype}"
        extra += "" if self.device == "cpu" else ", device='cuda'"
        if self.creator is not None:
            extra += f", grad_fn=<{self.creator.name}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.dtype}")
        if not requires_grad and self.creator is not None:
            raise RuntimeError("requires_grad can only be turned off on leaf tensors; use detach()")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward, as in PyTorch."""
        self._retain_grad = True
        return self

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
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item() if self.device == "cpu" else self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        """The same data with no history (shares memory and version counter)."""
        t = Tensor._wrap(self.data)
        t._vc = self._version_box()
        return t

    def to(self, target):
        """``to('cpu'|'cuda')`` moves; ``to(dtype)`` casts. Both are differentiable."""
        if target in ("cpu", "cuda"):
            return ops.to_device(self, target)
        return ops.astype(self, target)

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
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad and has no grad_fn; "
                               "make an input require grad (requires_grad=True) before computing it")
        if gradient is None:
            if self.size != 1:
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
    def __pos__(self): return self
    def __abs__(self): return ops.abs(self)
    def __getitem__(self, index): return ops.getitem(self, index)
    def __setitem__(self, index, value): ops.setitem_(self, index, value)
    def __iadd__(self, o): return ops.inplace_(self, o, "add")
    def __isub__(self, o): return ops.inplace_(self, o, "subtract")
    def __imul__(self, o): return ops.inplace_(self, o, "multiply")
    def __itruediv__(self, o): return ops.inplace_(self, o, "divide")
    def __lt__(self, o): return ops.compare(self, o, "less")
    def __le__(self, o): return ops.compare(self, o, "less_equal")
    def __gt__(self, o): return ops.compare(self, o, "greater")
    def __ge__(self, o): return ops.compare(self, o, "greater_equal")
    def __eq__(self, o): return ops.compare(self, o, "equal")
    def __ne__(self, o): return ops.compare(self, o, "not_equal")
    __hash__ = object.__hash__

    def __bool__(self):
        _host_sync("bool() (data-dependent Python control flow)")
        if self.size != 1:
            raise RuntimeError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self): return float(self.item())
    def __int__(self): return int(self.item())

    T = property(lambda self: ops.transpose(self))
    mT = property(lambda self: ops.swapaxes(self, -1, -2))

    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def abs(self): return ops.abs(self)
    def clamp(self, min=None, max=None): return ops.clamp(self, min, max)
    clip = clamp
    def matmul(self, o): return ops.matmul(self, o)
    def sum(self, axis=None, keepdims=False, **kw): return ops.sum(self, axis, keepdims, **kw)
    def mean(self, axis=None, keepdims=False, **kw): return ops.mean(self, axis, keepdims, **kw)
    def var(self, axis=None, keepdims=False, correction=1, **kw): return ops.var(self, axis, keepdims, correction, **kw)
    def std(self, axis=None, keepdims=False, correction=1, **kw): return ops.sqrt(ops.var(self, axis, keepdims, correction, **kw))
    def max(self, axis=None, keepdims=False, **kw): return ops.max(self, axis, keepdims, **kw)
    def min(self, axis=None, keepdims=False, **kw): return ops.min(self, axis, keepdims, **kw)
    def argmax(self, axis=None, keepdims=False): return ops.argmax(self, axis, keepdims)
    def argmin(self, axis=None, keepdims=False): return ops.argmin(self, axis, keepdims)
    def reshape(self, *shape): return ops.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    view = reshape
    def flatten(self, start_dim=0, end_dim=-1): return ops.flatten(self, start_dim, end_dim)
    def transpose(self, *axes): return ops.transpose(self, *axes)
    def permute(self, *axes): return ops.permute(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes)
    def squeeze(self, axis=None): return ops.squeeze(self, axis)
    def unsqueeze(self, axis): return ops.unsqueeze(self, axis)
    def broadcast_to(self, shape): return ops.broadcast_to(self, shape)
    def expand(self, *shape): return ops.broadcast_to(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    def sum_to(self, shape): return ops.sum_to(self, shape)
    def astype(self, dtype): return ops.astype(self, dtype)


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


class Function:
    """One recorded op. Subclasses define ``forward`` (arrays) and ``backward`` (Tensors)."""
    generation = 0
    inputs = None
    needs_input_grad = ()
    _saved = ()

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
        recorder = state._recorder
        if recorder is not None:
            constructed = dict(vars(self))  # set by __init__: must be equal in every step
            ys = self.forward(*arrays)
            recorder.on_function(self, arrays, ys, constructed)
        else:
            ys = self.forward(*arrays)
        record = False
        if state.grad_enabled:
            for x in inputs:
                if x.requires_grad:
                    record = True
                    break
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

    def _record(self, inputs, outputs):
        self.inputs = inputs
        self.needs_input_grad = tuple([x.requires_grad for x in inputs])
        generation = 0
        for x in inputs:
            if x.generation > generation:
                generation = x.generation
        self.generation = generation
        self.outputs = [weakref.ref(y) for y in outputs]
        for i, y in enumerate(outputs):
            y.creator = self
            y.generation = generation + 1
            if i:
                y._index = i
        if self._saved:
            self._saved = [self._resolve_saved(a, inputs, outputs) for a in self._saved]

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
        self.inputs = None
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
    assigned = set()  # arrays already handed to a leaf's .grad in this pass

    def deliver(x, gx):
        if gx.dtype != x.dtype:
            gx = gx.astype(x.dtype)
        if x.creator is not None:
            fn = x.creator
            slots = pending.get(fn)
            if slots is None:
                if fn.inputs is None:
                    raise _freed_error()
                slots = pending[fn] = [None] * len(fn.outputs)
                heapq.heappush(heap, (-fn.generation, next(counter), fn))
            prev = slots[x._index]
            slots[x._index] = gx if prev is None else prev + gx
        elif results is not None:
            if id(x) in results:
                prev = results[id(x)]
                results[id(x)] = gx if prev is None else prev + gx
        else:
            _accumulate_leaf(x, gx, create_graph, assigned)

    if create_graph and _state._recorder is not None:
        _state._recorder.on_create_graph()
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
                    ref = fn.outputs[i]()
                    if ref is not None and ref._retain_grad:
                        ref.grad = g if create_graph else g.detach()
                if targets is not None and (id(fn), i) in target_outputs:
                    tid = target_outputs[(id(fn), i)]
                    results[tid] = gys[i]
            if fn.inputs is None:
                raise _freed_error()
            gxs = fn.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, gx, need in zip(fn.inputs, gxs, fn.needs_input_grad):
                if not need or gx is None:
                    continue
                if gx.shape != x.shape:
                    raise RuntimeError(f"{fn.name}.backward returned a gradient of shape {gx.shape} "
                                       f"for an input of shape {x.shape}")
                deliver(x, gx)
            if not retain_graph:
                fn.release()
    return results


def _accumulate_leaf(x, gx, create_graph, assigned):
    if not x.requires_grad:
        return
    if create_graph and (gx.requires_grad or (x.grad is not None and x.grad.requires_grad)):
        x.grad = gx if x.grad is None else x.grad + gx
        return
    # a gradient without history gets its own buffer, whether or not create_graph was asked
    a = gx.data
    copy = False
    if x.grad is None:
        # .grad must be its own writable buffer (optimizers and clipping update it in
        # place), never a broadcast view or an array another leaf's .grad also uses
        owner = id(a if a.base is None else a.base)
        copy = owner in assigned or not getattr(a.flags, "writeable", True) or (a.size > 1 and 0 in a.strides)
        result = a.copy() if copy else a
        assigned.add(id(result) if copy else owner)
    else:
        result = x.grad.data + a
    x.grad = Tensor._wrap(result)
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
    gs = []
    for y, g in zip(outputs, grad_outputs):
        if not y.requires_grad:
            raise RuntimeError("grad(): an output does not require grad; nothing to differentiate")
        if g is None:
            if y.size != 1:
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
    return out[0] if single_in else tuple(out)


from gradflow import ops  # noqa: E402  (ops needs Tensor and Function defined first)
