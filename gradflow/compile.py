"""Captured training steps: record a fixed-shape step, then replay it without the tape.

``step = gradflow.compile(train_step)`` returns a callable. Its first calls for a given
set of argument shapes run ``train_step`` eagerly while a recorder logs, in order:

- every Function's forward on raw arrays (the forward ops *and* the ops that the backward
  pass runs), with each array named by a slot;
- every gradient handed to a leaf (what ``.grad`` becomes);
- every call of a function marked ``@replay_as_call`` (optimizer steps, ``zero_grad``),
  which replay re-executes as a call, so step counters, learning-rate schedules and
  lazily created state stay exact; a Tensor the call returns (``clip_grad_norm_``'s
  norm) is taken from what it returns in each replay, so the step may return it or use it.

When two consecutive recordings agree (same ops, same constants) the second becomes the
plan, and later calls replay it: each op's ``forward`` runs on arrays straight from the
slot table — no Tensors, no graph, no heap, no version checks. Replay runs the very code
that eager mode runs, in the same order, so on the CPU its results are bit-identical.

On a GPU the replay goes further: each run of consecutive Function ops becomes a CUDA
graph (captured on the first replay, launched with one call after that); calls, gradient
deliveries and ops that draw random numbers run between the graphs as before. Inputs are
copied into static buffers, every buffer a graph touches lives as long as the plan (in a
memory pool of its own), and matmuls go through gradflow's own GEMM kernel while a graph
is captured, because CuPy refuses cuBLAS calls during stream capture.

What cannot be captured is detected and never replayed: reading data on the host inside
the step (``.item()``, ``.numpy()``, ``bool()`` — data-dependent control flow), in-place
edits of arrays outside the recorded ops (a parameter, buffer or input changed by plain
NumPy, ``p.data *= 0.9``, is caught by checksums taken while recording: before and after
every op that reads it, around every call and at the end of the step), and arrays that change between steps without being produced by
a recorded op. By default such a step warns once and runs eagerly;
``strict=True`` raises ``CaptureError`` at the point of detection instead. A plan reads
each parameter's array directly, so before each replay it checks that every Tensor whose
array it read still holds that array: one given a new array since (``p.data = ...``, an
optimizer re-laying out its flat buffers) makes the step record afresh.
"""
import builtins  # this module defines its own compile()
import collections
import functools
import random
import sys
import types
import warnings
import weakref
import zlib

import numpy

from gradflow import backend
from gradflow import random as random_module
from gradflow.gemm import gemm
from gradflow.ops import sum_rows, sum_rows_source
from gradflow.tensor import Tensor, _accumulates_in_place, is_grad_enabled

_tape = sys.modules["gradflow.tensor"]._state  # this thread's tape state: holds its active recorder
_epoch = 0                              # bumped by invalidate(): every cached plan is re-recorded
_modes = 0                              # XOR of the tags of modules switched train/eval an odd number of
_mode_tags = weakref.WeakKeyDictionary()  # times: part of every cache key, so each mode state keeps its plan
_tag_source = random.Random()

_FUNCTION, _LEAF, _CALL = 0, 1, 2
_RUNTIME_ATTRS = {"inputs", "outputs", "_saved", "generation", "needs_input_grad", "_out_meta"}


class CaptureError(RuntimeError):
    """The step cannot be captured; the message says which op and why."""


_STALE = object()  # what _Plan.run returns when it must be recorded again


def invalidate():
    """Forget every recording (``Module.to`` calls this: plans hold the arrays it replaces)."""
    global _epoch
    _epoch += 1


def mode_switched(module):
    """``module`` switched between train and eval (``Module.train`` calls this).

    Recordings are keyed by the mode state rather than dropped, so ``fit`` switching to
    eval for validation and back replays the training step it recorded in the first epoch.
    The key is the XOR of random per-module tags over the modules switched an odd number
    of times: equal keys mean every module is in the same mode.
    """
    global _modes
    tag = _mode_tags.get(module)
    if tag is None:
        tag = _mode_tags[module] = _tag_source.getrandbits(64)
    _modes ^= tag


class GraphCall:
    """How one call of a ``@replay_as_call`` function joins a one-launch GPU replay.

    A function marked ``@replay_as_call(graph=hook)`` gets ``hook(*args, **kwargs)`` called
    when the GPU runner is built; the hook returns a GraphCall, or None when that call must
    stay a host call between graphs. The parts, all optional:

    - ``clears``: leaves whose ``.grad`` the call sets to None, and ``host``: the call itself,
      run on the host before the launch (it must be idempotent: ``zero_grad(set_to_none=True)``);
    - ``grads``: leaves whose gradient buffers the device part reads or writes: each must have
      its gradient delivered into its own buffer earlier in the same graph;
    - ``check()``: a pure test, before the launch, that the captured arrays are still the
      call's arrays (else that replay runs eagerly);
    - ``commit()``: host work before the launch (folding hyperparameters into device scalars,
      advancing step counts); returns an undo callable, or None when this replay cannot use
      the graph (then nothing is changed);
    - ``device()``: device work only, captured into the graph;
    - ``epilogue()``: host bookkeeping after the launch (version counters; ``GradScaler.step`` reads
      its found-inf flag there and calls the undo of a skipped step's commit);
    - ``warm()``: runs the device part's kernels once on scratch copies before the capture, so
      CuPy compiles and loads them outside it.
    """

    def __init__(self, *, clears=(), host=None, grads=(), check=None, commit=None, device=None, epilogue=None,
                 warm=None):
        self.clears, self.host, self.grads = tuple(clears), host, tuple(grads)
        self.check, self.commit, self.device, self.epilogue = check, commit, device, epilogue
        self.warm = warm  # compiles the device part's kernels before capture, changing nothing


def replay_as_call(func=None, *, graph=None):
    """Mark a function that a replayed step must re-execute as a call (optimizer steps).

    Ops it runs are not recorded one by one; replay calls it again with the same
    arguments, so Python-side state it keeps (step counts, schedules) stays exact.
    ``graph`` (see ``GraphCall``) says how the call goes inside a CUDA graph instead.
    """
    if func is None:
        return lambda f: replay_as_call(f, graph=graph)
    func._graph_call = graph

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        recorder = _tape._recorder
        if recorder is None:
            return func(*args, **kwargs)
        # a generator (model.parameters()) would be spent after one call: replay needs a list
        args = tuple(list(a) if isinstance(a, types.GeneratorType) else a for a in args)
        index = len(recorder.ops)
        recorder.ops.append((_CALL, func, args, kwargs))
        recorder.check_leaves()
        _tape._recorder = None
        try:
            result = func(*args, **kwargs)
        finally:
            _tape._recorder = recorder
            recorder.on_call_returned()
        recorder.on_call_result(index, result)
        return result
    return wrapper


def _clear_grad(x):
    """``x.grad = None`` written inside a compiled step, repeated by each replay."""
    x.grad = None


# on the GPU, a host act before the launch, as zero_grad(set_to_none=True)
_clear_grad._graph_call = lambda x: GraphCall(clears=[x], host=lambda: _clear_grad(x))


def _group_write(group, key, value):
    """``group[key] = value`` on an optimizer's param group, written inside a compiled step: repeated
    by each replay through the group's own ``__setitem__`` (which counts its writes)."""
    group[key] = value


def _checksum(a):
    """A checksum of an array's bytes (while recording only)."""
    host = numpy.asarray(a) if isinstance(a, (numpy.ndarray, numpy.generic)) else a.get()
    if host.dtype.hasobject:
        return 0  # Python objects: not checked
    return zlib.crc32(host.ravel(order="K").view(numpy.uint8))  # bytes: any dtype (bfloat16 included)


class _Recording:
    """The log of one eager run of the step."""

    def __init__(self, arrays, strict, watch=()):
        self.ops = []
        self.slot_of = {}        # id(array) -> slot; arrays stay alive so ids stay unique
        self.arrays = []         # slot -> the array seen while recording
        self.external = []       # slots of arrays not made by recorded ops (parameters, constants)
        self.strict = strict
        self.problem = None
        self.rng_ops = set()     # ops whose forward draws random numbers (kept out of CUDA graphs)
        self.owners = {}         # external slot -> the Tensor whose .data it was (a parameter)
        # leaf Tensor an op reads (parameter, buffer, the step's input) -> (its array, a checksum) as
        # of the last op or call that could change it: a write that no op and no call made
        # (``p.data *= 0.9`` in the step) would not be replayed. ``watch``: the step's inputs and the
        # previous recording's leaves, checked from the start (a write before their first read)
        self.watched = {}
        for t in watch:
            self._watch(t)
        self._drew = False
        for a in arrays:
            self._new(a)
        self.n_inputs = len(arrays)
        self.outputs = None

    def _new(self, a):
        slot = len(self.arrays)
        self.arrays.append(a)
        self.slot_of[id(a)] = slot
        return slot

    def _ref(self, a):
        slot = self.slot_of.get(id(a))
        if slot is None:
            slot = self._new(a)
            self.external.append(slot)
        return slot

    def _fail(self, reason):
        if self.strict:
            raise CaptureError(f"gradflow.compile: cannot capture this step: {reason}")
        if self.problem is None:
            self.problem = reason

    # ---- hooks called by the tape --------------------------------------------------------------
    def on_function(self, fn, tensors, xs, ys, constructed):
        ins = []
        for t, a in zip(tensors, xs):  # xs: the tensors' arrays
            slot = self.slot_of.get(id(a))
            if slot is None:  # read from outside the step: a replay first checks that t still holds it
                slot = self._ref(a)
                self.owners[slot] = t
            if t.creator is None:  # the op may write its inputs in place (BatchNorm's running stats)
                self._watch(t)
            ins.append(slot)
        single = type(ys) is not tuple
        outs = [self._new(y) for y in ((ys,) if single else ys)]
        saved = [(k, self._new(a)) for k, a in enumerate(fn._saved or ())
                 if a is not None and hasattr(a, "shape") and id(a) not in self.slot_of]
        # what forward sets is set again on replay; what the constructor set is frozen
        constructed = {k: v for k, v in constructed.items() if k not in _RUNTIME_ATTRS}
        if self._drew:
            self.rng_ops.add(len(self.ops))
            self._drew = False
        self.ops.append((_FUNCTION, fn, ins, outs, single, saved, constructed))

    # ---- leaves changed outside ops and calls ---------------------------------------------------------
    def _watch(self, t):
        self.watched[t] = (t.data, _checksum(t.data))

    def _check_watched(self, t):
        """Fail when leaf ``t`` changed since it was last seen, other than by an op or a call."""
        seen = self.watched.get(t)
        if seen is not None and (seen[0] is not t.data or _checksum(t.data) != seen[1]):
            self._fail("an array the step reads (a parameter, a buffer or an input) was changed inside the step "
                       "by code that is neither an op nor a @replay_as_call function (such as `p.data *= 0.9`, "
                       "`x.data /= 255` or `p.data = ...`), which a replay would not repeat; do it with ops, in "
                       "a @gradflow.replay_as_call function, or outside the compiled function")

    def before_function(self, tensors):
        """Before an op's forward: the leaves it reads are as the last op or call left them."""
        for t in tensors:
            if t.creator is None:
                self._check_watched(t)

    def check_leaves(self):
        """Before a call and at the end of the step: no leaf changed since it was last seen."""
        for t in self.watched:
            self._check_watched(t)

    def on_call_returned(self):
        """A call (optimizer step, hooks) may change leaves: what it left is what ops read next."""
        for t in self.watched:
            self._watch(t)

    def on_call_result(self, index, result):
        """What call ``index`` returned: each Tensor in it (alone, or in a tuple or list) whose array is new
        becomes a slot the call produces, so the step may return it (``clip_grad_norm_``'s norm) or ops
        may read it; a replay takes it from what the call returns then."""
        made = [(path, self._new(t.data)) for path, t in _result_tensors(result, ())
                if id(t.data) not in self.slot_of]
        if made:
            self.ops[index] += (tuple(made),)

    def on_random_draw(self):
        self._drew = True

    def on_leaf_grad(self, x, gx, copy, result, in_place=False):
        self.ops.append((_LEAF, x, self._ref(gx), copy, self._new(result)))
        if in_place:  # the existing .grad took the gradient in place (replayed so): what it left is legitimate
            base = result if result.base is None else result.base
            for t in self.watched:
                if t.data is result or t.data is base or t.data.base is base:
                    self._watch(t)

    def on_host_sync(self, what):
        self._fail(f"{what} reads tensor data on the host inside the step (a host sync, or "
                   f"data-dependent Python control flow); do it outside the compiled function")

    def on_in_place(self, what):
        self._fail(f"{what} modifies an array outside the recorded ops; use out-of-place ops "
                   f"inside a compiled step, or do it in a @replay_as_call function")

    def on_group_write(self, group, key, value):
        """``optimizer.param_groups[i][key] = value`` inside the step: replayed with this value (a
        value that differs between the two recordings fails their comparison: the step runs eagerly)."""
        self.ops.append((_CALL, _group_write, (group, key, value), {}))

    def on_reseed(self, what):
        self._fail(f"{what} inside the step reseeds the random streams, which a replay would not repeat; "
                   f"seed outside the compiled function")

    def on_post_accumulate_hooks(self, x, fire):
        """``x``'s post-accumulate-grad hooks ran: a replay calls them again (they run on the host; what
        they do to ``x.grad`` is not recorded op by op)."""
        self.ops.append((_CALL, fire, (x,), {}))

    def on_grad_assigned(self, x, value):
        if value is None:  # ``p.grad = None`` in the step: replayed as a call
            self.ops.append((_CALL, _clear_grad, (x,), {}))
        else:
            self._fail("the step assigns a Tensor to .grad, which a replay cannot repeat; set it to None, call "
                       "zero_grad(), or do it in a @replay_as_call function")

    def on_create_graph(self):
        self._fail("backward(create_graph=True) is not supported inside a compiled step")

    # ---- comparing two recordings ------------------------------------------------------------
    def mismatch(self, other):
        """Why ``other`` (an earlier recording) disagrees with this one, or None."""
        if len(self.ops) != len(other.ops) or len(self.arrays) != len(other.arrays):
            return f"the step ran {len(other.ops)} ops, then {len(self.ops)}: its control flow changes"
        for i, (a, b) in enumerate(zip(other.ops, self.ops)):
            if a[0] != b[0]:
                return f"op #{i} differs between steps"
            if a[0] == _FUNCTION:
                if type(a[1]) is not type(b[1]) or a[2:6] != b[2:6] or a[6].keys() != b[6].keys():
                    return f"op #{i} ({type(b[1]).__name__}) differs between steps"
                for key, value in b[6].items():
                    if not _equal(a[6][key], value):
                        return f"op #{i} ({type(b[1]).__name__}) was built with a different {key!r} in each step"
            elif a[0] == _LEAF:
                if a[1] is not b[1] or a[2:] != b[2:]:
                    return f"gradient delivery #{i} differs between steps"
            elif a[1] is not b[1] or not _same_arg(a[2], b[2]) or not _same_arg(a[3], b[3]) or a[4:] != b[4:]:
                if b[1] is _group_write:
                    return (f"the step sets an optimizer's param_groups[...][{b[2][1]!r}] to a different value in each "
                            f"call, which a replay cannot repeat; set it outside the compiled function or use a "
                            f"scheduler from gradflow.optim.lr_scheduler")
                return f"call #{i} ({getattr(b[1], '__qualname__', b[1])}) differs between steps"
        if self.external != other.external:
            return "the arrays read from outside the step differ"
        for slot in self.external:
            x, y = other.arrays[slot], self.arrays[slot]
            if x is not y and not _equal(x, y):
                user = next((type(op[1]).__name__ for op in self.ops if op[0] == _FUNCTION and slot in op[2]), "?")
                return (f"an input of {user} changes between steps but is not produced by a recorded op "
                        f"(raw array math outside Functions, or a tensor replaced instead of updated in place)")
        return None


def _result_tensors(value, path):
    """(path, Tensor) of each Tensor in a call's result: the result itself, or inside tuples and lists."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for k, v in enumerate(value):
            yield from _result_tensors(v, path + (k,))


def _call_result(result, path, func):
    """The array at ``path`` in what a replayed call returned, as the recordings saw it."""
    value = result
    for k in path:
        value = value[k] if isinstance(value, (tuple, list)) and k < len(value) else None
    if not isinstance(value, Tensor):
        raise RuntimeError(f"gradflow.compile: {getattr(func, '__qualname__', func)} returned a Tensor at "
                           f"{list(path)} of its result in the recorded steps, and something else in a replay")
    return value.data


def _same_arg(a, b):
    """Arguments of a replayed call: the same objects (containers may be rebuilt)."""
    if a is b:
        return True
    if isinstance(a, (tuple, list)) and type(a) is type(b):
        return len(a) == len(b) and all(_same_arg(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_arg(a[k], b[k]) for k in a)
    if isinstance(a, (int, float, str, bool, type(None))) and type(a) is type(b):
        return a == b
    return False


def _equal(a, b):
    if a is b:
        return True
    if hasattr(a, "shape") and hasattr(b, "shape") and hasattr(a, "dtype"):
        return a.shape == b.shape and a.dtype == b.dtype and type(a) is type(b) and \
            bool((backend.xp_of(a).asarray(a) == backend.xp_of(b).asarray(b)).all())
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


class _Plan:
    """A recording turned into a replayable program over a slot table."""

    def __init__(self, recording, cuda_graphs=True, strict=False):
        # the cache key holds each input's array type: every call of this plan is on this device
        self.cuda_graphs = bool(cuda_graphs and recording.n_inputs and backend.device_of(recording.arrays[0]) == "cuda")
        self.strict = strict
        self.graph_runner = None
        self.rng_ops = recording.rng_ops
        self.leaf_meta = {i: (recording.arrays[op[2]].shape, recording.arrays[op[2]].dtype)
                          for i, op in enumerate(recording.ops) if op[0] == _LEAF}
        self.template = [None] * len(recording.arrays)
        for slot in recording.external:
            self.template[slot] = recording.arrays[slot]
        # (Tensor, the array it held, its requires_grad): a replay reads the array, so a Tensor given
        # another one since (``p.data = ...``, a parameter re-laid out by its optimizer) makes the plan
        # stale; and it delivers gradients to the leaves that required grad while recording, so one
        # frozen or unfrozen since (``requires_grad_(False)``) does too (a replay kept updating a frozen layer)
        self.owners = tuple((t, recording.arrays[slot], t.requires_grad) for slot, t in recording.owners.items())
        self.n_inputs = recording.n_inputs
        self.outputs = recording.outputs
        keep = set(recording.external) | set(_output_slots(recording.outputs))
        last_use = {}
        for i, op in enumerate(recording.ops):
            for slot in _reads(op):
                last_use[slot] = i
        frees = collections.defaultdict(list)
        for slot, i in last_use.items():
            if slot not in keep:
                frees[i].append(slot)
        self.ops = [(op[:6] if op[0] == _FUNCTION else op + ([None],) if op[0] == _LEAF else op) +
                    (tuple(frees.get(i, ())),) for i, op in enumerate(recording.ops)]

        if self.cuda_graphs and _call_results_used(self):
            # a Tensor a call returns (clip_grad_norm_'s norm) feeds the step: the graph runner, which
            # replays calls as graph parts or host acts, has no slot for it; replay without graphs
            self.cuda_graphs = False
        self.replay = _generate(self, recording.arrays)

    def run(self, arrays):
        """The step's outputs, or ``_STALE`` (nothing run) when a Tensor the plan reads holds another array
        or was frozen or unfrozen."""
        for t, a, flag in self.owners:
            if t.data is not a or t.requires_grad != flag:
                return _STALE
        if self.cuda_graphs:
            if self.graph_runner is None:
                self.graph_runner = _CudaGraphRunner(self)
            return self.graph_runner.run(arrays)
        return self.replay(*arrays)


def _generate(plan, arrays):
    """The plan as one straight-line Python function, written the way one would by hand.

    Each slot is a local variable (``v12``), each array read from outside the step a
    global of the function (``e7``), each op one line: the op's ``replay_source`` (its
    forward without checks, next to the forward in ops.py/activation.py/softmax_ops.py) or else a call of
    its forward; each leaf delivery one call; a local is deleted after its last use. A
    weight gradient computed by a matmul is computed straight into the parameter's own
    gradient buffer (``out=``); a forward and the op that differentiates it may be one line
    (``replay_source_with_grad``: the cross-entropy and its gradient, see ``_grad_pairs``).
    No slot table, no per-op objects or dispatch in between.
    """
    names = {"_wrap": Tensor._wrap, "_deliver": _deliver_leaf}
    external = {s for s, a in enumerate(plan.template) if a is not None}
    for s in external:
        names[f"e{s}"] = plan.template[s]

    def ref(slot):
        return f"e{slot}" if slot in external else f"v{slot}"

    fused, skipped = _into_grads(plan, arrays)
    delivered = {j for j, _ in fused.values()}
    read = {s for op in plan.ops for s in _reads(op)} | set(_output_slots(plan.outputs))
    made_by_calls = {s for op in plan.ops if op[0] == _CALL for _, s in _call_slots(op)}  # whoever else holds them
    reusable = _reusable_slots(arrays, external | set(range(plan.n_inputs)) | set(_output_slots(plan.outputs)) |
                               made_by_calls)
    def bind(bindings):  # the globals an op's source names
        for key, value in bindings.items():
            if names.setdefault(key, value) is not value:
                raise RuntimeError(f"gradflow.compile: two ops bind {key!r} to different objects")

    with_grad, folded, never_made = {}, set(), set()  # forward ops written with their gradient op (see _grad_pairs)
    for i, j in _grad_pairs(plan, read).items():
        fwd, grad = plan.ops[i], plan.ops[j]
        expr = fwd[1].replay_source_with_grad(grad[1], [ref(s) for s in fwd[2]], [ref(s) for s in grad[2]],
                                              [arrays[s] for s in fwd[2]])
        if expr is not None:
            with_grad[i] = (expr, grad[3][0])
            folded.add(j)
            never_made.update(s for _, s in fwd[5])
    lines = [f"def replay({', '.join(f'v{s}' for s in range(plan.n_inputs))}):"]
    for i, op in enumerate(plan.ops):
        kind = op[0]
        if i in skipped:  # a transpose folded into the matmul before it
            continue
        if i in with_grad:
            (expr, bindings), grad_out = with_grad[i]
            bind(bindings)
            lines.append(f"    v{op[3][0]}, v{grad_out} = {expr}")
        elif i in folded:
            pass
        elif kind == _FUNCTION and i in fused:
            j, deliver = fused[i]
            x, dst, own = plan.ops[j][1], plan.ops[j][4], plan.ops[j][5]
            names[f"x{j}"], names[f"o{j}"], names[f"b{j}"] = x, own, x._grad_buffer
            lines.extend(_delivery_lines(j, deliver, [ref(s) for s in op[2]], [arrays[s] for s in op[2]],
                                         f"v{dst}" if dst in read else None, names))
        elif kind == _FUNCTION:
            fn, ins, outs, single, saved = op[1:6]
            saved = [(k, s) for k, s in saved if s in read]  # what forward saves for a backward that never runs
            inline = getattr(fn, "replay_source", None)
            dying = tuple(k for k, s in enumerate(ins) if s in op[-1] and s in reusable and ins.count(s) == 1)
            expr = None if inline is None or not single else \
                inline(*[ref(s) for s in ins], arrays=[arrays[s] for s in ins], saved=tuple(k for k, _ in saved),
                       dying=dying)
            if isinstance(expr, tuple):  # (expression, the globals it names)
                expr, bindings = expr
                bind(bindings)
            if expr is not None:
                targets = ", ".join([f"v{outs[0]}"] + [f"v{s}" for _, s in saved])
                lines.append(f"    {targets} = {expr}")
            else:
                names[f"f{i}"], names[f"n{i}"] = fn.forward, fn
                targets = ", ".join(f"v{s}" for s in outs) + ("" if single or len(outs) > 1 else ",")
                lines.append(f"    {targets} = f{i}({', '.join(ref(s) for s in ins)})")
                lines.extend(f"    v{s} = n{i}._saved[{k}]" for k, s in saved)
                lines.append(f"    n{i}._saved = ()")
        elif kind == _LEAF:
            if i in delivered:
                continue
            x, src, copy, dst, own = op[1:6]
            names[f"x{i}"], names[f"o{i}"] = x, own
            lines.append(f"    v{dst} = _deliver(x{i}, {ref(src)}, o{i})")
        else:
            names[f"c{i}"], names[f"a{i}"], names[f"k{i}"] = op[1], op[2], op[3]
            used = [(path, s) for path, s in _call_slots(op) if s in read]
            if used:  # a Tensor the call returns that the step returns or ops read
                names["_call_result"] = _call_result
                lines.append(f"    r{i} = c{i}(*a{i}, **k{i})")
                lines.extend(f"    v{s} = _call_result(r{i}, {path!r}, c{i})" for path, s in used)
            else:
                lines.append(f"    c{i}(*a{i}, **k{i})")
        dead = [f"v{s}" for s in op[-1] if s not in external and s not in never_made]
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    lines.append(f"    return {_emit_outputs(plan.outputs, ref, names)}")
    source = "\n".join(lines) + "\n"
    exec(builtins.compile(source, "<gradflow.compile plan>", "exec"), names)
    replay = names["replay"]
    replay.source = source
    return replay


def _grad_pairs(plan, read):
    """{forward op index: index of the op that differentiates it} for the pairs a replay may write as one line
    (``replay_source_with_grad``, e.g. the cross-entropy forward and its gradient): the gradient op is the only
    reader of every array the forward saves, it saves nothing anyone reads, no call runs between the two,
    and each of its other inputs exists when the forward runs (made before it, or read from outside)."""
    made_at = {}
    for i, op in enumerate(plan.ops):
        if op[0] == _FUNCTION:
            made_at.update((s, i) for s in op[3])
            made_at.update((s, i) for _, s in op[5])
        elif op[0] == _LEAF:
            made_at[op[4]] = i
    readers = collections.defaultdict(list)
    for i, op in enumerate(plan.ops):
        for s in _reads(op):
            readers[s].append(i)
    outputs = set(_output_slots(plan.outputs))
    pairs = {}
    for i, op in enumerate(plan.ops):
        if op[0] != _FUNCTION or not op[4] or not hasattr(op[1], "replay_source_with_grad") or not op[5]:
            continue
        saved = [s for _, s in op[5]]
        users = {k for s in saved for k in readers[s]}
        if len(users) != 1 or any(len(readers[s]) != 1 or s in outputs for s in saved):
            continue
        j = users.pop()
        grad = plan.ops[j]
        if grad[0] != _FUNCTION or not grad[4] or any(s in read for _, s in grad[5]) or \
                any(o[0] == _CALL for o in plan.ops[i + 1:j]) or \
                any(made_at.get(s, -1) > i and s not in saved for s in grad[2]):
            continue
        pairs[i] = j
    return pairs


def _call_slots(op):
    """(path in the result, slot) of the Tensors a call op returns that became slots (``on_call_result``)."""
    return op[4] if len(op) > 5 else ()


def _call_results_used(plan):
    """True when the step returns, or an op reads, a Tensor that a call returned."""
    used = {s for op in plan.ops for s in _reads(op)} | set(_output_slots(plan.outputs))
    return any(s in used for op in plan.ops if op[0] == _CALL for _, s in _call_slots(op))


def _reusable_slots(arrays, keep):
    """Slots whose array a replay may overwrite at its last reader (``replay_source``'s ``dying``):
    NumPy arrays that own their memory, writeable, not in ``keep`` (the step's inputs, arrays read
    from outside the step, what it returns), and whose memory no other slot holds (the same array, a view
    of it, or a view of the same base). A replay makes the same arrays and views as the recording it was built from."""
    def root(a):
        while isinstance(a.base, numpy.ndarray):
            a = a.base
        return id(a)

    holders = collections.Counter(root(a) for a in arrays if isinstance(a, numpy.ndarray))
    return {s for s, a in enumerate(arrays) if s not in keep and type(a) is numpy.ndarray and a.base is None and
            a.flags.writeable and holders[id(a)] == 1}


def _into_grads(plan, arrays):
    """Ops whose result only becomes a parameter's gradient, computed straight into its buffer.

    Returns ({op index: (leaf op index, kind)}, {transpose op indices to
    skip}) for 2-D NumPy ops delivered to a leaf with no call or other delivery to that
    parameter in between: a matmul ``a @ b`` into a buffer of its shape (``matmul``);
    ``(a @ b).T``, the weight gradient of a Linear weight stored (in, out), the transpose
    op between folded, into a buffer whose transpose is row-major (``matmul_t``);
    a bias gradient summed over the batch axis (``sum0``). ``_delivery_lines`` writes them.
    """
    readers = collections.Counter(s for op in plan.ops for s in _reads(op))
    outputs = set(_output_slots(plan.outputs))
    producer = {}    # slot -> (op index, deliver function name)
    transposes = {}  # slot -> index of the transpose op producing it
    fused = {}
    for i, op in enumerate(plan.ops):
        if op[0] != _FUNCTION and op[0] != _LEAF:
            continue
        if op[0] == _FUNCTION:
            name = type(op[1]).__name__
            if op[5] or not all(type(arrays[s]) is numpy.ndarray and arrays[s].ndim == 2 for s in op[2]):
                continue
            if name == "MatMul":
                producer[op[3][0]] = (i, "matmul")
            elif name == "SumTo" and op[1].x_shape[1:] == op[1].shape:
                producer[op[3][0]] = (i, "sum0")
            elif name == "Permute" and op[1].axes == (1, 0) and \
                    producer.get(op[2][0], (0, ""))[1] == "matmul" and \
                    readers[op[2][0]] == 1 and op[2][0] not in outputs:
                producer[op[3][0]] = (producer[op[2][0]][0], "matmul_t")
                transposes[op[3][0]] = i
            continue
        x, src = op[1], op[2]
        j, deliver = producer.get(src, (None, ""))
        buf = getattr(x, "_grad_buffer", None)
        if j is None or readers[src] != 1 or src in outputs or type(buf) is not numpy.ndarray or \
                buf.shape != arrays[src].shape or buf.dtype != arrays[src].dtype or \
                any(o[0] == _CALL or (o[0] == _LEAF and o[1] is x) for o in plan.ops[j + 1:i]):
            continue
        if deliver == "matmul_t" and not buf.T.flags.c_contiguous:
            continue
        fused[j] = (i, deliver)
    skipped = {transposes[plan.ops[i][2]] for i, deliver in fused.values() if deliver == "matmul_t"}
    return fused, skipped


def _delivery_lines(j, deliver, args, arrays, target, names):
    """The replay's lines for a gradient computed straight into the buffer of leaf ``x{j}`` (see
    ``_into_grads``): written out for the usual case (no gradient yet, the buffer still the
    parameter's), handed to ``_deliver_leaf`` otherwise (accumulated, or a buffer of its own);
    ``target`` names the local that gets the gradient (None: no later line reads it). Inside a
    training step each Python call around a NumPy call costs about a microsecond: these are six
    per step of a three-layer MLP."""
    buf = f"b{j}"
    if deliver == "sum0":  # a bias: sum_rows's call, resolved for the plan's shape
        compute, bindings = sum_rows_source(args[0], arrays[0], buf)
        names.update(bindings, sum_rows=sum_rows)
        other = f"sum_rows({args[0]})"
    else:  # a @ b into the buffer, or into its transpose (a Linear weight stored (in, out))
        out, other = buf, f"{args[0]} @ {args[1]}"
        if deliver == "matmul_t":
            out, other = f"bt{j}", f"({other}).T"
            names[out] = names[buf].T
        names["matmul"] = numpy.matmul
        compute = f"matmul({args[0]}, {args[1]}, out={out})"
    keep = f"{target} = " if target else ""
    return [f"    if x{j}._grad is None and getattr(x{j}, '_grad_buffer', None) is {buf}:",
            f"        {compute}",
            f"        x{j}._grad = _wrap({buf})"] + \
        ([f"        {target} = {buf}"] if target else []) + \
        ["    else:", f"        {keep}_deliver(x{j}, {other}, o{j})"]


def _emit_outputs(structure, ref, names):
    kind = structure[0]
    if kind == "tensor":
        return f"_wrap({ref(structure[1])})"
    if kind == "const":
        key = f"k_out{len(names)}"
        names[key] = structure[1]
        return key
    if kind is dict:
        key = f"t_out{len(names)}"
        names[key] = list(structure[1])
        return "dict(zip(" + key + ", (" + "".join(_emit_outputs(v, ref, names) + ", " for v in structure[1].values()) + ")))"
    key = f"t_out{len(names)}"
    names[key] = kind
    return key + "((" + "".join(_emit_outputs(v, ref, names) + ", " for v in structure[1]) + "))"


def _deliver_leaf(x, g, own):
    """A gradient handed to leaf ``x`` in a replay: what ``x.grad`` becomes (see ``_run_op``)."""
    if x.grad is None:
        # the parameter's own buffer, valid until the next step: never an array the plan
        # computes into (a CUDA graph rewrites those at every replay)
        buf = getattr(x, "_grad_buffer", None)  # a view of its optimizer's flat gradient, if any
        if buf is None or buf.shape != g.shape or buf.dtype != g.dtype or type(buf) is not type(g):
            buf = own[0]
        if buf is None or buf.shape != g.shape or buf.dtype != g.dtype or type(buf) is not type(g):
            buf = own[0] = g.copy()
        else:
            buf[...] = g
        g = buf
    else:
        grad = x.grad
        if _accumulates_in_place(grad, g):
            grad.data += g  # in place, as eager (and torch): a reference to .grad sees the sum
            grad._bump_version()
            return grad.data
        g = grad.data + g
    x.grad = Tensor._wrap(g)
    return g


def _run_op(op, vals):
    """Execute one recorded op on the slot table ``vals``."""
    kind = op[0]
    if kind == _FUNCTION:
        fn, ins, outs, single, saved = op[1:6]
        ys = fn.forward(*[vals[s] for s in ins])
        if single:
            vals[outs[0]] = ys
        else:
            for s, y in zip(outs, ys):
                vals[s] = y
        for k, s in saved:
            vals[s] = fn._saved[k]
        fn._saved = ()
    elif kind == _LEAF:
        x, src, copy, dst, own = op[1:6]
        vals[dst] = _deliver_leaf(x, vals[src], own)
    else:
        op[1](*op[2], **op[3])


def _writes(op):
    if op[0] == _FUNCTION:
        return list(op[3]) + [s for _, s in op[5]]
    if op[0] == _LEAF:
        return [op[4]]
    return []


def capture_stream(stream, run):
    """Run ``run()`` under stream capture: ``(graph, None)``, or ``(None, error)`` when it failed.

    An op that is not capturable invalidates the capture, and then ``end_capture`` raises
    too; the error reported is the first one (the op's), never the one from ending capture.
    """
    failure = graph = None
    stream.begin_capture()
    backend.capturing = True
    try:
        run()
    except Exception as e:
        failure = e
    finally:
        backend.capturing = False
        try:
            graph = stream.end_capture()
        except Exception as e:
            if failure is None:
                failure = e
    return (None, failure) if failure is not None else (graph, None)


class _Segment:
    """One CUDA graph of a GPU replay and the host work around its launch (see ``_segments``)."""

    def __init__(self, start):
        self.start = start      # index of its first plan op: a replay that cannot launch it runs eagerly from here
        self.hosts = []         # GraphCalls whose host part runs first (zero_grad(set_to_none=True))
        self.need_none = []     # leaves whose .grad must be None when the graph delivers into their buffer
        self.leaves = []        # (leaf, its _grad_buffer) of deliveries into it: still its buffer at launch
        self.calls = []         # GraphCalls with device parts: check, then commit, before the launch
        self.device = []        # what the graph records, in plan order: ("op", op) | ("leaf", op, add) | ("call", gc)
        self.post = []          # host epilogue after the launch, in plan order
        self.undo = []          # undoes this replay's commits (a capture that failed)
        self.draws = None       # _DeviceDraws of its random ops (dropout), filled before each launch

    def ops(self):
        return [item[1] for item in self.device if item[0] != "call"]


def _segments(plan, calls, buffers):
    """The GPU replay of ``plan`` as a list of ("graph", _Segment) and ("host", op) items.

    A pure function of the plan's ops, the GraphCalls of its calls (``calls``: op index ->
    GraphCall or None) and the persistent buffer each leaf delivery writes (``buffers``: op
    index -> array). Function ops go into the current graph unless they draw random numbers;
    a leaf delivery goes in as a copy into (or, when the leaf already received a gradient in
    this plan, an add to) its buffer, with ``.grad`` set to that buffer after the launch; a
    call goes in when its GraphCall allows it. Anything else ends the graph and runs on the
    host. A step whose every op fits is one graph: one launch per replay.
    """
    items, seg = [], None
    state = {}           # id(leaf) -> "cleared" | "delivered" (absent: unknown, .grad must be None)
    here = set()         # ids of leaves delivered in the open segment (their .grad is set after its launch)
    holder = {}          # id(leaf) -> the buffer its last delivery wrote

    def close():
        nonlocal seg
        if seg is not None and (seg.device or seg.hosts):
            items.append(("graph", seg))
        seg = None
        here.clear()

    def host(op):
        close()
        items.append(("host", op))

    for i, op in enumerate(plan.ops):
        kind = op[0]
        if kind == _FUNCTION:
            if i in plan.rng_ops and not getattr(op[1], "device_draws", False):
                host(op)  # its draw would freeze (seed, offset) into the graph
                continue
            seg = seg or _Segment(i)
            seg.device.append(("op", op))
        elif kind == _LEAF:
            x, buf = op[1], buffers.get(i)
            if buf is None:
                host(op)
                state[id(x)] = "delivered"
                holder[id(x)] = None
                continue
            seg = seg or _Segment(i)
            known = state.get(id(x))
            if known is None:
                seg.need_none.append(x)
            add = known == "delivered"
            if add and holder.get(id(x)) is not buf:
                host(op)
                holder[id(x)] = None
                continue
            if getattr(x, "_grad_buffer", None) is buf:
                seg.leaves.append((x, buf))
            seg.device.append(("leaf", op, add, buf))
            seg.post.append((x, buf))
            state[id(x)], holder[id(x)] = "delivered", buf
            here.add(id(x))
        else:
            gc = calls.get(i)
            if gc is not None and gc.device is None and gc.host is not None:
                if here & {id(x) for x in gc.clears}:
                    close()  # it clears what this graph delivers: after its launch
                seg = seg or _Segment(i)
                seg.hosts.append(gc)
                for x in gc.clears:
                    state[id(x)] = "cleared"
                    holder.pop(id(x), None)
            elif gc is not None and gc.device is not None and all(
                    state.get(id(x)) == "delivered" and holder.get(id(x)) is getattr(x, "_grad_buffer", False)
                    for x in gc.grads):
                seg = seg or _Segment(i)
                seg.calls.append(gc)
                seg.device.append(("call", gc))
                if gc.epilogue is not None:
                    seg.post.append(gc.epilogue)
            else:
                host(op)
                state.clear()  # an arbitrary call may set any .grad
                holder.clear()
    close()
    return items


class _CudaGraphRunner:
    """Replays a plan on the GPU as CUDA graphs: for a whole training step, one graph.

    Built during the first GPU replay: ``_segments`` splits the plan into graphs and host
    ops; each graph is captured and launched at once. Slots that a host op writes and a
    graph reads get a fixed buffer, refreshed by a device copy on every later replay. Before
    each launch the segment's host part runs (``zero_grad``, folding optimizer
    hyperparameters into device scalars); when its preconditions fail (a ``.grad`` left over
    from an earlier step, a replaced parameter array), that replay runs the rest of the plan
    eagerly instead, which gives the same result.
    """

    def __init__(self, plan):
        cp = backend.cupy()
        self.plan = plan
        self.pool = cp.cuda.MemoryPool()     # private: graph buffers are never handed out elsewhere
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.vals = None
        self.steps = None                    # ("graph", graph, _Segment) | ("op", op, {slot: fixed buffer})
        self.inputs = None
        self.launches = 0                    # graph launches so far (one per replay for a whole step)

    def run(self, arrays):
        cp = backend.cupy()
        if self.steps is None:
            return self._first_run(arrays)
        for buf, a in zip(self.inputs, arrays):
            buf[...] = a
        stream = cp.cuda.get_current_stream()
        vals = self.vals
        for step in self.steps:
            if step[0] == "graph":
                seg = step[2]
                if not self._before_launch(seg):
                    return self._eager_from(seg.start)
                if step[1] is not None:
                    step[1].launch(stream)
                    self.launches += 1
                _after_launch(seg)
            else:
                _run_op(step[1], vals)
                for s, fixed in step[2].items():
                    fixed[...] = vals[s]
                    vals[s] = fixed
        return _copy_outputs(self.plan.outputs, vals)

    def _before_launch(self, seg):
        """The segment's host part; False (and nothing committed) when this replay must run eagerly."""
        for gc in seg.hosts:
            gc.host()
        if any(x.grad is not None for x in seg.need_none) or \
                any(getattr(x, "_grad_buffer", None) is not buf for x, buf in seg.leaves):
            return False
        if not all(gc.check is None or gc.check() for gc in seg.calls):
            return False
        undo = []
        for gc in seg.calls:
            if gc.commit is not None:
                u = gc.commit()
                if u is None:
                    for f in reversed(undo):
                        f()
                    return False
                undo.append(u)
        seg.undo = undo
        if seg.draws is not None:  # last: it advances the generators, and nothing can fail after it
            seg.draws.commit()
        return True

    def _eager_from(self, start):
        """The rest of the plan without graphs, on a copy of the slot table (graph buffers stay put)."""
        vals = list(self.vals)
        for op in self.plan.ops[start:]:
            _run_op(op, vals)
        return _copy_outputs(self.plan.outputs, vals)

    def _first_run(self, arrays):
        cp = backend.cupy()
        plan = self.plan
        for dtype in (numpy.float32, numpy.float64):  # load the GEMM module now: not while capturing
            gemm(cp.ones((1, 1), dtype), cp.ones((1, 1), dtype))
        with cp.cuda.using_allocator(self.pool.malloc):
            self.inputs = [cp.array(a) for a in arrays]
            buffers = {}
            for i, op in enumerate(plan.ops):
                if op[0] == _LEAF:
                    buffers[i] = self._leaf_buffer(op, *plan.leaf_meta[i])
        calls = {}
        for i, op in enumerate(plan.ops):
            hook = getattr(op[1], "_graph_call", None) if op[0] == _CALL else None
            if hook is not None:
                calls[i] = hook(*op[2], **op[3])
        vals = self.vals = list(plan.template)
        vals[:plan.n_inputs] = self.inputs
        graph_reads = set()
        steps = []
        for kind, item in _segments(plan, calls, buffers):
            if kind == "host":
                _run_op(item, vals)
                steps.append(("op", item, {}))
                continue
            if not self._before_launch(item):  # not this time: the next replay builds the runner again
                return self._eager_from(item.start)
            if not item.device:  # host acts only (a zero_grad with no device work after it): no graph
                _after_launch(item)
                steps.append(("graph", None, item))
                continue
            graph = self._capture_segment(item)
            if graph is None:
                return self._eager_from(item.start)
            graph_reads.update(s for op in item.ops() for s in _reads(op))
            steps.append(("graph", graph, item))
        # slots written by host ops but read by a graph: pin this run's array as the fixed buffer
        for step in steps:
            if step[0] == "op":
                for s in _writes(step[1]):
                    if s in graph_reads:
                        step[2][s] = vals[s]
        self.steps = steps
        return _copy_outputs(plan.outputs, vals)

    @staticmethod
    def _leaf_buffer(op, shape, dtype):
        """Where a leaf's gradient lands: its own (optimizer flat) buffer, else one the plan keeps for it."""
        x, own = op[1], op[5]
        cp = backend.cupy()
        buf = getattr(x, "_grad_buffer", None)
        if buf is not None and buf.shape == shape and buf.dtype == dtype and type(buf) is cp.ndarray:
            return buf
        if own[0] is None or own[0].shape != shape or own[0].dtype != dtype:
            own[0] = cp.empty(shape, dtype)
        return own[0]

    def _capture_segment(self, seg):
        """Capture ``seg``'s device work as one graph and launch it; None (warned, or CaptureError
        under strict) when it cannot be captured, with the commits undone by running eagerly."""
        cp = backend.cupy()
        vals = self.vals
        before = {s: vals[s] for op in seg.ops() for s in _writes(op)}

        def run():
            for item in seg.device:
                if item[0] == "op":
                    _run_op(item[1], vals)
                elif item[0] == "leaf":
                    op, add, buf = item[1:]
                    if add:
                        buf += vals[op[2]]
                    else:
                        buf[...] = vals[op[2]]
                else:
                    item[1].device()

        for item in seg.device:  # a delivery's result slot is its buffer, fixed for the plan's life
            if item[0] == "leaf":
                vals[item[1][4]] = item[3]
        for item in seg.device:  # kernels first used here are compiled and loaded now, not while capturing
            if item[0] == "call" and item[1].warm is not None:
                item[1].warm()
            elif item[0] == "op" and getattr(item[1][1], "warm_device_draws", None) is not None:
                item[1][1].warm_device_draws()
        with cp.cuda.using_allocator(self.pool.malloc):
            draws = _DeviceDraws(cp.zeros(2 * _DeviceDraws.CAPACITY, numpy.uint64))

        def run_with_draws():
            draws.cursor = 0
            random_module.device_draws = draws
            try:
                run()
            finally:
                random_module.device_draws = None

        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            graph, failure = capture_stream(self.stream, run_with_draws)
        if graph is None:
            message = f"gradflow.compile: a segment of {len(seg.device)} ops could not be captured as a CUDA " \
                      f"graph ({failure!r})"
            if self.plan.strict:
                raise CaptureError(message) from failure
            warnings.warn(message + "; replaying the step without graphs", RuntimeWarning, stacklevel=4)
            for s, a in before.items():
                vals[s] = a
            for f in reversed(seg.undo):
                f()
            self.plan.cuda_graphs = False  # every later replay: the generated code, no graphs
            return None
        if draws.draws:
            seg.draws = draws
            draws.commit()
        graph.launch(cp.cuda.get_current_stream())
        self.launches += 1
        _after_launch(seg)
        return graph


class _DeviceDraws:
    """The random draws of one CUDA graph: each kernel reads its Philox (seed, offset) from a device
    buffer that ``commit`` refills before every launch with the counters eager mode would reserve,
    in the same order from the same generators, advancing them as eager does (one host-to-device
    copy). A ``manual_seed`` or ``set_rng_state`` between steps is thus seen by the next replay."""

    CAPACITY = 128  # draws per graph

    def __init__(self, device):
        self.device = device
        self.host = numpy.zeros(device.size, numpy.uint64)
        self.draws = []  # (generator, count)
        self.cursor = 0

    def take(self, generator, count):
        """(seed, offset) of the next draw of the graph being captured, as 0-d device arrays."""
        k, self.cursor = self.cursor, self.cursor + 1
        if k == len(self.draws):
            if 2 * k + 2 > self.device.size:
                raise CaptureError(f"gradflow.compile: more than {self.CAPACITY} random draws in one CUDA graph")
            self.draws.append((generator, int(count)))
        elif self.draws[k] != (generator, int(count)):
            raise CaptureError("gradflow.compile: the random draws of a CUDA graph changed")
        return self.device[2 * k:2 * k + 1].reshape(()), self.device[2 * k + 1:2 * k + 2].reshape(())

    def commit(self):
        for k, (generator, count) in enumerate(self.draws):
            self.host[2 * k], self.host[2 * k + 1] = generator.next_offset(count)
        if type(self.device) is numpy.ndarray:  # host emulation of the GPU runner (tests)
            numpy.copyto(self.device, self.host)
        else:
            self.device.set(self.host)


def _after_launch(seg):
    """The segment's host epilogue: each delivered leaf's ``.grad`` is its buffer; calls' bookkeeping."""
    for post in seg.post:
        if type(post) is tuple:
            post[0].grad = Tensor._wrap(post[1])
        else:
            post()


def _copy_outputs(structure, vals):
    """Outputs of a graphed replay live in buffers the next replay overwrites: hand out copies."""
    kind = structure[0]
    if kind == "tensor":
        return Tensor._wrap(vals[structure[1]].copy())
    if kind == "const":
        return structure[1]
    if kind is dict:
        return {k: _copy_outputs(v, vals) for k, v in structure[1].items()}
    return kind(_copy_outputs(v, vals) for v in structure[1])


def _reads(op):
    if op[0] == _FUNCTION:
        return op[2]
    if op[0] == _LEAF:
        return (op[2],)
    return ()


def _flatten_outputs(value, recording):
    """The step's return value as a structure of slots (Tensors) and constants."""
    if isinstance(value, Tensor):
        return ("tensor", recording._ref(value.data), value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value), [_flatten_outputs(v, recording) for v in value])
    if isinstance(value, dict):
        return (dict, {k: _flatten_outputs(v, recording) for k, v in value.items()})
    if value is None or isinstance(value, (str, bool)):
        return ("const", value)
    recording._fail(f"the step returns a {type(value).__name__}; return Tensors (call .item() outside)")
    return ("const", value)


def _output_slots(structure):
    kind = structure[0]
    if kind == "tensor":
        yield structure[1]
    elif kind == "const":
        return
    elif kind is dict:
        for v in structure[1].values():
            yield from _output_slots(v)
    else:
        for v in structure[1]:
            yield from _output_slots(v)


def _build(structure, vals):
    kind = structure[0]
    if kind == "tensor":
        return Tensor._wrap(vals[structure[1]])
    if kind == "const":
        return structure[1]
    if kind is dict:
        return {k: _build(v, vals) for k, v in structure[1].items()}
    return kind(_build(v, vals) for v in structure[1])


class _Entry:
    """Recordings and plan for one set of argument shapes."""
    def __init__(self):
        self.last = None
        self.plan = None
        self.tries = 0
        self.eager_reason = None


class CompiledStep:
    """A step function that records itself, then replays (see the module docstring)."""

    def __init__(self, fn, strict=False, cache_size=8, max_recordings=3, cuda_graphs=True):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.strict = strict
        self.cuda_graphs = cuda_graphs
        self.cache_size = cache_size
        self.max_recordings = max_recordings
        self.cache = collections.OrderedDict()
        self.epoch = _epoch

    def _key(self, args, arrays):
        """The cache key of a call with ``args``; appends the Tensors' arrays to ``arrays`` on the way."""
        key = []
        for a in args:
            if isinstance(a, Tensor):
                d = a.data  # the array type stands for the device (numpy: cpu, cupy: cuda)
                key.append((type(d), d.shape, d.dtype, a.requires_grad))
                arrays.append(d)
            else:
                try:
                    hash(a)
                except TypeError:
                    raise TypeError(f"gradflow.compile: arguments must be Tensors or hashable values, "
                                    f"got {type(a).__name__}") from None
                key.append(("V", a))
        key.append(_modes)
        key.append(is_grad_enabled())  # a step recorded under no_grad ran other ops
        return tuple(key)

    def __call__(self, *args):
        if _tape._recorder is not None:
            raise CaptureError("gradflow.compile: a compiled step cannot call another compiled step")
        if self.epoch != _epoch:
            self.cache.clear()
            self.epoch = _epoch
        tensors = []
        key = self._key(args, tensors)
        entry = self.cache.get(key)
        if entry is None:
            entry = self.cache[key] = _Entry()
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        if entry.plan is not None:
            result = entry.plan.run(tensors)
            if result is not _STALE:
                return result
            entry.plan, entry.tries = None, 0  # a parameter got a new array (p.data = ...): record afresh
        if entry.eager_reason is not None:
            return self.fn(*args)
        return self._record(entry, args, tensors)

    def _record(self, entry, args, arrays):
        watch = [a for a in args if isinstance(a, Tensor)] + list(entry.last.watched if entry.last is not None else ())
        recording = _Recording(arrays, self.strict, watch)
        _tape._recorder = recording
        try:
            result = self.fn(*args)
            recording.outputs = _flatten_outputs(result, recording)
            recording.check_leaves()
        finally:
            _tape._recorder = None
        entry.tries += 1
        if recording.problem is not None:
            self._give_up(entry, recording.problem)
            return result
        reason = recording.mismatch(entry.last) if entry.last is not None else "first recording"
        if reason is None:
            entry.plan = _Plan(recording, self.cuda_graphs, self.strict)
            entry.last = None
        elif entry.tries >= self.max_recordings:
            self._give_up(entry, reason)
        else:
            entry.last = recording
        return result

    def _give_up(self, entry, reason):
        entry.last = None
        message = f"gradflow.compile: cannot capture {getattr(self.fn, '__qualname__', self.fn)}: {reason}"
        if self.strict:
            raise CaptureError(message)
        entry.eager_reason = reason
        warnings.warn(message + "; running it eagerly", RuntimeWarning, stacklevel=3)

    @property
    def captured(self):
        """True when the most recently used argument shapes replay a plan."""
        return bool(self.cache) and next(reversed(self.cache.values())).plan is not None


def compile(fn=None, *, strict=False, cache_size=8, cuda_graphs=True):
    """Capture a fixed-shape step (forward, loss, backward, optimizer update) for replay.

    Usable as ``compile(step)`` or ``@compile(strict=True)``. Arguments are Tensors (bound
    to the recorded step's inputs) or hashable values (part of the cache key). Changed
    shapes, dtypes or devices record again; up to ``cache_size`` recordings are kept.
    ``cuda_graphs=False`` replays on the GPU without CUDA graphs.
    """
    options = dict(strict=strict, cache_size=cache_size, cuda_graphs=cuda_graphs)
    if fn is None:
        return lambda f: CompiledStep(f, **options)
    return CompiledStep(fn, **options)
