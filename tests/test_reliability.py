"""Faults a user can run into: graph-connected gradients, non-finite gradients, bad inputs.

Each test pins one root cause of issue 11 and compares with PyTorch where PyTorch has the call.
"""
import gc
import weakref

import numpy
import pytest
import torch

import gradflow as gf
from gradflow import nn, optim


# ---- zero_grad(set_to_none=False) after backward(create_graph=True) ---------------------------
@pytest.mark.parametrize("owner", ["optimizer", "module"])
def test_zero_grad_detaches_a_graph_connected_grad(owner):
    model = nn.Linear(4, 3)
    opt = optim.SGD(model.parameters(), lr=0.1)
    zero = (lambda: opt.zero_grad(set_to_none=False)) if owner == "optimizer" else \
        (lambda: model.zero_grad(set_to_none=False))
    x = gf.tensor(numpy.random.default_rng(0).standard_normal((5, 4), dtype=numpy.float32))
    generations = []
    for _ in range(4):
        loss = (model(x) ** 2).sum()
        loss.backward(create_graph=True)
        graph = weakref.ref(model.weight.grad.creator)
        generations.append(model.weight.grad.generation)
        zero()
        del loss
        gc.collect()
        assert graph() is None, "zero_grad kept the backward graph alive"
        g = model.weight.grad
        assert g.creator is None and not g.requires_grad
        assert not g.numpy().any()
    # the first step assigns, later ones add to the zeroed grad (one op more): then no growth
    assert len(set(generations[1:])) == 1, f"each backward chained onto the last: graph depth {generations}"


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")
def test_zero_grad_after_create_graph_matches_torch():
    w0 = numpy.random.default_rng(1).standard_normal(3).astype(numpy.float32)
    w = gf.tensor(w0, requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)
    gopt, topt = optim.SGD([w], lr=0.1), torch.optim.SGD([tw], lr=0.1)
    for _ in range(3):
        for p, opt, lib in ((w, gopt, gf), (tw, topt, torch)):
            opt.zero_grad(set_to_none=False)
            (p ** 3).sum().backward(create_graph=True)
            opt.step()
        numpy.testing.assert_allclose(w.grad.numpy(), tw.grad.detach().numpy(), rtol=1e-6)
        numpy.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-6)


def test_zero_grad_after_create_graph_keeps_sibling_grads():
    # with create_graph the two leaves may receive one shared gradient array: zeroing one
    # must not zero (or fail on) the other
    a = gf.ones(3, requires_grad=True)
    b = gf.ones(3, requires_grad=True)
    (a + b).sum().backward(create_graph=True)
    nn.utils.zero_grads([a], set_to_none=False)
    assert not a.grad.numpy().any()
    numpy.testing.assert_array_equal(b.grad.numpy(), numpy.ones(3, numpy.float32))


# ---- clip_grad_norm_ with non-finite gradients ---------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_non_finite_as_torch(bad, norm_type):
    grads = [numpy.array([1.0, bad, 2.0], numpy.float32), numpy.array([3.0, 4.0], numpy.float32)]
    ps = [gf.zeros(3, requires_grad=True), gf.zeros(2, requires_grad=True)]
    tps = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    for p, tp, g in zip(ps, tps, grads):
        p.grad = gf.tensor(g.copy())
        tp.grad = torch.tensor(g.copy())
    total = nn.utils.clip_grad_norm_(ps, 1.0, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type=norm_type)
    numpy.testing.assert_array_equal(total.numpy(), ttotal.numpy())
    for p, tp in zip(ps, tps):
        numpy.testing.assert_array_equal(p.grad.numpy(), tp.grad.numpy())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_clip_grad_norm_error_if_nonfinite(bad):
    p = gf.zeros(2, requires_grad=True)
    p.grad = gf.tensor([bad, 1.0])
    with pytest.raises(RuntimeError, match="non-finite|nan|inf"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert p.grad.numpy()[1] == 1.0  # nothing clipped before raising


# ---- inputs that must be refused ----------------------------------------------------------------
@pytest.mark.parametrize("data", [None, "abc", b"abc", numpy.array(["a", "b"]), numpy.array([{}, 1], dtype=object),
                                  [[1.0, 2.0], [3.0]], {"a": 1}, [None, 1.0]],
                         ids=["None", "str", "bytes", "str-array", "object-array", "ragged", "dict", "None-in-list"])
def test_tensor_refuses_non_numeric_data(data):
    with pytest.raises((TypeError, ValueError)) as err:
        gf.tensor(data)
    assert "cannot make a tensor" in str(err.value)
    with pytest.raises((TypeError, ValueError)):
        gf.Tensor(data)


def test_tensor_still_accepts_numbers():
    assert gf.tensor(3).dtype == numpy.int64 and gf.tensor(True).dtype == numpy.bool_
    assert gf.tensor([[1.5, 2]]).dtype == numpy.float32 and gf.tensor(numpy.ones(2, numpy.float16)).dtype == numpy.float16


def test_one_hot_is_range_checked_like_torch():
    F = nn.functional
    numpy.testing.assert_array_equal(F.one_hot(gf.tensor([0, 2]), 3).numpy(),
                                     torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).numpy())
    with pytest.raises(ValueError, match="non-negative"):
        F.one_hot(gf.tensor([0, -1]), 3)
    with pytest.raises(ValueError, match=r"smaller than num_classes \(3\)"):
        F.one_hot(gf.tensor([3]), 3)
    with pytest.raises(TypeError, match="integer"):
        F.one_hot(gf.tensor([1.0]), 3)
    assert F.one_hot(gf.tensor([1, 4])).shape == (2, 5)


@pytest.mark.parametrize("target", [[1.5, 0.0], [-0.1, 1.0]])
def test_binary_cross_entropy_refuses_targets_outside_unit_interval(target):
    p = gf.tensor([0.5, 0.5])
    with pytest.raises(RuntimeError):
        torch.nn.functional.binary_cross_entropy(torch.tensor([0.5, 0.5]), torch.tensor(target))
    with pytest.raises(ValueError, match="target should be between 0 and 1"):
        nn.functional.binary_cross_entropy(p, gf.tensor(target))


@pytest.mark.parametrize("args", [(784.5, 10), (10, 2.0), ("3", 2), (True, 2)])
def test_linear_refuses_non_integer_sizes(args):
    with pytest.raises(TypeError, match="must be an int"):
        nn.Linear(*args)
    with pytest.raises(ValueError, match=">= 0"):
        nn.Linear(-1, 2)


def test_linear_with_zero_features_works_as_torch():
    with pytest.warns(UserWarning, match="zero-element"):
        layer = nn.Linear(0, 10)
    out = layer(gf.zeros((2, 0)))
    with pytest.warns(UserWarning, match="zero-element"):
        tlayer = torch.nn.Linear(0, 10)
    tlayer.bias.data = torch.tensor(layer.bias.numpy())
    numpy.testing.assert_array_equal(out.numpy(), tlayer(torch.zeros(2, 0)).detach().numpy())
    assert nn.Linear(3, 0)(gf.ones((2, 3))).shape == (2, 0)


def test_fit_on_an_empty_dataset_raises():
    from gradflow.data import DataLoader, TensorDataset
    from gradflow.train import fit, train_epoch
    model = nn.Linear(2, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    empty = DataLoader(TensorDataset(gf.zeros((0, 2)), gf.zeros(0, dtype=numpy.int64)), batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        fit(model, nn.CrossEntropyLoss(), opt, empty, epochs=1, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        train_epoch(model, nn.CrossEntropyLoss(), opt, empty)
    tiny = DataLoader(TensorDataset(gf.zeros((3, 2)), gf.zeros(3, dtype=numpy.int64)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="drop_last"):
        fit(model, nn.CrossEntropyLoss(), opt, tiny, epochs=1, progress=False)


# ---- collate ------------------------------------------------------------------------------------
class _Samples:
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _collate_both(samples):
    from gradflow.data import DataLoader
    batch = next(iter(DataLoader(_Samples(samples), batch_size=len(samples))))
    return batch, torch.utils.data.default_collate(samples)


def _same(ours, theirs):
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs)
        for k in theirs:
            _same(ours[k], theirs[k])
    elif isinstance(theirs, (list, tuple)) and not isinstance(ours, list):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b)
    elif isinstance(theirs, torch.Tensor):
        assert isinstance(ours, gf.Tensor) and ours.dtype == theirs.numpy().dtype
        numpy.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    else:
        assert ours == theirs


def test_dict_samples_collate_like_torch():
    rng = numpy.random.default_rng(0)
    samples = [{"image": rng.random((2, 3), dtype=numpy.float32), "label": int(i), "weight": 0.5 * i,
                "meta": {"id": numpy.int64(i), "pair": (i, numpy.float32(i))}, "name": f"s{i}"}
               for i in range(4)]
    ours, theirs = _collate_both(samples)
    _same(ours, theirs)
    assert isinstance(ours["image"], gf.Tensor) and ours["image"].shape == (4, 2, 3)


def test_nested_tuples_and_lists_collate_like_torch():
    samples = [((numpy.ones(2, numpy.float32) * i, [i, i + 1]), i % 2) for i in range(3)]
    ours, theirs = _collate_both(samples)
    _same(ours, theirs)


@pytest.mark.parametrize("samples,match", [
    ([{"x": numpy.zeros(3)}, {"x": numpy.zeros(4)}], r"sample\['x'\]: sample 0 has shape \(3,\) but sample 1 has shape \(4,\)"),
    ([(numpy.zeros(2), 1), (numpy.zeros(5), 0)], r"sample\[0\]: sample 0 has shape \(2,\) but sample 1 has shape \(5,\)"),
    ([{"x": 1}, {"y": 1}], "same keys"),
    ([(1, 2), (1,)], "same structure"),
    ([{"x": None}, {"x": None}], r"cannot batch sample\['x'\] of type NoneType"),
    ([object(), object()], "cannot batch sample of type object"),
    ([numpy.array(["a"]), numpy.array(["b"])], "dtype"),
])
def test_collate_refuses_what_it_cannot_stack(samples, match):
    from gradflow.data import default_collate
    with pytest.raises((TypeError, ValueError), match=match):
        default_collate(samples)


# ---- errors that name the problem and the fix ---------------------------------------------------
def _message(call, kind=Exception):
    with pytest.raises(kind) as err:
        call()
    return str(err.value)


def test_module_accepts_numpy_arrays_and_names_other_inputs():
    model = nn.MLP([4, 3, 2])
    x = numpy.random.default_rng(0).random((5, 4), dtype=numpy.float32)
    numpy.testing.assert_array_equal(model(x).numpy(), model(gf.tensor(x)).numpy())
    message = _message(lambda: model([[1.0, 2.0, 3.0, 4.0]]), TypeError)
    assert "expected a Tensor, got list" in message and "gradflow.tensor" in message
    message = _message(lambda: model(x.astype(numpy.float64)), TypeError)
    assert "float64" in message and ".float()" in message
    message = _message(lambda: nn.functional.linear(gf.ones((2, 4)), numpy.ones((3, 4), numpy.float32)), TypeError)
    assert "expected a Tensor, got ndarray" in message


def test_linear_on_a_0d_input():
    message = _message(lambda: nn.Linear(3, 2)(gf.tensor(1.0)), RuntimeError)
    assert "0-d" in message and "in_features=3" in message


def test_transpose_out_of_range_like_torch():
    message = _message(lambda: gf.zeros((2, 3)).transpose(0, 5), IndexError)
    assert message.startswith("Dimension out of range (expected to be in range of [-2, 1], but got 5)")
    assert gf.zeros((2, 3)).transpose(-1, 0).shape == (3, 2)


def test_dataloader_batch_size_none():
    from gradflow.data import DataLoader
    message = _message(lambda: DataLoader(_Samples([1, 2]), batch_size=None), ValueError)
    assert "batch_size=None" in message and "positive batch_size" in message
    assert "positive integer" in _message(lambda: DataLoader(_Samples([1]), batch_size="8"), ValueError)


def test_optimizer_argument_errors():
    model = nn.Linear(2, 2)
    assert "betas" in _message(lambda: optim.Adam(model.parameters(), betas=0.9), ValueError)
    assert "pair" in _message(lambda: optim.Adam(model.parameters(), betas=(0.9,)), ValueError)
    message = _message(lambda: optim.SGD(model, lr=0.1), TypeError)
    assert "model.parameters()" in message
    message = _message(lambda: optim.SGD([{"lr": 0.1}], lr=0.1), ValueError)
    assert "'params'" in message
    assert "iterable" in _message(lambda: optim.SGD(3, lr=0.1), TypeError)


def test_cross_entropy_bool_targets_and_0d_logits():
    F = nn.functional
    message = _message(lambda: F.cross_entropy(gf.zeros((3, 2)), gf.tensor([True, False, True])), TypeError)
    assert "bool targets" in message and "int64" in message
    message = _message(lambda: F.cross_entropy(gf.tensor(1.0), gf.tensor(0)), ValueError)
    assert "0-d" in message and "(N, C)" in message
