"""The optimizer's steady step (``optim.optimizer._SteadyStep``) against anything a user can change
between steps.

A replayed compiled step delivers every gradient into its parameter's view of the flat gradient
buffer, so from the second replay on ``Optimizer.step`` skips its per-parameter validation and
layout work and makes one fused call per group, after identity tests of everything the last
full step established. Each test here changes one such thing between two steps -- a state
tensor, a step count, a hyperparameter, a parameter's array, a group -- in an eager run and in a
compiled run, and requires the same bytes from both at every step (the eager run never takes
the steady path: its gradients are arrays of their own). The compiled runs also count the
steady steps, so a test cannot pass by never taking that path.
"""
import numpy
import pytest

import gradflow as gf
from gradflow import nn, optim
from gradflow.nn import functional as F
from gradflow.optim.optimizer import _SteadyStep

STEPS, CHANGE_AT = 10, 5


@pytest.fixture
def steady_runs(monkeypatch):
    """Counts the steady steps that ran (``_SteadyStep.run`` returning True)."""
    counts = {"steady": 0}
    run = _SteadyStep.run

    def counted(self):
        done = run(self)
        counts["steady"] += done
        return done

    monkeypatch.setattr(_SteadyStep, "run", counted)
    return counts


def model_and_data():
    gf.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    rng = numpy.random.default_rng(5)
    data = [(gf.tensor(rng.standard_normal((8, 12), dtype=numpy.float32)), gf.tensor(rng.integers(0, 4, 8)))
            for _ in range(3)]
    return model, data


def fingerprint(model, opt):
    parts = [p.data.tobytes() for p in model.parameters()]
    for s in opt.state_dict()["state"].values():
        parts += [v.data.tobytes() if isinstance(v, gf.Tensor) else repr(v).encode() for k, v in sorted(s.items())]
    parts.append(repr([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]).encode())
    return b"".join(parts)


def train(make_opt, change, compiled):
    """STEPS steps; ``change(model, opt)`` runs before step CHANGE_AT. Returns the fingerprints."""
    model, data = model_and_data()
    opt = make_opt(model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.1 * step))

    step = gf.train.training_step(model, F.cross_entropy, opt)
    run = gf.compile(step, strict=True) if compiled else step
    out = []
    for i in range(STEPS):
        if i == CHANGE_AT:
            change(model, opt)
        x, y = data[i % len(data)]
        run(x, y)
        sched.step()
        out.append(fingerprint(model, opt))
    return out


SGD = lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4)  # noqa: E731
ADAM = lambda ps: optim.Adam(ps, lr=2e-3, betas=(0.8, 0.99))  # noqa: E731
RMSPROP = lambda ps: optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5)  # noqa: E731


def first(model):
    return next(iter(model.parameters()))


def set_state_tensor(key):
    def change(model, opt):
        p = first(model)
        opt.state[p][key] = gf.tensor(numpy.full(p.shape, 0.25, numpy.float32))
    return change


def set_state_array(key):
    def change(model, opt):  # the Tensor stays, its array is replaced
        p = first(model)
        opt.state[p][key].data = numpy.full(p.shape, 0.5, numpy.float32)
    return change


def set_step_count(model, opt):
    opt.state[first(model)]["step"] = 2


def write_group(**values):
    def change(model, opt):
        for key, value in values.items():
            opt.param_groups[0][key] = value
    return change


def update_group(model, opt):
    opt.param_groups[0].update(lr=0.01, weight_decay=0.0)


def replace_param_array(model, opt):
    p = first(model)
    p.data = p.data.copy() * 0.5


def rename_state_entry(model, opt):
    """An entry dropped and another added: the same count of entries, one missing."""
    s = opt.state[first(model)]
    s["old_buffer"] = s.pop("momentum_buffer")


def reset_param_state(model, opt):
    opt.state[first(model)] = {}


def drop_param_state(model, opt):
    del opt.state[first(model)]


def reorder_params(model, opt):
    opt.param_groups[0]["params"].reverse()


def new_state_dict_object(model, opt):
    opt.state = dict(opt.state)


def add_group(model, opt):
    opt.add_param_group({"params": [gf.zeros(3, requires_grad=True)], "lr": 0.1})


def in_place_state(model, opt):
    for s in opt.state.values():
        for v in s.values():
            if isinstance(v, gf.Tensor):
                v.data *= 0.5


NOT_AGAIN = False  # the change leaves the optimizer off the steady path for good (a parameter without a
# gradient, or parameters whose step counts disagree: per-parameter updates), correctly

CASES = {
    "sgd-momentum-buffer-replaced": (SGD, set_state_tensor("momentum_buffer")),
    "sgd-momentum-buffer-array-replaced": (SGD, set_state_array("momentum_buffer")),
    "sgd-momentum-buffer-renamed": (SGD, rename_state_entry, NOT_AGAIN),
    "sgd-momentum-switched-on": (lambda ps: optim.SGD(ps, lr=0.05), write_group(momentum=0.9)),
    "sgd-momentum-switched-off": (SGD, write_group(momentum=0.0)),
    "sgd-nesterov-switched-on": (SGD, write_group(nesterov=True)),
    "sgd-group-update": (SGD, update_group),
    "sgd-dampening-set": (SGD, write_group(dampening=0.5)),
    "sgd-maximize-switched-on": (SGD, write_group(maximize=True)),
    "sgd-decay-switched-off": (SGD, write_group(weight_decay=0)),
    "sgd-param-array-replaced": (SGD, replace_param_array),
    "sgd-params-reordered": (SGD, reorder_params),
    "sgd-state-dict-object-replaced": (SGD, new_state_dict_object),
    "sgd-param-group-added": (SGD, add_group, NOT_AGAIN),
    "sgd-state-scaled-in-place": (SGD, in_place_state),
    "adam-exp-avg-replaced": (ADAM, set_state_tensor("exp_avg")),
    "adam-exp-avg-sq-array-replaced": (ADAM, set_state_array("exp_avg_sq")),
    "adam-step-count-changed": (ADAM, set_step_count, NOT_AGAIN),
    "adam-betas-changed": (ADAM, write_group(betas=(0.5, 0.9))),
    "adam-amsgrad-switched-on": (ADAM, write_group(amsgrad=True)),
    "adam-param-state-reset": (ADAM, reset_param_state, NOT_AGAIN),
    "adam-param-state-dropped": (ADAM, drop_param_state, NOT_AGAIN),
    "rmsprop-square-avg-replaced": (RMSPROP, set_state_tensor("square_avg")),
    "rmsprop-momentum-changed": (RMSPROP, write_group(momentum=0.9)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_change_between_steps_gives_the_eager_bytes(case, steady_runs):
    make_opt, change, *rest = CASES[case]
    resumes = rest[0] if rest else True
    want = train(make_opt, change, compiled=False)
    assert steady_runs["steady"] == 0  # eager gradients are arrays of their own: never the steady path
    got = train(make_opt, change, compiled=True)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: compiled differs from eager after the change before step {CHANGE_AT}"
    # replays start at the third step (two recordings), the first of them a full step: steps 3 and 4
    # are steady; after the change, full steps (and for a parameter's new array, recordings: the plan
    # read the old one) until everything settles, then steady again, unless the change rules the
    # steady path out
    if resumes:
        assert steady_runs["steady"] >= 3, steady_runs
    else:
        assert steady_runs["steady"] == 2, steady_runs


@pytest.mark.parametrize("make_opt", [SGD, ADAM, RMSPROP], ids=["sgd", "adam", "rmsprop"])
def test_steady_steps_equal_eager_with_a_schedule(make_opt, steady_runs):
    no_change = lambda model, opt: None  # noqa: E731
    want = train(make_opt, no_change, compiled=False)
    got = train(make_opt, no_change, compiled=True)
    assert want == got
    assert steady_runs["steady"] == STEPS - 3  # every replay after the first


def compiled_sgd(steps):
    """A compiled SGD training step after ``steps`` calls: (model, optimizer, step, data)."""
    model, data = model_and_data()
    opt = SGD(model.parameters())
    run = gf.compile(gf.train.training_step(model, F.cross_entropy, opt), strict=True)
    for i in range(steps):
        run(*data[i % 3])
    return model, opt, run, data


def test_an_invalid_hyperparameter_fails_the_steady_step_before_any_update(steady_runs):
    model, opt, run, data = compiled_sgd(5)
    assert steady_runs["steady"] == 2
    before = fingerprint(model, opt)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr=-1.0"):
        run(*data[0])
    assert fingerprint(model, opt) == before.replace(b"'lr': 0.05", b"'lr': -1.0")
    opt.param_groups[0]["lr"] = 0.05
    run(*data[0])
    run(*data[1])
    assert steady_runs["steady"] >= 3


def test_a_group_update_inside_a_compiled_step_is_replayed():
    """``group.update(...)`` inside the step is recorded like ``group[key] = ...`` (it bypassed the
    recorder before: a replay kept whatever the group held, silently)."""
    results = []
    for compiled in (False, True):
        model, data = model_and_data()
        opt = optim.SGD(model.parameters(), lr=0.05)

        def step(x, y):
            opt.param_groups[0].update(lr=0.02)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        run = gf.compile(step, strict=True) if compiled else step
        out = []
        for i in range(6):
            opt.param_groups[0]["lr"] = 0.5  # outside the step: the step sets 0.02 again
            run(*data[i % 3])
            out.append(fingerprint(model, opt))
        results.append(out)
    assert results[0] == results[1]


def test_param_group_counts_its_writes_and_survives_pickling():
    import pickle
    model, _ = model_and_data()
    group = SGD(model.parameters()).param_groups[0]
    v = group.version
    group["lr"] = 0.1
    group.update(momentum=0.5)
    group.setdefault("new_key", 1)
    group.pop("new_key")
    assert group.version == v + 4
    copy = pickle.loads(pickle.dumps(group))
    assert copy.version == group.version and copy.keys() == group.keys() and copy["lr"] == 0.1 and \
        [p.shape for p in copy["params"]] == [p.shape for p in group["params"]]


def test_a_steady_step_advances_every_parameters_version_once(steady_runs):
    """In-place updates are seen by autograd's saved-tensor check: one version per step, as the full step."""
    model, opt, run, data = compiled_sgd(4)
    before = [p._version for p in model.parameters()]
    run(*data[0])
    assert steady_runs["steady"] == 2
    assert [p._version for p in model.parameters()] == [v + 1 for v in before]


def test_steady_sgd_steps_run_the_bound_update(steady_runs, monkeypatch):
    """The steady SGD step calls the update bound by ``SGD._prepared_update`` (no per-step checks or
    dispatch), bound again after each write to the group (here the schedule's, every step): the same
    bytes as eager, and ``_update`` itself never runs on the steady path."""
    full = []
    update = optim.SGD._update
    monkeypatch.setattr(optim.SGD, "_update", lambda *a: (full.append(1), update(*a)))
    bound = []
    bind = optim.fused.bind_sgd
    monkeypatch.setattr(optim.fused, "bind_sgd", lambda *a, **k: (bound.append(k["lr"]), bind(*a, **k))[1])
    no_change = lambda model, opt: None  # noqa: E731
    want = train(SGD, no_change, compiled=False)
    eager_updates = len(full)
    got = train(SGD, no_change, compiled=True)
    assert want == got
    assert steady_runs["steady"] == STEPS - 3
    assert len(full) - eager_updates == 3  # the two recordings and the first replay (one flat group)
    assert len(bound) == STEPS - 2 and len(set(bound)) == len(bound)  # a new lr each step, bound once each
