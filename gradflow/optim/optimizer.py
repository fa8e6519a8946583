"""``Optimizer``: parameter groups, per-parameter state and a two-phase ``step``.

``step`` first checks everything that could make an update fail (hyperparameters of every
group, each gradient's shape/dtype/device, the shapes of loaded state) and allocates any
new state, and only then updates parameters, so an error never leaves some parameters
updated and others not. Updates are in-place fused kernels from ``gradflow.optim.fused``.
``step`` and ``zero_grad`` are ``replay_as_call``: a ``gradflow.compile``-d training step
re-runs them as calls, so step counts and schedules stay exact under replay.

``state_dict()`` follows PyTorch's layout: ``{'state': {index: {...}}, 'param_groups':
[{..., 'params': [index, ...]}]}`` with parameters numbered in group order.
"""
import copy
import math

from gradflow import backend
from gradflow.compile import replay_as_call
from gradflow.nn.utils import zero_grads
from gradflow.tensor import Tensor, enable_grad


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _fmt(value):
    return f"{value!r}"


class Optimizer:
    """Base class: subclasses set ``defaults`` and implement ``_init_state``, ``_update`` and ``_check_group``."""

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}          # Parameter -> dict of state (Tensors and a step count)
        self.param_groups = []
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
        group = dict(param_group)
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
        for p, group in self._prepare():
            self._update(p, self.state[p], group)
            p._bump_version()
        return loss

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
        for group, values in zip(self.param_groups, new_groups):
            group.update(values)
        self.state = new_state
