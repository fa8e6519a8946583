"""Loss scaling: ``GradScaler``, PyTorch's ``torch.amp.GradScaler`` with the same API and numbers.

Low-precision gradients underflow; multiplying the loss by a large factor before ``backward``
keeps them representable, and dividing the gradients by it before the optimizer step undoes
it. The factor adapts: a step whose gradients hold an inf or NaN is skipped and the scale is
multiplied by ``backoff_factor``; ``growth_interval`` clean steps in a row multiply it by
``growth_factor``. The canonical loop, gradient clipping included::

    scaler = gradflow.amp.GradScaler("cuda")
    for x, y in data:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)                                 # optional: clip unscaled gradients
        gradflow.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)                                     # skipped when a gradient is inf/NaN
        scaler.update()

As in PyTorch the scale is a 0-d float32 array on the loss's device and the growth tracker a
0-d int32 one; unscaling checks and scales the gradients in place and ``update`` changes the
scale in place, both as device kernels (``kernels/amp.cu``, NumPy twins below), so neither
reads a value back to the host. ``step`` reads the found-inf flag on the host to decide
whether to call ``optimizer.step`` (a sync on the GPU, as in PyTorch's step).

Under ``gradflow.compile``: ``scale(loss)`` is a recorded multiply by the scale array itself,
so a replay reads the current scale; ``unscale_``, ``step`` and ``update`` are
``replay_as_call``, re-run as calls at every replay (skipped steps, back-off and growth stay
exact). In a GPU replay they are parts of the step's one CUDA graph (``GraphCall``s, see
"inside a CUDA graph" below): the optimizer's update kernels read the found-inf flag and skip
on the device, as PyTorch's capturable fused optimizers do; the host reads the flag once after
the launch, to take a skipped step's step-count advance back.
"""
import warnings
from collections import defaultdict
from enum import Enum

import numpy

from gradflow import backend
from gradflow.compile import GraphCall, replay_as_call
from gradflow.kernel import RawKernel
from gradflow.tensor import Tensor, no_grad

__all__ = ["GradScaler", "OptState"]

UNSCALE = RawKernel("amp.cu", "amp_unscale")
UPDATE_SCALE = RawKernel("amp.cu", "amp_update_scale")
UPDATE_SCALE_DEV = RawKernel("amp.cu", "amp_update_scale_dev")
_THREADS = 256


# ---- the two operations, each a device kernel with its NumPy twin -------------------------------------
def _unscale_np(g, found_inf, inv_scale):
    if not numpy.isfinite(g).all():
        found_inf[...] = 1.0
    if inv_scale != 1.0:  # as torch: the product in g's dtype (float32 * float32, float64 * widened float32)
        numpy.multiply(g, inv_scale, out=g)


def non_finite_check_and_unscale_(grads, found_inf, inv_scale):
    """``torch._amp_foreach_non_finite_check_and_unscale_``: each array of ``grads`` is multiplied by
    ``inv_scale`` in place, and ``found_inf`` (0-d float32) is set to 1 when any element of any of
    them was inf or NaN before. ``inv_scale`` is a 0-d float32 array on the grads' device."""
    for g in grads:
        if type(g) is numpy.ndarray:
            _unscale_np(g, found_inf, inv_scale)
        elif g.dtype in (numpy.float32, numpy.float64):
            _unscale_device(g, found_inf, inv_scale)
        else:  # float16 / bfloat16 on the GPU (the kernels are float32 and float64): CuPy's ufuncs, still no sync
            cp = backend.cupy()
            cp.maximum(found_inf, cp.logical_not(cp.isfinite(g).all()).astype(numpy.float32), out=found_inf)
            g[...] = (g.astype(numpy.float32) * inv_scale).astype(g.dtype)


def _unscale_device(g, found_inf, inv_scale):
    cp = backend.cupy()
    work = g if g.flags.c_contiguous else cp.ascontiguousarray(g)
    n = work.size
    if n:
        blocks = int(min((n + _THREADS - 1) // _THREADS, 4096))
        UNSCALE.function(work.dtype)((blocks,), (_THREADS,), (work, inv_scale, found_inf, numpy.int64(n)))
    if work is not g:
        g[...] = work


def _update_scale_np(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf[()] != 0:
        scale[...] = numpy.float64(scale[()]) * backoff_factor  # double product rounded to the scale's type
        growth_tracker[...] = 0
    else:
        successful = int(growth_tracker[()]) + 1
        if successful == growth_interval:
            grown = scale.dtype.type(numpy.float64(scale[()]) * growth_factor)
            if numpy.isfinite(grown):  # never grow past the type's range to inf
                scale[...] = grown
            growth_tracker[...] = 0
        else:
            growth_tracker[...] = successful


def update_scale_(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    """``torch._amp_update_scale_`` on 0-d arrays of one device: ``scale`` (float32) and
    ``growth_tracker`` (int32) are updated in place from ``found_inf`` (float32, nonzero: backoff)."""
    if type(scale) is numpy.ndarray:
        with numpy.errstate(over="ignore"):
            _update_scale_np(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval)
        return
    UPDATE_SCALE.function(scale.dtype)((1,), (1,), (scale, growth_tracker, found_inf, numpy.float64(growth_factor),
                                                    numpy.float64(backoff_factor), numpy.int64(growth_interval)))


def update_scale_dev_(scale, growth_tracker, found_inf, factors, growth_interval):
    """``update_scale_`` reading its hyperparameters from arrays on the scale's device: ``factors``
    (float64: growth_factor, backoff_factor) and ``growth_interval`` (0-d int64). A CUDA graph holding
    the launch uses whatever the host last wrote there (``GradScaler.update`` in a captured step)."""
    if type(scale) is numpy.ndarray:
        update_scale_(scale, growth_tracker, found_inf, float(factors[0]), float(factors[1]), int(growth_interval))
        return
    UPDATE_SCALE_DEV.function(scale.dtype)((1,), (1,), (scale, growth_tracker, found_inf, factors, growth_interval))


# ---- GradScaler ---------------------------------------------------------------------------------------
class OptState(Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _refresh_per_optimizer_state():
    return {"stage": OptState.READY, "found_inf_per_device": {}}


class _MultiDeviceReplicator:
    """A 0-d array and its copies on the other devices that ask for it (made once per device)."""

    def __init__(self, master):
        self.master = master
        self._per_device = {}  # only the devices asked for: they are the ones that held gradients

    def get(self, device):
        array = self._per_device.get(device)
        if array is None:
            master = self.master
            array = master if backend.device_of(master) == device else backend.to_device(master, device).copy()
            self._per_device[device] = array
        return array


class GradScaler:
    """``torch.amp.GradScaler``: dynamic loss scaling (see the module docstring for the loop).

    ``device`` is ``"cuda"`` (the default, as in PyTorch) or ``"cpu"``; with ``"cuda"`` and no
    usable GPU the scaler warns and disables itself, as PyTorch's does. ``enabled=False`` makes
    ``scale`` return its argument, ``step`` call ``optimizer.step`` and the rest no-ops.
    """

    def __init__(self, device="cuda", init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True):
        self._device = str(device)
        self._enabled = enabled
        if self._device == "cuda" and enabled and not backend.cuda_is_available():
            warnings.warn("gradflow.amp.GradScaler is enabled, but CUDA is not available.  Disabling.",
                          stacklevel=2)
            self._enabled = False
        if self._enabled:
            if growth_factor <= 1.0:
                raise AssertionError("The growth factor must be > 1.0.")
            if backoff_factor >= 1.0:
                raise AssertionError("The backoff factor must be < 1.0.")
            self._init_scale = init_scale
            self._scale = None            # 0-d float32 array, made on the device of the first scaled output
            self._growth_factor = growth_factor
            self._backoff_factor = backoff_factor
            self._growth_interval = growth_interval
            self._init_growth_tracker = 0
            self._growth_tracker = None   # 0-d int32 array, next to the scale
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    def __repr__(self):
        if not self._enabled:
            return f"GradScaler(device={self._device!r}, enabled=False)"
        return (f"GradScaler(device={self._device!r}, scale={self.get_scale()}, growth_factor={self._growth_factor}, "
                f"backoff_factor={self._backoff_factor}, growth_interval={self._growth_interval})")

    def _check_scale_growth_tracker(self, funcname):
        fix = "This may indicate your script did not use scaler.scale(loss or outputs) earlier in the iteration."
        if self._scale is None:
            raise AssertionError(f"Attempted {funcname} but _scale is None.  " + fix)
        if self._growth_tracker is None:
            raise AssertionError(f"Attempted {funcname} but _growth_tracker is None.  " + fix)
        return self._scale, self._growth_tracker

    def _lazy_init_scale_growth_tracker(self, device):
        if self._growth_tracker is not None:
            raise AssertionError("_growth_tracker initialized before _scale")
        xp = backend.cupy() if device == "cuda" else numpy
        self._scale = xp.full((), self._init_scale, dtype=numpy.float32)
        self._growth_tracker = xp.full((), self._init_growth_tracker, dtype=numpy.int32)

    # ---- scaling ----------------------------------------------------------------------------------
    def scale(self, outputs):
        """``outputs`` (a Tensor, or a list/tuple/iterable of them, nested) times the current scale.

        The product is an ordinary op on the scale array, so gradients flow through it and a
        compiled step reads the scale's current value at every replay.
        """
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            if self._scale is None:
                self._lazy_init_scale_growth_tracker(outputs.device)
            return outputs * Tensor._wrap(self._on(outputs.device))
        stash = []

        def apply_scale(val):
            if isinstance(val, Tensor):
                if not stash:
                    if self._scale is None:
                        self._lazy_init_scale_growth_tracker(val.device)
                    stash.append(_MultiDeviceReplicator(self._scale))
                return val * Tensor._wrap(stash[0].get(val.device))
            if isinstance(val, (list, tuple)):
                return type(val)(map(apply_scale, val))
            if hasattr(val, "__iter__") and not isinstance(val, (str, bytes, dict)):
                return map(apply_scale, val)
            raise ValueError("outputs must be a Tensor or an iterable of Tensors")

        return apply_scale(outputs)

    def _on(self, device):
        scale = self._scale
        return scale if backend.device_of(scale) == device else backend.to_device(scale, device)

    # ---- unscaling and the step -------------------------------------------------------------------
    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        per_device_inv_scale = _MultiDeviceReplicator(inv_scale)
        per_device_found_inf = _MultiDeviceReplicator(found_inf)
        per_device_and_dtype = defaultdict(lambda: defaultdict(list))
        grads = []
        with no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if not isinstance(param, Tensor):
                        raise AssertionError(f"expected param to be Tensor, got {type(param).__name__}")
                    if param.grad is None:
                        continue
                    if not allow_fp16 and param.grad.dtype == numpy.float16:
                        raise ValueError("Attempting to unscale FP16 gradients.")
                    grads.append(param.grad)
                    array = param.grad.data
                    per_device_and_dtype[backend.device_of(array)][array.dtype].append(array)
            for device, per_dtype in per_device_and_dtype.items():
                found = per_device_found_inf.get(device)
                inv = per_device_inv_scale.get(device)
                for arrays in per_dtype.values():
                    non_finite_check_and_unscale_(_merge_flat(optimizer, arrays), found, inv)
        for g in grads:
            g._bump_version()
        return per_device_found_inf._per_device

    # in place on .grad, state kept in Python: a compiled step re-runs it as a call, or on the GPU
    # puts its kernels in the step's CUDA graph (see "inside a CUDA graph" below)
    @replay_as_call(graph=lambda self, optimizer: self._graph_unscale(optimizer))
    def unscale_(self, optimizer):
        """Divide ("unscale") ``optimizer``'s gradients by the scale, in place, and note whether any
        is inf/NaN. Optional (``step`` does it), once per optimizer per ``update``; use it to clip
        or inspect unscaled gradients before ``step``."""
        if not self._enabled:
            return
        self._check_scale_growth_tracker("unscale_")
        optimizer_state = self._per_optimizer_states[id(optimizer)]
        if optimizer_state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if optimizer_state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        xp = backend.xp_of(self._scale)
        # the reciprocal in float64, then float32, as torch (float32 division can be imprecise)
        inv_scale = xp.empty((), dtype=numpy.float32)
        inv_scale[...] = xp.reciprocal(self._scale.astype(numpy.float64))
        found_inf = xp.zeros((), dtype=numpy.float32)
        optimizer_state["found_inf_per_device"] = self._unscale_grads_(optimizer, inv_scale, found_inf, False)
        optimizer_state["stage"] = OptState.UNSCALED

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        retval = None
        if not sum(float(v) for v in optimizer_state["found_inf_per_device"].values()):  # the host read
            retval = optimizer.step(*args, **kwargs)
        return retval

    @replay_as_call(graph=lambda self, optimizer, *args, **kwargs: self._graph_step(optimizer, *args, **kwargs))
    def step(self, optimizer, *args, **kwargs):
        """``unscale_(optimizer)`` unless already done, then ``optimizer.step(*args, **kwargs)`` unless a
        gradient was inf/NaN (then the step is skipped). Returns what ``optimizer.step`` returned, or None."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scale_growth_tracker("step")
        optimizer_state = self._per_optimizer_states[id(optimizer)]
        if optimizer_state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if optimizer_state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        if len(optimizer_state["found_inf_per_device"]) == 0:
            raise AssertionError("No inf checks were recorded for this optimizer.")
        retval = self._maybe_opt_step(optimizer, optimizer_state, *args, **kwargs)
        optimizer_state["stage"] = OptState.STEPPED
        return retval

    @replay_as_call(graph=lambda self, new_scale=None: self._graph_update(new_scale))
    def update(self, new_scale=None):
        """Update the scale: back off if any optimizer step this iteration was skipped, grow after
        ``growth_interval`` clean steps in a row; or set it to ``new_scale`` (a float or a 1-element
        Tensor on the scaler's device that does not require grad). Call it once per iteration, after
        every ``step``."""
        if not self._enabled:
            return
        _scale, _growth_tracker = self._check_scale_growth_tracker("update")
        if new_scale is not None:
            if isinstance(new_scale, float):
                _scale[...] = new_scale
            else:
                reason = ("new_scale should be a float or a 1-element gradflow Tensor with requires_grad=False "
                          "on the scaler's device.")
                if not isinstance(new_scale, Tensor) or new_scale.device != self._device:
                    raise AssertionError(reason)
                if new_scale.data.size != 1:
                    raise AssertionError(reason)
                if new_scale.requires_grad:
                    raise AssertionError(reason)
                _scale[...] = backend.to_device(new_scale.data, backend.device_of(_scale)).reshape(())
        else:
            device = backend.device_of(_scale)
            found_infs = [f if backend.device_of(f) == device else backend.to_device(f, device)
                          for state in self._per_optimizer_states.values()
                          for f in state["found_inf_per_device"].values()]
            if len(found_infs) == 0:
                raise AssertionError("No inf checks were recorded prior to update.")
            found_inf_combined = found_infs[0]
            for f in found_infs[1:]:
                found_inf_combined += f
            update_scale_(_scale, _growth_tracker, found_inf_combined, self._growth_factor, self._backoff_factor,
                          self._growth_interval)
        self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    # ---- getters and setters ----------------------------------------------------------------------
    def _get_scale_async(self):
        """The scale as a 0-d Tensor on its device (no host read), or None before the first ``scale``."""
        return None if self._scale is None else Tensor._wrap(self._scale)

    def get_scale(self):
        """The current scale as a Python float (1.0 when disabled); a host read of the scale."""
        if self._enabled:
            return self._init_scale if self._scale is None else float(self._scale)
        return 1.0

    def get_growth_factor(self):
        return self._growth_factor

    def set_growth_factor(self, new_factor):
        self._growth_factor = new_factor

    def get_backoff_factor(self):
        return self._backoff_factor

    def set_backoff_factor(self, new_factor):
        self._backoff_factor = new_factor

    def get_growth_interval(self):
        return self._growth_interval

    def set_growth_interval(self, new_interval):
        self._growth_interval = new_interval

    def _get_growth_tracker(self):
        if self._enabled:
            return self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker)
        return 0

    def is_enabled(self):
        return self._enabled

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self):
        """``scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval`` and ``_growth_tracker``
        as Python numbers (PyTorch's keys); ``{}`` when disabled. Take it after ``update``."""
        if self._enabled:
            return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                    "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                    "_growth_tracker": self._get_growth_tracker()}
        return {}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict`` returned (a no-op when disabled). The scale and tracker arrays
        are filled in place, so a compiled step that reads them keeps replaying."""
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        missing = sorted({"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} -
                         state_dict.keys())
        if missing:
            raise KeyError(f"GradScaler.load_state_dict: the state dict lacks {missing} (as GradScaler.state_dict() "
                           f"returns them)")
        self._init_scale = float(state_dict["scale"])
        if self._scale is not None:
            self._scale[...] = state_dict["scale"]
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._growth_tracker is not None:
            self._growth_tracker[...] = state_dict["_growth_tracker"]

    def __getstate__(self):
        state = self.__dict__.copy()
        if self._enabled:
            if len(self._per_optimizer_states) != 0:
                raise AssertionError("A GradScaler instance may only be pickled at the beginning "
                                     "of an iteration, or at the end after scaler.update().")
            state["_init_scale"] = self.get_scale()
            state["_init_growth_tracker"] = self._get_growth_tracker()
            state["_scale"] = None
            state["_growth_tracker"] = None
            state["_graph"] = None
            state["_per_optimizer_states"] = None  # a defaultdict of a module function: rebuilt below
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._enabled:
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    # ---- inside a CUDA graph -----------------------------------------------------------------------
    # The one-launch GPU replay of a compiled step (gradflow.compile.GraphCall): unscale_, step and
    # update put their kernels in the step's graph. Each optimizer gets one found-inf flag in device
    # memory (_GraphBuffers), zeroed and set by the unscale kernels in the graph; the optimizer's update
    # kernels read it and skip on the device when it is set (Optimizer._graph_step(found_inf=...), as
    # PyTorch's capturable fused optimizers take found_inf), and the scale update reads it. Before
    # each launch the host part ("commit") walks the same READY/UNSCALED/STEPPED states as the eager
    # calls (anything else, e.g. unscale_ called outside the step, runs that replay eagerly, which
    # raises as eager does) and folds the optimizer's hyperparameters, advancing its step counts. After
    # the launch step's epilogue reads the flag (the one host sync, as PyTorch's step's
    # found_inf.item()) and for a skipped step takes the step-count advance back, so the next step's
    # bias corrections use the right count.
    def _graph_buffers(self):
        buffers = getattr(self, "_graph", None)
        if buffers is None or buffers.scale is not self._scale:
            buffers = self._graph = _GraphBuffers(self._scale)
        return buffers

    def _graph_grads(self, optimizer):
        """(parameters, the arrays to unscale) when every parameter of ``optimizer`` has its own float32/64
        gradient buffer on the scale's device (where a graph delivers its gradient), else None."""
        if self._scale is None:
            return None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        buffers = [getattr(p, "_grad_buffer", None) for p in params]
        xp = backend.xp_of(self._scale)
        if not params or any(b is None or type(b) is not xp.ndarray or b.dtype not in (numpy.float32, numpy.float64)
                             or backend.device_of(b) != backend.device_of(self._scale) for b in buffers):
            return None
        return params, buffers, _merge_flat(optimizer, buffers)

    def _graph_unscale_parts(self, params, buffers, arrays, flag):
        """check, device, epilogue and warm of unscaling ``arrays`` into ``flag`` inside a graph."""
        scale, inv_scale = self._scale, self._graph_buffers().inv_scale
        xp = backend.xp_of(scale)

        def check():
            return self._scale is scale and all(p._grad_buffer is b for p, b in zip(params, buffers))

        def device(arrays=arrays, found_inf=flag, inv=inv_scale):  # unscale_'s work, on the graph's buffers
            found_inf.fill(0)
            inv[...] = xp.reciprocal(scale.astype(numpy.float64))
            non_finite_check_and_unscale_(arrays, found_inf, inv)

        def epilogue():
            for p in params:
                p.grad._bump_version()

        def warm():
            device([a.copy() for a in arrays], flag.copy(), inv_scale.copy())

        return check, device, epilogue, warm

    def _graph_stage(self, optimizer, flag, stage):
        """The host part of a graphed unscale_ (``stage`` UNSCALED) or step (STEPPED) on the scaler's
        per-optimizer states: an undo, or None where the eager call would raise or find another flag."""
        saved = self._per_optimizer_states
        state = saved.get(id(optimizer))
        if state is not None and state["stage"] is OptState.STEPPED:
            return None
        if state is not None and state["stage"] is OptState.UNSCALED:
            found = list(state["found_inf_per_device"].values())
            if stage is OptState.UNSCALED or len(found) != 1 or found[0] is not flag:
                return None
        states = defaultdict(_refresh_per_optimizer_state,
                             {k: {"stage": v["stage"], "found_inf_per_device": dict(v["found_inf_per_device"])}
                              for k, v in saved.items()})
        states[id(optimizer)] = {"stage": stage, "found_inf_per_device": {backend.device_of(self._scale): flag}}
        self._per_optimizer_states = states

        def undo():
            self._per_optimizer_states = saved
        return undo

    def _graph_unscale(self, optimizer):
        """``unscale_(optimizer)`` inside a CUDA graph (see above), or None where it stays a call."""
        if not self._enabled:
            return GraphCall(host=_nothing)
        grads = self._graph_grads(optimizer)
        if grads is None:
            return None
        flag = self._graph_buffers().flag(optimizer)
        check, device, epilogue, warm = self._graph_unscale_parts(*grads, flag)
        return GraphCall(grads=grads[0], check=check, device=device, epilogue=epilogue, warm=warm,
                         commit=lambda: self._graph_stage(optimizer, flag, OptState.UNSCALED))

    def _graph_step(self, optimizer, *args, **kwargs):
        """``step(optimizer)`` inside a CUDA graph (see above), or None where it stays a call: unscaling
        first when ``unscale_`` was not called, then the optimizer's update kernels with the found-inf
        flag, which skip on the device when it is set."""
        if not self._enabled:
            hook = getattr(optimizer.step, "_graph_call", None)
            return None if hook is None else hook(optimizer, *args, **kwargs)
        graph_step = getattr(optimizer, "_graph_step", None)
        grads = self._graph_grads(optimizer)
        if args or kwargs or graph_step is None or grads is None:
            return None  # a closure raises in eager; other arguments: the optimizer's own step
        flag = self._graph_buffers().flag(optimizer)
        inner = graph_step(found_inf=flag)
        if inner is None:
            return None
        check_unscale, unscale, bump_grads, warm_unscale = self._graph_unscale_parts(*grads, flag)
        fixed = {}        # "unscales": whether this step unscales (no unscale_ before it), fixed by the capture
        committed = []    # the optimizer commit's undo, taken back after the launch when the step was skipped

        def check():
            return check_unscale() and (inner.check is None or inner.check())

        def commit():
            state = self._per_optimizer_states.get(id(optimizer))
            unscales = state is None or state["stage"] is OptState.READY
            if fixed.get("captured") and fixed["unscales"] != unscales:
                return None
            undo_stage = self._graph_stage(optimizer, flag, OptState.STEPPED)
            if undo_stage is None:
                return None
            undo_step = inner.commit()
            if undo_step is None:
                undo_stage()
                return None
            committed[:] = [undo_step]
            if not fixed.get("captured"):
                fixed["unscales"] = unscales

            def undo():
                undo_step()
                undo_stage()
            return undo

        def device():
            fixed["captured"] = True
            if fixed["unscales"]:
                unscale()
            inner.device()

        def epilogue():
            if fixed["unscales"]:
                bump_grads()
            undo_step = committed.pop()
            if float(flag):  # the host read of a skipped step (PyTorch's step reads found_inf too)
                undo_step()  # as if optimizer.step had not been called: step counts, first-step flags
            elif inner.epilogue is not None:
                inner.epilogue()

        def warm():
            if fixed["unscales"]:
                warm_unscale()
            if inner.warm is not None:
                inner.warm()

        return GraphCall(grads=inner.grads, check=check, commit=commit, device=device, epilogue=epilogue, warm=warm)

    def _graph_update(self, new_scale=None):
        """``update()`` inside a CUDA graph (see above), or None where it stays a call (``new_scale``)."""
        if not self._enabled:
            return GraphCall(host=_nothing)
        if new_scale is not None or self._scale is None:
            return None
        scale, tracker, buffers = self._scale, self._growth_tracker, self._graph_buffers()
        fixed = {}  # "flags": the found-inf flags the update combines, fixed by the capture; "sum"

        def check():
            return self._scale is scale and self._growth_tracker is tracker

        def commit():
            flags = [f for state in self._per_optimizer_states.values() for f in state["found_inf_per_device"].values()]
            if not flags or not all(any(f is g for g in buffers.found_inf.values()) for f in flags):
                return None  # none (eager raises), or one from an eager unscale_: its array is new each step
            if fixed.get("captured"):
                held = fixed["flags"]
                if len(held) != len(flags) or any(a is not b for a, b in zip(held, flags)):
                    return None
            else:
                fixed["flags"] = flags
            if len(flags) > 1 and "sum" not in fixed:
                fixed["sum"] = backend.xp_of(scale).zeros((), numpy.float32)
            buffers.upload(self._growth_factor, self._backoff_factor, self._growth_interval)
            saved = self._per_optimizer_states
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

            def undo():
                self._per_optimizer_states = saved
            return undo

        def device(scale=scale, tracker=tracker, captured=True):
            fixed["captured"] = captured
            flags = fixed["flags"]
            found_inf = flags[0]
            if len(flags) > 1:  # as update: the flags summed (into a buffer of the graph's)
                found_inf = fixed["sum"]
                found_inf[...] = flags[0]
                for f in flags[1:]:
                    found_inf += f
            update_scale_dev_(scale, tracker, found_inf, buffers.factors, buffers.interval)

        def warm():
            device(scale.copy(), tracker.copy(), False)

        return GraphCall(check=check, commit=commit, device=device, warm=warm)

    def _check_inf_per_device(self, optimizer):
        _scale, _ = self._check_scale_growth_tracker("_check_inf_per_device")
        xp = backend.xp_of(_scale)
        dummy_inv_scale = xp.full((), 1.0, dtype=numpy.float32)
        found_inf = xp.zeros((), dtype=numpy.float32)
        self._per_optimizer_states[id(optimizer)]["found_inf_per_device"] = \
            self._unscale_grads_(optimizer, dummy_inv_scale, found_inf, True)
        return self._per_optimizer_states[id(optimizer)]["found_inf_per_device"]

    def _found_inf_per_device(self, optimizer):
        return self._per_optimizer_states[id(optimizer)]["found_inf_per_device"]


def _nothing():
    """The host part of a disabled scaler's call in a CUDA graph: nothing to do."""


class _GraphBuffers:
    """Device memory a scaler's calls share inside CUDA graphs: one found-inf flag per optimizer, the
    inverse scale, and the update's hyperparameters (rewritten by the host before a launch when changed)."""

    def __init__(self, scale):
        xp = backend.xp_of(scale)
        self.scale = scale
        self.inv_scale = xp.ones((), numpy.float32)
        self.found_inf = {}  # id(optimizer) -> 0-d float32 flag
        self.factors = xp.zeros(2, numpy.float64)   # growth_factor, backoff_factor
        self.interval = xp.zeros((), numpy.int64)   # growth_interval
        self.uploaded = None

    def flag(self, optimizer):
        flag = self.found_inf.get(id(optimizer))
        if flag is None:
            flag = self.found_inf[id(optimizer)] = backend.xp_of(self.scale).zeros((), numpy.float32)
        return flag

    def upload(self, growth_factor, backoff_factor, growth_interval):
        values = (float(growth_factor), float(backoff_factor), int(growth_interval))
        if values != self.uploaded:
            self.factors[0], self.factors[1] = values[0], values[1]
            self.interval[...] = values[2]
            self.uploaded = values


def _merge_flat(optimizer, arrays):
    """``arrays`` with every complete group of an optimizer's flat gradient views replaced by the
    group's one flat buffer (one launch instead of one per parameter; elementwise, so the same result)."""
    flat = getattr(optimizer, "_flat", None)
    if not flat or len(arrays) < 2:
        return arrays
    ids = {id(a): k for k, a in enumerate(arrays)}
    merged, used = [], set()
    for layout in flat.values():
        views = layout.grad_views
        if len(views) > 1 and all(id(v) in ids for v in views) and layout.grad_flat.dtype == views[0].dtype:
            merged.append(layout.grad_flat)
            used.update(ids[id(v)] for v in views)
    return merged + [a for k, a in enumerate(arrays) if k not in used] if merged else arrays


class _DeprecatedCudaGradScaler(GradScaler):
    """``gradflow.cuda.amp.GradScaler(...)``: PyTorch's deprecated spelling of
    ``gradflow.amp.GradScaler("cuda", ...)`` (a FutureWarning, as there)."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        warnings.warn("`gradflow.cuda.amp.GradScaler(args...)` is deprecated. "
                      "Please use `gradflow.amp.GradScaler('cuda', args...)` instead.", FutureWarning, stacklevel=2)
        super().__init__("cuda", init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor,
                         growth_interval=growth_interval, enabled=enabled)


class _CudaAmp:
    """``gradflow.cuda.amp``: holds the deprecated ``GradScaler`` spelling (see ``gradflow/__init__.py``)."""
    GradScaler = _DeprecatedCudaGradScaler
    OptState = OptState


cuda_namespace = _CudaAmp()
