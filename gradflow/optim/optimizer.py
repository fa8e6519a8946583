"""``Optimizer``: parameter groups, per-parameter state and a two-phase ``step``.

``step`` first checks everything that could make an update fail (hyperparameters of every
group, each gradient's shape/dtype/device, the shapes of loaded state) and allocates any
new state, and only then updates parameters, so an error never leaves some parameters
updated and others not. Updates are in-place fused kernels from ``gradflow.optim.fused``.
``step`` and ``zero_grad`` are ``replay_as_call``: a ``gradflow.compile``-d training step
re-runs them as calls, so step counts and schedules stay exact under replay.

Optimizers whose update is elementwise (``flat = True``: every built-in one) keep each
group's parameters as views of one flat buffer (``fused.flat_buffer``), with gradients and
state in flat buffers of the same layout, and update the whole group with one fused call
(the multi-tensor path: one kernel launch per group on the GPU, one pass of NumPy ufuncs on
the CPU). The rule is elementwise, so the result is bit for bit the per-parameter one. The
layout is made when a group is added and remade if something replaces a parameter's array
(``Module.to``) or loads new state; a group whose parameters differ in dtype or device,
lack a gradient, or disagree in step counts takes the per-parameter path for that step.
``p._grad_buffer`` is each parameter's own view of the flat gradient: a compiled step
delivers gradients straight into it; eager gradients are copied in before the update.
Once a step finds every gradient already there and everything else as the previous step
left it, ``_SteadyStep`` skips the per-parameter checks (a replayed step's optimizer cost is
then the fused update and a few identity tests).

``state_dict()`` follows PyTorch's layout: ``{'state': {index: {...}}, 'param_groups':
[{..., 'params': [index, ...]}]}`` with parameters numbered in group order.
"""
import copy
import functools
import math
import operator
from itertools import repeat

import numpy

from gradflow import backend
from gradflow.compile import GraphCall, replay_as_call
from gradflow.optim import fused
from gradflow.nn.utils import zero_grads
from gradflow.tensor import Tensor, _active_recorder, enable_grad


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _fmt(value):
    return f"{value!r}"


def _views(buffer, shapes, orders):
    views, start = [], 0
    for shape, order in zip(shapes, orders):
        size = 1
        for n in shape:
            size *= n
        views.append(buffer[start:start + size].reshape(shape, order=order))
        start += size
    return views


class _ParamGroup(dict):
    """A parameter group: a plain dict to the user, which counts its writes (``version``, read by
    ``_SteadyStep``) and tells ``gradflow.compile`` when a step it records writes to it
    (``group['lr'] = ...`` or ``group.update(...)`` inside the step). The write is replayed with
    the recorded value; a value that differs between recordings makes the step run eagerly,
    where a replay would otherwise silently keep the first one."""

    version = 0  # a class default: unpickling sets items before the instance's attributes

    def __setitem__(self, key, value):
        recorder = _active_recorder()
        if recorder is not None:
            recorder.on_group_write(self, key, value)
        self.version += 1
        dict.__setitem__(self, key, value)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other):
        self.update(other)
        return self

    def __delitem__(self, key):
        self.version += 1
        dict.__delitem__(self, key)

    def pop(self, *args):
        self.version += 1
        return dict.pop(self, *args)

    def popitem(self):
        self.version += 1
        return dict.popitem(self)

    def clear(self):
        self.version += 1
        dict.clear(self)


class _FlatGroup:
    """One group's parameters, gradients and state as views of flat buffers of one layout."""

    def __init__(self, params):
        self.params = params
        self.orders = [fused.memory_order(p.data) for p in params]  # every buffer of the group keeps these
        self.param_flat, self.param_views = fused.flat_buffer([p.data for p in params], orders=self.orders)
        for p, view in zip(params, self.param_views):
            p.data = view
        self.grad_flat = backend.xp_of(self.param_flat).zeros_like(self.param_flat)
        self.grad_views = _views(self.grad_flat, [p.shape for p in params], self.orders)
        for p, view in zip(params, self.grad_views):
            p._grad_buffer = view  # the parameter's own gradient buffer (gradflow.compile delivers into it)
        self.state = {}            # key -> (flat buffer, views)

    @staticmethod
    def possible(params):
        first = params[0].data
        return first.dtype.kind == "f" and all(
            type(p.data) is type(first) and p.dtype == first.dtype and p.device == params[0].device for p in params)

    def holds(self, params):
        """Whether ``params`` (this step's, in order) are still the views of this layout."""
        if len(params) != len(self.params):
            return False
        for p, q, view in zip(params, self.params, self.param_views):
            if p is not q or p.data is not view:
                return False
        return True

    def ready(self, state):
        """Whether every parameter, its gradient and its state are this layout's views (the
        steady state of a replayed step), so they cannot be of the wrong shape, dtype or device."""
        for k, p in enumerate(self.params):
            grad = p.grad
            if grad is None or grad.data is not self.grad_views[k]:
                return False
        return self.steady(state)

    def steady(self, state):
        """``ready`` but for the gradients: parameters and state are this layout's views (a pure test)."""
        held = self.state
        for k, p in enumerate(self.params):
            if p.data is not self.param_views[k]:
                return False
            s = state.get(p)
            if s is None:
                return False
            for key, value in s.items():
                if isinstance(value, Tensor) and (key not in held or value.data is not held[key][1][k]):
                    return False
        return True

    def load(self, state):
        """Copy loaded state (``state``: parameter -> dict) into this layout's flat buffers, in place.

        Each key this layout holds that every parameter's loaded state has, as a Tensor of the
        parameter's shape, dtype and array type, is copied into the existing views, and the
        state then holds those views. The buffers thus stay the ones a compiled step's plan (and
        on the GPU its CUDA graph) captured, so it keeps replaying after ``load_state_dict``.
        Keys that do not fit are left to ``state_for``, which lays them out anew.
        """
        for key, (_, views) in self.state.items():
            values = [state.get(p, {}).get(key) for p in self.params]
            if all(isinstance(v, Tensor) and v.shape == view.shape and v.dtype == view.dtype and
                   type(v.data) is type(view) for v, view in zip(values, views)):
                for p, value, view in zip(self.params, values, views):
                    view[...] = value.data
                    state[p][key] = Tensor._wrap(view)

    def gather_grads(self):
        for p, view in zip(self.params, self.grad_views):
            g = p.grad.data
            if g is not view:
                view[...] = g

    def state_for(self, states):
        """The group's state as one dict of flat Tensors, or None when the parameters' states disagree."""
        first = states[0]
        flat = {}
        for key, value in first.items():
            if isinstance(value, Tensor):
                held = self.state.get(key)
                if held is None or any(s.get(key) is None or s[key].data is not v for s, v in zip(states, held[1])):
                    for s, p in zip(states, self.params):
                        v = s.get(key)
                        if not isinstance(v, Tensor) or v.shape != p.shape or v.dtype != p.dtype or \
                                type(v.data) is not type(p.data):
                            return None
                    if held is not None:  # keep the buffer (a captured step holds it): copy the new state in
                        for s, view in zip(states, held[1]):
                            if s[key].data is not view:
                                view[...] = s[key].data
                                s[key].data = view
                    else:
                        buffer, views = fused.flat_buffer([s[key].data for s in states], orders=self.orders)
                        for s, view in zip(states, views):
                            s[key].data = view
                        held = self.state[key] = (buffer, views)
                flat[key] = Tensor._wrap(held[0])
            else:
                for s in states[1:]:
                    if key not in s or isinstance(s[key], Tensor) or s[key] != value:
                        return None
                flat[key] = value
        for s in states[1:]:
            if s.keys() != first.keys():
                return None
        return flat


class _SteadyStep:
    """``step()`` in the steady state of a training loop: the same groups, parameters, arrays and
    state as the previous step, every group flat, its gradients already in the layout's gradient
    views (where a replayed ``gradflow.compile`` step delivers them).

    The full step re-establishes each time what a loop that only computes gradients and steps
    cannot change: it validates every gradient and state entry, rebuilds the flat state dict
    and checks the layout. On the 784-128-32-10 MLP that bookkeeping cost, inside a replayed
    training step, 18-40 us against 39 us for the fused SGD update itself. Built after a full step, this
    object keeps what that step established; ``run`` first verifies that each of those objects
    is still the one in place (identity tests and key counts, nothing a user could have
    replaced is trusted), then makes the same fused ``_update`` call per group on the flat
    buffers (or calls the optimizer's ``_prepared_update`` of it, bound at build and bound again
    when the group is written to: no checks or dispatch left per step) and copies the new scalar state (step counts) to every parameter's state, as
    ``_flat_update`` does. A group written to since (``_ParamGroup.version``: an LR schedule,
    a changed momentum) has its hyperparameters validated and ``_init_state`` re-run for its
    parameters, as in the full step. Anything else different and ``run`` returns False having
    changed nothing, so the full step runs (and builds a new one).
    """

    class _Group:
        __slots__ = ("group", "version", "params", "states", "whole", "flat_state", "scalars", "update", "ids",
                     "rest", "expected", "tensor_states", "tensor_keys", "scalar_states", "scalar_keys",
                     "scalar_values", "held")

    @classmethod
    def build(cls, opt, work):
        """The steady step after the full step that ran ``work`` (``Optimizer._prepare``), or None."""
        if len(work) != len(opt.param_groups) or any(ready is None for _, _, ready in work):
            return None  # eager gradients (arrays of their own): every eager step ends here
        self = cls()
        self.opt, self.state, self.groups = opt, opt.state, []
        for group, params, ready in work:
            if not params or len(params) != len(group["params"]):
                return None
            states = [opt.state[p] for p in params]
            flat_state = ready.state_for(states)
            if flat_state is None or not ready.ready(opt.state):
                return None
            entry = cls._Group()
            entry.group, entry.version, entry.params, entry.states = group, group.version, list(params), states
            entry.flat_state = flat_state
            entry.whole = Tensor._wrap(ready.param_flat)
            entry.whole._grad = Tensor._wrap(ready.grad_flat)
            entry.scalars = tuple(k for k, v in flat_state.items() if not isinstance(v, Tensor))
            entry.update = opt._prepared_update(entry.whole, flat_state, group)
            # what run() verifies, as flat lists compared in one go: the objects in place now by id (each
            # is held here, so no other object can take its id), then each state's entry count, its
            # Tensor entries (by id, and their arrays') and its plain values
            entry.ids = [id(x) for x in (*params, *(p.data for p in params), *ready.grad_views, *states)]
            tensors = [k for k, v in flat_state.items() if isinstance(v, Tensor)]
            entry.tensor_states = [s for _ in tensors for s in states]
            entry.tensor_keys = [k for k in tensors for _ in states]
            held = [s[k] for s, k in zip(entry.tensor_states, entry.tensor_keys)]
            entry.rest = [*(len(s) for s in states), *(id(x) for x in (*held, *(t.data for t in held)))]
            entry.expected = entry.ids + entry.rest
            entry.scalar_states = [s for _ in entry.scalars for s in states]
            entry.scalar_keys = [k for k in entry.scalars for _ in states]
            entry.scalar_values = [flat_state[k] for k in entry.scalar_keys]
            entry.held = (held, [p.data for p in params], list(ready.grad_views))
            self.groups.append(entry)
        # a parameter keeps its version counter for life (views share their base's): bump the boxes
        self.versions = [p._version_box() for entry in self.groups for p in entry.params]
        return self

    def run(self):
        """The step, when nothing but values changed since the full step: True; else False, having
        changed nothing (a group's new hyperparameters may have created missing state, as
        ``_prepare`` would)."""
        opt = self.opt
        state, groups = opt.state, opt.param_groups
        if state is not self.state or len(groups) != len(self.groups):
            return False
        for gi, entry in enumerate(self.groups):
            group = entry.group
            if groups[gi] is not group:
                return False
            fresh = group.version != entry.version
            if fresh:
                opt._check_group(group, f"param_groups[{gi}]")
            params = group["params"]
            try:  # a gradient set to None, a state entry deleted by hand: None has no .data
                now = [*map(id, params), *map(id, map(_DATA, params)), *map(id, map(_GRAD_DATA, params)),
                       *map(id, map(state.get, params))]
                if fresh:  # the objects first: then _init_state may add entries (the counts below differ)
                    if now != entry.ids:
                        return False
                    for p, s in zip(params, entry.states):
                        opt._init_state(p, s, group)
                    now = []
                held = list(map(dict.get, entry.tensor_states, entry.tensor_keys))
                now += [*map(len, entry.states), *map(id, held), *map(id, map(_DATA, held))]
            except AttributeError:
                return False
            if now != (entry.rest if fresh else entry.expected):  # one list compared: a step's checks, all at once
                return False
            if entry.scalar_keys and list(map(dict.get, entry.scalar_states, entry.scalar_keys,
                                              repeat(_MISSING))) != entry.scalar_values:
                return False
            if fresh:
                entry.update = opt._prepared_update(entry.whole, entry.flat_state, group)
            entry.version = group.version
        for entry in self.groups:
            flat_state = entry.flat_state
            n = len(flat_state)
            if entry.update is not None:
                entry.update()
            else:
                opt._update(entry.whole, flat_state, entry.group)
            if len(flat_state) != n:  # the update added or dropped state: per parameter as _flat_update does
                opt._propagate(entry.states, flat_state)
                opt._steady = None
                continue
            if entry.scalars:
                for key in entry.scalars:
                    value = flat_state[key]
                    for s in entry.states:
                        s[key] = value
                entry.scalar_values = [flat_state[k] for k in entry.scalar_keys]
        for box in self.versions:  # p._bump_version() of every parameter
            box[0] += 1
        return True


_DATA = operator.attrgetter("data")
_GRAD_DATA = operator.attrgetter("_grad.data")
_MISSING = object()  # dict.get's default in _SteadyStep.run: a missing entry equals no value


def _device_scalars(calls):
    """Device buffers for the hyperparameters of deferred update ``calls`` (``fused.deferred``).

    Returns the launches ``[(update, arrays before, 0-d device scalars, arrays after, host
    views)]`` and ``upload()``, which copies every host view to its device scalar in one
    host-to-device copy: all scalars are views of one byte buffer on each side, each in its
    kernel parameter's dtype (T, or int32 for flags).
    """
    layout, offset = [], 0
    for update, args in calls:
        before, scalars, after = update.split(args)
        dtypes = [before[0].dtype if p.placeholder else p.type for p in update.scalars]
        spots = []
        for dtype in dtypes:
            size = numpy.dtype(dtype).itemsize
            offset = (offset + 7) // 8 * 8
            spots.append((offset, numpy.dtype(dtype)))
            offset += size
        layout.append((update, before, after, spots))
    xp = backend.xp_of(calls[0][1][0])
    host = numpy.zeros(max(offset, 8), numpy.uint8)
    device = xp.zeros(host.size, numpy.uint8)
    launches = []
    for update, before, after, spots in layout:
        views = [host[o:o + d.itemsize].view(d).reshape(()) for o, d in spots]
        scalars = [device[o:o + d.itemsize].view(d).reshape(()) for o, d in spots]
        launches.append((update, tuple(before), scalars, tuple(after), views))
    if type(device) is numpy.ndarray:
        upload = functools.partial(numpy.copyto, device, host)
    else:
        upload = functools.partial(device.set, host)
    return launches, upload


class Optimizer:
    """Base class: subclasses set ``defaults`` and implement ``_init_state``, ``_update`` and ``_check_group``."""

    flat = False  # True when ``_update`` is elementwise, so one call on flat buffers updates the whole group
    _steady = None  # a _SteadyStep once a full step found every group flat with its gradients in place

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}          # Parameter -> dict of state (Tensors and a step count)
        self.param_groups = []
        self._flat = {}          # id(group) -> _FlatGroup
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor; wrap it in a list")
        if callable(getattr(params, "parameters", None)):
            raise TypeError(f"params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got a {type(params).__name__} module; pass model.parameters()")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {type(params).__name__}") from None
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"

    # ---- groups ---------------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict with ``params`` and optional per-group hyperparameters (others take the defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = _ParamGroup(param_group)
        if "params" not in group:
            raise ValueError(f"a parameter group must have a 'params' entry (its Tensors), got keys "
                             f"{sorted(group)}; e.g. {{'params': model.parameters(), 'lr': 0.01}}")
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor (one computed by an op); optimize its leaves")
            if not p.requires_grad:
                raise ValueError("optimizing a tensor that does not require grad; set requires_grad=True")
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {key}")
            group.setdefault(key, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        ids = [id(p) for p in group["params"]]
        if len(set(ids)) != len(ids) or seen & set(ids):
            raise ValueError("some parameters appear in more than one parameter group (or twice in one)")
        self._check_group(group, f"param_groups[{len(self.param_groups)}]")
        self.param_groups.append(group)
        self._relayout(group)

    def _relayout(self, group):
        self._steady = None
        params = group["params"]
        if self.flat and params and _FlatGroup.possible(params):
            self._flat[id(group)] = _FlatGroup(params)
        else:
            self._flat.pop(id(group), None)

    def _check_group(self, group, where):
        """Raise ValueError naming the hyperparameter when ``group`` holds an invalid value."""

    def _check(self, ok, where, name, value, requirement):
        if not ok:
            raise ValueError(f"{type(self).__name__}: invalid {name}={_fmt(value)} in {where} ({requirement})")

    def _check_nonneg(self, group, where, *names):
        for name in names:
            value = group[name]
            self._check(isinstance(value, (int, float)) and not math.isnan(value) and value >= 0,
                        where, name, value, "must be a number >= 0")

    # ---- gradients ------------------------------------------------------------------------------
    def _graph_zero_grad(self, set_to_none=True):
        """``zero_grad(set_to_none=True)`` in a CUDA-graph replay: a host act before the launch."""
        if not set_to_none:
            return None
        return GraphCall(clears=[p for g in self.param_groups for p in g["params"]],
                         host=lambda: [zero_grads(g["params"], True) for g in self.param_groups])

    # gradflow.compile re-runs it as a call rather than recording its array writes
    @replay_as_call(graph=lambda self, set_to_none=True: self._graph_zero_grad(set_to_none))
    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            zero_grads(group["params"], set_to_none)

    # ---- the step -------------------------------------------------------------------------------
    def _check_param(self, p, where):
        g = p.grad
        if g.shape != p.shape:
            raise ValueError(f"{type(self).__name__}: {where} has shape {p.shape} but its grad has shape {g.shape}")
        if g.dtype != p.dtype:
            raise TypeError(f"{type(self).__name__}: {where} has dtype {p.dtype} but its grad has dtype {g.dtype}")
        if type(g.data) is not type(p.data) and g.device != p.device:  # type test first: the hot path
            raise RuntimeError(f"{type(self).__name__}: {where} is on '{p.device}' but its grad is on '{g.device}'")
        for key, value in self.state.get(p, {}).items():
            if isinstance(value, Tensor) and (value.shape != p.shape or type(value.data) is not type(p.data)):
                raise RuntimeError(f"{type(self).__name__}: state {key!r} of {where} has shape {value.shape} on "
                                   f"'{value.device}', but the parameter has shape {p.shape} on '{p.device}'")

    def _prepare(self):
        """Validate every group and gradient and create missing state; nothing is updated yet.

        Returns ``[(group, its parameters that have a gradient, layout or None)]``, with the
        group's flat layout when it is ``ready`` (the steady state of a training loop and of
        every replayed step: nothing per parameter left to check).
        """
        work = []
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, f"param_groups[{gi}]")
            layout = self._flat.get(id(group))
            if layout is not None and layout.ready(self.state):  # the layout's own views: nothing to check
                work.append((group, group["params"], layout))
                continue
            params = []
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._check_param(p, f"param_groups[{gi}]['params'][{pi}]")
                    params.append(p)
            work.append((group, params, None))
        for group, params, _ in work:
            for p in params:
                self._init_state(p, self.state.setdefault(p, {}), group)
        return work

    @replay_as_call(graph=lambda self, closure=None: self._graph_step(closure))
    def step(self, closure=None):
        """One update of every parameter that has a gradient; ``closure`` re-evaluates the loss first."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        steady = self._steady
        if steady is not None and steady.run():
            return loss
        work = self._prepare()
        if self.flat:
            self._step_groups(work)
            self._steady = _SteadyStep.build(self, work)
        else:
            for group, params, _ in work:
                for p in params:
                    self._update(p, self.state[p], group)
                    p._bump_version()
        return loss

    def _step_groups(self, work):
        """The update of each group: one fused call on its flat buffers where it can, else per parameter."""
        for group, params, ready in work:
            if not params:
                continue
            layout = ready or self._flat.get(id(group))
            if ready is None and layout is not None and not layout.holds(params) and \
                    len(params) == len(group["params"]) and _FlatGroup.possible(params):
                self._relayout(group)  # a parameter's array was replaced (Module.to): lay the group out again
                layout = self._flat.get(id(group))
            states = [self.state[p] for p in params]
            flat_state = layout.state_for(states) if layout is not None and (ready or layout.holds(params)) else None
            if flat_state is None:
                for p, state in zip(params, states):
                    self._update(p, state, group)
            else:
                if ready is None:
                    layout.gather_grads()
                self._flat_update(layout, states, flat_state, group)
            for p in params:
                p._bump_version()

    def _flat_update(self, layout, states, flat_state, group):
        """One fused update of a whole group on its flat buffers; per-parameter states follow."""
        whole = Tensor._wrap(layout.param_flat)
        whole.grad = Tensor._wrap(layout.grad_flat)
        self._update(whole, flat_state, group)
        self._propagate(states, flat_state)

    @staticmethod
    def _propagate(states, flat_state):
        """Give every parameter's state the scalar entries of the group's ``flat_state`` after an update."""
        for key in states[0].keys() - flat_state.keys():  # popped by the update (SGD's "fresh")
            for state in states:
                del state[key]
        for key, value in flat_state.items():
            if not isinstance(value, Tensor):
                for state in states:
                    state[key] = value

    def _graph_step(self, closure=None, found_inf=None):
        """``step()`` inside a CUDA graph (a ``compile.GraphCall``), or None where it stays a call.

        Possible when every group is laid out flat: the graph then holds one device-scalar
        update kernel per group (``fused.Update``), reading its hyperparameters from a small
        device buffer. Before each launch ``commit`` validates the groups as ``step`` does,
        folds the hyperparameters exactly as the eager step (same code: ``_update`` with the
        kernel calls deferred), advances step counts, and copies the folded values into that
        buffer (one host-to-device copy); an LR schedule or a changed hyperparameter thus
        changes nothing recorded. Version counters advance after the launch.

        ``found_inf`` (a 0-d float32 array on the parameters' device, written inside the same
        graph: ``GradScaler.step``) makes every update kernel skip when it is nonzero, leaving
        parameters and state untouched; whoever passes it reads it after the launch and, for a
        skipped step, calls the undo ``commit`` returned (step counts go back, as if ``step``
        had not been called). Without it the kernels read a zero flag of their own.
        """
        if closure is not None or not self.flat:
            return None
        groups = []
        for group in self.param_groups:
            layout = self._flat.get(id(group))
            if layout is None or not layout.holds(group["params"]):
                return None
            groups.append((group, layout, group["params"]))
        params = [p for _, _, ps in groups for p in ps]
        if found_inf is None:
            found_inf = backend.xp_of(groups[0][1].param_flat).zeros((), numpy.float32)
        fixed = {}  # "launches": [(update, arrays before, device scalars, arrays after, host views)], "upload"

        def check():
            return all(layout.holds(ps) and layout.steady(self.state) for _, layout, ps in groups)

        def commit():
            for gi, (group, _, _) in enumerate(groups):
                self._check_group(group, f"param_groups[{gi}]")
            snapshot = [(s, dict(s)) for s in (self.state[p] for p in params)]

            def undo():
                for s, saved in snapshot:
                    s.clear()
                    s.update(saved)

            with fused.deferred() as calls:
                for group, layout, ps in groups:
                    states = [self.state[p] for p in ps]
                    flat_state = layout.state_for(states)
                    if flat_state is None:
                        undo()
                        return None
                    self._flat_update(layout, states, flat_state, group)
            if "launches" not in fixed:
                fixed["launches"], fixed["upload"] = _device_scalars(calls)
            launches = fixed["launches"]
            if len(calls) != len(launches) or any(
                    u is not l[0] or len(a) != len(l[1]) + len(l[2]) + len(l[3]) or
                    any(x is not y for x, y in zip(u.split(a)[0] + u.split(a)[2], l[1] + l[3]))
                    for (u, a), l in zip(calls, launches)):
                undo()  # another kernel or other arrays (a hyperparameter switched momentum on): eager
                return None
            for (u, a), l in zip(calls, launches):
                for view, value in zip(l[4], u.split(a)[1]):
                    view[...] = value
            fixed["upload"]()
            return undo

        def device():
            for update, before, scalars, after, _ in fixed["launches"]:
                update.device(*before, *scalars, found_inf, *after)

        def epilogue():
            for p in params:
                p._bump_version()

        def warm():
            for update, before, scalars, after, _ in fixed["launches"]:
                update.device(*[a.copy() for a in before], *scalars, found_inf.copy(), *[a.copy() for a in after])

        return GraphCall(grads=params, check=check, commit=commit, device=device, epilogue=epilogue, warm=warm)

    def _init_state(self, p, state, group):
        """Create any state ``p`` lacks (called on every step: must be cheap when it exists)."""

    def _update(self, p, state, group):
        raise NotImplementedError

    def _prepared_update(self, p, state, group):
        """``_update(p, state, group)`` as a callable of no arguments with everything it reads bound now,
        for ``_SteadyStep`` to call while the group is not written to and the state keeps its entries,
        or None (then ``_update`` runs). An optimizer whose update depends on a step count returns None."""
        return None

    @staticmethod
    def _zeros(p):
        return Tensor._wrap(backend.xp_of(p.data).zeros_like(p.data))

    # ---- state dict -----------------------------------------------------------------------------
    def state_dict(self):
        """``{'state': {index: {name: value}}, 'param_groups': [...]}`` in PyTorch's layout."""
        index, groups = {}, []
        for group in self.param_groups:
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                saved["params"].append(index[id(p)])
            groups.append(saved)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: (v.detach() if isinstance(v, Tensor) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state; checks group sizes and state shapes before changing anything."""
        self._apply_loaded(*self._check_state_dict(state_dict))

    def _check_state_dict(self, state_dict):
        """Everything ``load_state_dict`` would set, validated and copied; nothing is changed yet.

        ``gradflow.train.load_checkpoint`` calls it for the optimizer part before it changes
        the model, so a checkpoint that does not fit leaves both untouched.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            got = sorted(map(str, state_dict)) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' "
                             f"(as Optimizer.state_dict() returns), got {got}")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or not all(isinstance(g, dict) and "params" in g
                                                                 for g in saved_groups):
            raise ValueError(f"{name}.load_state_dict: 'param_groups' must be a list of dicts, each with 'params'")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        id_map, new_groups = {}, []
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(f"loaded state dict's param_groups[{gi}] has {len(saved['params'])} parameters, "
                                 f"this optimizer's has {len(group['params'])}")
            values = {key: tuple(value) if isinstance(value, list) and key == "betas" else copy.deepcopy(value)
                      for key, value in saved.items() if key != "params"}
            merged = {**group, **values}
            self._check_group(merged, f"the loaded state dict's param_groups[{gi}]")
            new_groups.append(values)
            for index, p in zip(saved["params"], group["params"]):
                id_map[int(index)] = (p, merged)
        new_state = {}
        for index, values in state_dict["state"].items():
            p, group = id_map.get(int(index), (None, None))
            if p is None:
                raise ValueError(f"loaded state dict has state for parameter {index}, which no group lists")
            restored, fresh = {}, {}
            self._init_state(p, fresh, group)  # which entries this optimizer keeps as numbers
            for key, value in values.items():
                # torch keeps step counts (and NAdam's mu_product) as 0-d tensors: numbers here, unless
                # the entry is a Tensor of a 0-d parameter
                number = getattr(value, "ndim", 0) == 0 and (
                    len(p.shape) > 0 or key in fresh and not isinstance(fresh[key], Tensor))
                if not number and (isinstance(value, Tensor) or hasattr(value, "shape")):
                    array = value.data if isinstance(value, Tensor) else value
                    if tuple(array.shape) != tuple(p.shape):
                        raise ValueError(f"loaded state {key!r} for parameter {index} has shape {tuple(array.shape)}, "
                                         f"the parameter has shape {p.shape}")
                    array = backend.to_device(array, p.device)
                    if array.dtype.kind == "f":
                        array = array.astype(p.dtype, copy=False)
                    restored[key] = Tensor._wrap(array.copy())
                elif hasattr(value, "item"):  # 0-d arrays / tensors: a step count
                    restored[key] = value.item()
                else:
                    restored[key] = copy.deepcopy(value)
            self._check_state_keys(p, restored, group, index)
            new_state[p] = restored
        return new_state, new_groups

    def _check_state_keys(self, p, restored, group, index):
        """State saved by another optimizer class (SGD's into Adam) fails here, not at the next step."""
        if not restored:
            return
        fresh, completed = {}, dict(restored)
        self._init_state(p, fresh, group)
        self._init_state(p, completed, group)
        # bool entries are one-step markers (SGD's first-step flag), never part of saved state
        needed = {k for k, v in fresh.items() if not isinstance(v, bool)}
        unknown, missing = sorted(restored.keys() - fresh.keys()), sorted(needed - completed.keys())
        if unknown or missing:
            problem = f"has entries {unknown} that {type(self).__name__} does not keep" if unknown else \
                f"lacks {missing}"
            raise ValueError(f"loaded state for parameter {index} {problem} ({type(self).__name__} keeps "
                             f"{sorted(needed)}): the state dict was saved by a different optimizer; load it "
                             f"into the optimizer class that saved it, or start this optimizer afresh")

    def _apply_loaded(self, new_state, new_groups):
        self._steady = None
        for group, values in zip(self.param_groups, new_groups):
            group.update(values)
            layout = self._flat.get(id(group))
            if layout is not None:  # into the flat buffers a compiled step holds, not new arrays
                layout.load(new_state)
        self.state = new_state
