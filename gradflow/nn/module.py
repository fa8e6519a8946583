"""``Module`` and ``Parameter``: models as trees of layers that own their weights.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it (``__setattr__``), so
``parameters()``, ``state_dict()``, ``to(device)`` and ``train()/eval()`` reach everything
without bookkeeping in the subclass, as in PyTorch.
"""
import warnings
from collections import OrderedDict, namedtuple

import numpy

from gradflow import backend
from gradflow.compile import GraphCall, invalidate, mode_switched, replay_as_call
from gradflow.nn.utils import zero_grads
from gradflow.tensor import RemovableHandle, Tensor, _to_args


class Parameter(Tensor):
    """A Tensor that a Module owns as a learnable weight (requires_grad=True by default)."""

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = numpy.empty(0, dtype=numpy.float32)
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Module:
    """Base class of every layer and model: subclasses set attributes in ``__init__`` and define ``forward``."""

    _optional_state = ()  # names of entries a state dict may lack (not missing keys; left as they are)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ----------------------------------------------------------------------
    def _registries(self):
        try:
            return self.__dict__["_parameters"], self.__dict__["_buffers"], self.__dict__["_modules"]
        except KeyError:
            raise AttributeError(f"cannot assign to {type(self).__name__} before Module.__init__() is called; "
                                 f"call super().__init__() first") from None

    def _forget(self, name, keep=None):
        """Drop ``name`` from every registry but ``keep``: a name re-registered where it already was
        keeps its place, as torch's (``dec.weight = enc.weight`` leaves ``dec.weight`` before
        ``dec.bias`` in ``parameters()`` and ``state_dict()``, which optimizers number in that order)."""
        for registry in self._registries():
            if registry is not keep:
                registry.pop(name, None)
        if keep is not self.__dict__.get("_buffers"):
            self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._forget(name, keep=self._registries()[0])
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._forget(name, keep=self._registries()[2])
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                f"(gradflow.nn.Parameter or None expected)")
            self._parameters[name] = None
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r} "
                                f"(gradflow.nn.Module or None expected)")
            self._modules[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if any(name in r for r in self._registries()):
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, got {type(param).__name__}")
        self._forget(name, keep=self._registries()[0])
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """A non-learnable Tensor that moves with the module (and is saved when ``persistent``)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer({name!r}): expected a Tensor or None, got {type(tensor).__name__}")
        self._forget(name, keep=self._registries()[1])
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): {type(module).__name__} is not a Module")
        self._forget(name, keep=self._registries()[2])
        self._modules[name] = module

    register_module = add_module

    # ---- traversal -----------------------------------------------------------------------------
    def named_modules(self, prefix="", _seen=None, remove_duplicate=True):
        """(dotted name, module) pairs, this module first; a module reached twice appears once
        unless ``remove_duplicate=False`` (what ``state_dict`` walks, as torch's)."""
        seen = set() if _seen is None else _seen
        if remove_duplicate:
            if id(self) in seen:
                return
            seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, seen, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry, prefix, recurse, remove_duplicate=True):
        seen = set()
        modules = self.named_modules(prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or remove_duplicate and id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """(dotted name, Parameter) pairs; a Parameter shared by two layers appears once
        (under each of its names with ``remove_duplicate=False``)."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes, devices, gradients ------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active) or, with ``mode=False``, evaluation mode."""
        for m in self.modules():
            if m.training != bool(mode):
                mode_switched(m)  # compiled steps keep one recording per mode state
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def _apply(self, convert):
        """Replace every parameter's and buffer's data in place (the objects stay the same).

        Compiled plans hold the arrays being replaced, so every recording is dropped.
        """
        invalidate()
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = convert(p.data)
                    if p.grad is not None:
                        p.grad.data = convert(p.grad.data)
            for name, b in m._buffers.items():
                if b is not None:
                    b.data = convert(b.data)
        return self

    def to(self, *args, **kwargs):
        """Move and/or cast the weights in place, as torch's ``Module.to``: ``to(device)``, ``to(dtype)``,
        ``to(device, dtype)``, ``to(tensor)`` (its device and dtype) and the keywords ``device=``,
        ``dtype=``, ``non_blocking=`` (accepted; copies are synchronous). Devices are 'cpu', 'cuda',
        'cuda:0' or ``gradflow.device``s; a dtype casts only the floating-point tensors and must be one."""
        if kwargs.get("copy"):
            raise RuntimeError(".to() does not accept copy argument")
        device, dtype, _ = _to_args(args, dict(kwargs))
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to: only floating-point dtypes are allowed, got {dtype}")
        if device == "cuda":
            backend.cupy()  # no usable GPU: say why before anything changes

        def convert(a):
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            if device == "cuda":  # row-major on the GPU, as PyTorch (a CPU Linear weight is stored (in, out))
                return backend.xp_for("cuda").ascontiguousarray(backend.to_device(a, device))
            return a if device is None else backend.to_device(a, device)
        return self._apply(convert)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(numpy.float32)

    def double(self):
        return self.to(numpy.float64)

    @replay_as_call(graph=lambda self, set_to_none=True: GraphCall(  # CUDA-graph replay: a host act before
        clears=list(self.parameters()), host=lambda: zero_grads(self.parameters(), True)) if set_to_none else None)
    def zero_grad(self, set_to_none=True):
        zero_grads(self.parameters(), set_to_none)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    # ---- state dict ----------------------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """An ordered mapping from dotted names (after ``prefix``) to parameter and persistent buffer
        Tensors: detached views sharing their memory, or with ``keep_vars=True`` the Parameters and
        buffers themselves. Entries go into ``destination`` when given (and it is returned).

        A module or parameter reachable under two names (``Sequential(lin, act, lin)``, tied
        weights) has an entry under each, as torch's, so state dicts load both ways. Positional
        arguments are torch's deprecated (destination, prefix, keep_vars), with its FutureWarning;
        a string first is gradflow's older ``state_dict(prefix)``."""
        if args:
            if isinstance(args[0], str):
                args = (None,) + args
            else:
                warnings.warn("Positional args are being deprecated, use kwargs instead. Refer to "
                              "https://pytorch.org/docs/main/generated/torch.nn.Module.html#torch.nn.Module.state_dict"
                              " for details.", FutureWarning, stacklevel=2)
            if destination is None:
                destination = args[0]
            if len(args) > 1 and prefix == "":
                prefix = args[1]
            if len(args) > 2 and keep_vars is False:
                keep_vars = args[2]
        out = OrderedDict() if destination is None else destination
        for module_prefix, module in self.named_modules(remove_duplicate=False):
            dot = f"{prefix}{module_prefix}." if module_prefix else prefix
            for name, p in module._parameters.items():
                if p is not None:
                    out[dot + name] = p if keep_vars else p.detach()
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    out[dot + name] = b if keep_vars else b.detach()
        return out

    def _state_targets(self):
        targets = OrderedDict()
        for module_prefix, module in self.named_modules(remove_duplicate=False):
            dot = f"{module_prefix}." if module_prefix else ""
            for name, p in module._parameters.items():
                if p is not None:
                    targets[dot + name] = p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    targets[dot + name] = b
        return targets

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into this module's parameters and buffers (cast to their dtype and device).

        Every problem is found before anything is copied: shape mismatches always raise; missing
        and unexpected keys raise when ``strict``, else they are returned.
        """
        targets, missing, unexpected = self._check_state_dict(state_dict, strict)
        for key, target in targets.items():
            if key in state_dict:
                value = _array(state_dict[key])
                target.data[...] = backend.to_device(value, target.device).astype(target.dtype, copy=False)
                target._bump_version()
        return _IncompatibleKeys(missing, unexpected)

    def _check_state_dict(self, state_dict, strict=True):
        """Raise what ``load_state_dict`` would raise, changing nothing (``load_checkpoint`` checks first)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict of name -> tensor "
                            f"(as Module.state_dict() returns), got {type(state_dict).__name__}")
        targets = self._state_targets()
        optional = {f"{prefix}.{name}" if prefix else name
                    for prefix, module in self.named_modules(remove_duplicate=False) for name in module._optional_state}
        missing = [k for k in targets if k not in state_dict and k not in optional]
        unexpected = [k for k in state_dict if k not in targets]
        errors = []
        if strict and unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(
                f"'{k}' {_shape_str(numpy.shape(_array(state_dict[k])))}" for k in unexpected))
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(
                f"'{k}' (expected shape {_shape_str(targets[k].shape)})" for k in missing))
        for key, target in targets.items():
            if key in state_dict:
                kind = getattr(_array(state_dict[key]), "dtype", numpy.dtype(object)).kind
                if kind not in "biuf":
                    errors.append(f"value for '{key}' is not numeric (dtype kind {kind!r}); expected a tensor")
                    continue
                shape = tuple(numpy.shape(_array(state_dict[key])))
                if shape != tuple(target.shape):
                    errors.append(f"size mismatch for '{key}': copying a value of shape {_shape_str(shape)} from "
                                  f"the state_dict, the shape in the current model is {_shape_str(target.shape)}")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))
        return targets, missing, unexpected

    # ---- calling and printing ---------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        if args and not isinstance(args[0], Tensor):
            args = _arrays_as_tensors(args)
        hooks = self.__dict__.get("_forward_hooks")
        pre = self.__dict__.get("_forward_pre_hooks")
        if not hooks and not pre:
            return self.forward(*args, **kwargs)
        for hook in list((pre or {}).values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        out = self.forward(*args, **kwargs)
        for hook in list((hooks or {}).values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    # ==== issue 13: apply, hooks ====
    def apply(self, fn):
        """Call ``fn`` on every submodule (children first) and on this module, as torch; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def register_forward_hook(self, hook):
        """``hook(module, args, output)`` after each forward; a non-None result replaces the output."""
        return self._add_hook("_forward_hooks", hook)

    def register_forward_pre_hook(self, hook):
        """``hook(module, args)`` before each forward; a non-None result replaces the arguments."""
        return self._add_hook("_forward_pre_hooks", hook)

    def _add_hook(self, registry, hook):
        if registry not in self.__dict__:
            object.__setattr__(self, registry, OrderedDict())
        handle = RemovableHandle(self.__dict__[registry])
        self.__dict__[registry][handle.id] = hook
        return handle

    def get_submodule(self, target):
        module = self
        for name in target.split(".") if target else []:
            if name not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no attribute `{name}`")
            module = module._modules[name]
        return module

    def get_parameter(self, target):
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if name not in module._parameters:
            raise AttributeError(f"{type(module).__name__} has no parameter `{name}`")
        return module._parameters[name]

    def extra_repr(self):
        """One line of settings shown inside the parentheses of ``repr``."""
        return ""

    def __repr__(self):
        lines = []
        extra = self.extra_repr()
        if extra:
            lines += extra.split("\n")
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))


def _arrays_as_tensors(args):
    """NumPy/CuPy arrays passed to a module become Tensors (sharing memory); the rest is left alone."""
    return tuple(Tensor(a) if not isinstance(a, Tensor) and (hasattr(a, "__array_interface__")
                                                              or hasattr(a, "__cuda_array_interface__")) else a
                 for a in args)


def _array(value):
    """The raw array inside a Tensor; anything else (lists, scalars) as a NumPy array."""
    if isinstance(value, Tensor):
        return value.data
    return value if hasattr(value, "shape") and not isinstance(value, numpy.generic) else numpy.asarray(value)


class ModuleList(Module):
    """A list of modules whose parameters are registered (a plain list would hide them)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return type(self)(items[index])
        return items[index]

    def __setitem__(self, index, module):
        index = range(len(self))[index]
        self.add_module(str(index), module)

    def __delitem__(self, index):
        """Remove one module or a slice; the rest are renumbered from 0, as torch's."""
        keys = list(self._modules)
        for key in (keys[index] if isinstance(index, slice) else [keys[index]]):
            del self._modules[key]
        modules = list(self._modules.values())
        self._modules.clear()
        for i, m in enumerate(modules):
            self._modules[str(i)] = m

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules):
        return self.extend(modules)

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(items):
            self.add_module(str(i), m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList is a container; iterate over it in your own forward()")


class Sequential(ModuleList):
    """Modules applied one after another; ``Sequential(a, b, c)(x) == c(b(a(x)))``."""

    def __init__(self, *modules):
        Module.__init__(self)
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            self.extend(modules)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


# ==== issue 13: dict and parameter containers ==========================================================
class ModuleDict(Module):
    """A dict of modules whose parameters are registered (insertion order kept)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def pop(self, key):
        value = self[key]
        del self[key]
        return value

    def clear(self):
        self._modules.clear()

    def update(self, modules):
        items = modules.items() if hasattr(modules, "items") else modules
        for key, module in items:
            self[key] = module

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict is a container; call its modules in your own forward()")


def _as_parameter(value):
    if isinstance(value, Parameter) or value is None:
        return value
    if isinstance(value, Tensor):
        return Parameter(value.data)
    raise TypeError(f"expected a Parameter or Tensor, got {type(value).__name__}")


class ParameterList(Module):
    """A list of Parameters registered with the module (plain Tensors are wrapped as Parameters)."""

    def __init__(self, values=None):
        super().__init__()
        if values is not None:
            self.extend(values)

    def __getitem__(self, index):
        items = list(self._parameters.values())
        if isinstance(index, slice):
            return ParameterList(items[index])
        return items[index]

    def __setitem__(self, index, value):
        index = range(len(self))[index]
        self.register_parameter(str(index), _as_parameter(value))

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters.values())

    def append(self, value):
        self.register_parameter(str(len(self)), _as_parameter(value))
        return self

    def extend(self, values):
        for v in values:
            self.append(v)
        return self

    def extra_repr(self):
        return "\n".join(f"({i}): Parameter containing: [{type(p.data).__module__.split('.')[0]} of size "
                         f"{'x'.join(map(str, p.shape))}]" for i, p in enumerate(self))


class ParameterDict(Module):
    """A dict of Parameters registered with the module."""

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __getitem__(self, key):
        return self._parameters[key]

    def __setitem__(self, key, value):
        self.register_parameter(key, _as_parameter(value))

    def __delitem__(self, key):
        del self._parameters[key]

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters)

    def __contains__(self, key):
        return key in self._parameters

    def keys(self):
        return self._parameters.keys()

    def items(self):
        return self._parameters.items()

    def values(self):
        return self._parameters.values()

    def get(self, key, default=None):
        return self._parameters.get(key, default)

    def pop(self, key):
        value = self[key]
        del self[key]
        return value

    def update(self, parameters):
        """As torch's: an OrderedDict or ParameterDict in its order, any other mapping in sorted key
        order (so parameters() and the optimizer's numbering match torch's), pairs in their order."""
        if isinstance(parameters, (OrderedDict, ParameterDict)):
            items = parameters.items()
        elif hasattr(parameters, "items"):
            items = sorted(parameters.items())
        else:
            items = parameters
        for key, value in items:
            self[key] = value
