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

``state_dict()`` follows PyTorch's layout: ``{'state': {index: {...}}, 'param_groups':
[{..., 'params': [index, ...]}]}`` with parameters numbered in group order.
"""
import copy
import math

from gradflow import backend
from gradflow.compile import replay_as_call
from gradflow.optim import fused
from gradflow.nn.utils import zero_grads
from gradflow.tensor import Tensor, enable_grad


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _fmt(value):
    return f"{value!r}"


def _views(buffer, shapes):
    views, start = [], 0
    for shape in shapes:
        size = 1
        for n in shape:
            size *= n
        views.append(buffer[start:start + size].reshape(shape))
        start += size
    return views


class _FlatGroup:
    """One group's parameters, gradients and state as views of flat buffers of one layout."""

    def __init__(self, params):
        self.params = params
        self.param_flat, self.param_views = fused.flat_buffer([p.data for p in params])
        for p, view in zip(params, self.param_views):
            p.data = view
        self.grad_flat = backend.xp_of(self.param_flat).zeros_like(self.param_flat)
        self.grad_views = _views(self.grad_flat, [p.shape for p in params])
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
                    buffer, views = fused.flat_buffer([s[key].data for s in states])
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


class Optimizer:
    """Base class: subclasses set ``defaults`` and implement ``_init_state``, ``_update`` and ``_check_group``."""

    flat = False  # True when ``_update`` is elementwise, so one call on flat buffers updates the whole group

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}          # Parameter -> dict of state (Tensors and a step count)
        self.param_groups = []
        self._flat = {}          # id(group) -> _FlatGroup
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor; wrap it in a list")
        groups = list(params)
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
        group = dict(param_group)
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
    @replay_as_call  # gradflow.compile re-runs it as a call rather than recording its array writes
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
        """Validate every group and gradient and create missing state; nothing is updated yet."""
        work = []
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, f"param_groups[{gi}]")
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._check_param(p, f"param_groups[{gi}]['params'][{pi}]")
                    work.append((p, group))
        for p, group in work:
            state = self.state.setdefault(p, {})
            self._init_state(p, state, group)
        return work

    @replay_as_call
    def step(self, closure=None):
        """One update of every parameter that has a gradient; ``closure`` re-evaluates the loss first."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        work = self._prepare()
        if self.flat:
            self._step_groups(work)
        else:
            for p, group in work:
                self._update(p, self.state[p], group)
                p._bump_version()
        return loss

    def _step_groups(self, work):
        """The update of each group: one fused call on its flat buffers where it can, else per parameter."""
        start = 0
        while start < len(work):
            group = work[start][1]
            end = start + 1
            while end < len(work) and work[end][1] is group:
                end += 1
            params = [p for p, _ in work[start:end]]
            layout = self._flat.get(id(group))
            if layout is not None and not layout.holds(params) and len(params) == len(group["params"]) \
                    and _FlatGroup.possible(params):
                self._relayout(group)  # a parameter's array was replaced (Module.to): lay the group out again
                layout = self._flat.get(id(group))
            states = [self.state[p] for p in params]
            flat_state = layout.state_for(states) if layout is not None and layout.holds(params) else None
            if flat_state is None:
                for p, state in zip(params, states):
                    self._update(p, state, group)
            else:
                layout.gather_grads()
                whole = Tensor._wrap(layout.param_flat)
                whole.grad = Tensor._wrap(layout.grad_flat)
                self._update(whole, flat_state, group)
                for key in states[0].keys() - flat_state.keys():  # popped by the update (SGD's "fresh")
                    for state in states:
                        del state[key]
                for key, value in flat_state.items():
                    if not isinstance(value, Tensor):
                        for state in states:
                            state[key] = value
            for p in params:
                p._bump_version()
            start = end

    def _init_state(self, p, state, group):
        """Create any state ``p`` lacks (called on every step: must be cheap when it exists)."""

    def _update(self, p, state, group):
        raise NotImplementedError

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
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        id_map = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(f"loaded state dict's param_groups[{gi}] has {len(saved['params'])} parameters, "
                                 f"this optimizer's has {len(group['params'])}")
            for index, p in zip(saved["params"], group["params"]):
                id_map[int(index)] = p
        new_state = {}
        for index, values in state_dict["state"].items():
            p = id_map.get(int(index))
            if p is None:
                raise ValueError(f"loaded state dict has state for parameter {index}, which no group lists")
            restored = {}
            for key, value in values.items():
                if isinstance(value, Tensor) or hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
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
            new_state[p] = restored
        for group, saved in zip(self.param_groups, saved_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if isinstance(value, list) and key == "betas" else copy.deepcopy(value)
        self.state = new_state
