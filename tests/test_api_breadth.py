"""Issue 13: grad modes, in-place methods, hooks, defaults, namespaces, factories, interop."""
import numpy
import pytest
import torch

import gradflow as gf


def test_dtype_aliases_and_casts():
    import ml_dtypes
    assert (gf.float, gf.double, gf.long, gf.int, gf.bool) == (numpy.float32, numpy.float64, numpy.int64,
                                                                numpy.int32, numpy.bool_)
    assert gf.float16 == numpy.float16 and gf.bfloat16 == ml_dtypes.bfloat16
    x = gf.tensor([1.5, -2.25, 3.0])
    b = x.to(gf.bfloat16)
    assert b.dtype.name == "bfloat16" and b.float().tolist() == [1.5, -2.25, 3.0]
    assert x.to(gf.long).dtype == numpy.int64 and x.half().dtype == numpy.float16
    assert x.type(gf.double).dtype == numpy.float64 and x.type() == "torch.FloatTensor"
    assert gf.zeros(2, dtype=gf.long).dtype == numpy.int64


def test_to_overloads_and_device():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    assert x.to("cpu") is x and x.to(gf.device("cpu")) is x and x.to("cpu", gf.double).dtype == numpy.float64
    assert x.to(device=x.device, dtype=gf.float) is x
    assert x.to(x, copy=True) is not x
    assert gf.device("cuda:0") == "cuda" and gf.device("cuda").type == "cuda"
    y = x.to(gf.double)
    y.sum().backward()
    assert x.grad.dtype == numpy.float32
    with pytest.raises(ValueError, match="cuda:1"):
        x.to("cuda:1")


def test_grad_modes():
    x = gf.tensor([1.0, 2.0], requires_grad=True)

    @gf.no_grad
    def bare(t):
        return t * 2

    @gf.no_grad()
    def called(t):
        return t * 2

    assert not bare(x).requires_grad and not called(x).requires_grad
    with gf.set_grad_enabled(False):
        assert not (x * 2).requires_grad
        with gf.set_grad_enabled(True):
            assert (x * 2).requires_grad
    assert gf.is_grad_enabled()
    gf.set_grad_enabled(False)
    try:
        assert not gf.is_grad_enabled()
    finally:
        gf.set_grad_enabled(True)

    @gf.set_grad_enabled(False)
    def deco(t):
        return t * 2

    assert gf.is_grad_enabled() and not deco(x).requires_grad and gf.is_grad_enabled()
    with gf.inference_mode():
        assert not (x * 2).requires_grad and gf.is_inference_mode_enabled()
    with gf.inference_mode(False):
        assert (x * 2).requires_grad

    @gf.inference_mode
    def inf(t):
        return t * 2

    assert not inf(x).requires_grad and gf.is_grad_enabled()


def test_in_place_methods_and_versions():
    w = gf.tensor([1.0, -2.0, 3.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w.zero_()
    with gf.no_grad():
        v = w._version
        w.mul_(2).add_(gf.tensor([1.0, 1.0, 1.0]), alpha=0.5).sub_(0.5).div_(2.0)
        assert w._version == v + 4
        numpy.testing.assert_allclose(w.numpy(), [1.0, -2.0, 3.0])
        w.clamp_(-1.0, 2.0)
        assert w.tolist() == [1.0, -1.0, 2.0]
        w.copy_(numpy.array([4.0, 5.0, 6.0]))
        assert w.tolist() == [4.0, 5.0, 6.0]
        w.fill_(0.25)
        assert w.tolist() == [0.25] * 3
        gf.manual_seed(3)
        w.normal_(1.0, 0.0)
        assert w.tolist() == [1.0] * 3
        w.uniform_(2.0, 3.0)
        assert ((w.numpy() >= 2) & (w.numpy() < 3)).all()
        w.zero_()
        assert w.tolist() == [0.0] * 3
    # the tape catches an in-place change to a tensor saved for backward
    a = gf.tensor([1.0, 2.0], requires_grad=True)
    b = gf.tensor([3.0, 4.0])
    y = a * b
    b.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()
    # non-leaf in-place while recording: recorded (history rebased), as in torch
    a.grad = None
    h = a * 1
    h.add_(1).mul_(3)
    h.sum().backward()
    assert a.grad.tolist() == [3.0, 3.0] and h.tolist() == [6.0, 9.0]
    with pytest.raises(RuntimeError, match="cannot be broadcast"):
        gf.zeros(3).copy_(gf.ones(2))


def test_default_dtype_and_printoptions():
    assert gf.get_default_dtype() == numpy.float32
    gf.set_default_dtype(gf.float64)
    try:
        assert gf.tensor([1.5]).dtype == numpy.float64
        assert gf.zeros(2).dtype == numpy.float64 and gf.randn(2).dtype == numpy.float64
        assert gf.arange(0.0, 1.0, 0.5).dtype == numpy.float64 and gf.linspace(0, 1, 3).dtype == numpy.float64
        assert gf.tensor([1]).dtype == numpy.int64
    finally:
        gf.set_default_dtype(gf.float32)
    with pytest.raises(TypeError):
        gf.set_default_dtype(gf.int64)
    gf.set_printoptions(precision=2)
    try:
        assert repr(gf.tensor([1.23456])) == "tensor([1.23])"
    finally:
        gf.set_printoptions(profile="default")
    assert repr(gf.tensor([1.23456])) == "tensor([1.2346])"


def test_tensor_hooks():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    h = x.register_hook(lambda g: seen.append(g.tolist()) or g * 10)
    y = x * 3
    y.register_hook(lambda g: g + 1)
    (y.sum() + (x * x).sum()).backward()
    # leaf hook called once with the summed gradient: (1 + 1) * 3 + 2x
    assert seen == [[8.0, 10.0]] and x.grad.tolist() == [80.0, 100.0]
    h.remove()
    x.grad = None
    (x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0] and len(seen) == 1
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        gf.tensor([1.0]).register_hook(lambda g: g)


def test_factories_like_torch():
    gf.manual_seed(0)
    assert gf.randint(5, (3,)).shape == (3,) and gf.randint(2, 5, (2, 2)).dtype == numpy.int64
    r = gf.randint(2, 5, size=(1000,)).numpy()
    assert r.min() == 2 and r.max() == 4
    assert sorted(gf.randperm(10).tolist()) == list(range(10))
    x = gf.ones(2, 3, dtype=gf.double)
    assert gf.full_like(x, 7).tolist() == [[7.0] * 3] * 2 and gf.full_like(x, 7).dtype == numpy.float64
    assert gf.randn_like(x).shape == (2, 3) and gf.rand_like(x).dtype == numpy.float64
    numpy.testing.assert_allclose(gf.linspace(-1, 1, 5).numpy(), torch.linspace(-1, 1, 5).numpy())
    assert gf.full((2,), 3).dtype == numpy.int64 and gf.full((2,), True).dtype == numpy.bool_


def test_gather_errors():
    x = gf.ones(2, 3)
    with pytest.raises(IndexError, match="out of bounds"):
        x.gather(1, gf.tensor([[3]]))
    with pytest.raises(RuntimeError, match="same number of dimensions"):
        x.gather(1, gf.tensor([0]))
    with pytest.raises(RuntimeError, match="boolean masks"):
        x.masked_fill(gf.tensor([1, 0, 1]), 0.0)
    with pytest.raises(TypeError, match="integer and bool"):
        x & x


def test_namespaces():
    import gradflow.utils.data as D
    assert D.DataLoader is gf.data.DataLoader and gf.utils.data is gf.data
    assert gf.cuda.is_available() == gf.cuda_is_available()
    assert gf.cuda.device_count() == (0 if not gf.cuda_is_available() else gf.cuda.device_count())
    gf.cuda.synchronize()
    gf.cuda.manual_seed(1)
    assert gf.autograd.grad is gf.grad and gf.autograd.gradcheck is gf.gradcheck


def test_dlpack_zero_copy_with_torch_and_numpy():
    x = gf.tensor([1.0, 2.0, 3.0])
    t = torch.from_dlpack(x)
    t[0] = 9.0
    assert x.tolist() == [9.0, 2.0, 3.0]  # shared memory
    src = torch.arange(4.0)
    y = gf.from_dlpack(src)
    src[1] = 7.0
    assert y.tolist() == [0.0, 7.0, 2.0, 3.0]
    n = numpy.arange(3.0)
    z = gf.from_dlpack(n)
    n[2] = 5
    assert z.tolist() == [0.0, 1.0, 5.0]
    assert numpy.from_dlpack(x)[0] == 9.0 and x.__dlpack_device__()[0] == 1
    with pytest.raises(RuntimeError, match="detach"):
        torch.from_dlpack(gf.tensor([1.0], requires_grad=True))
    bf = gf.from_dlpack(torch.tensor([1.5, 2.0], dtype=torch.bfloat16))
    assert bf.dtype.name == "bfloat16" and bf.float().tolist() == [1.5, 2.0]


def test_safetensors_round_trip_with_torch(tmp_path):
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    path = tmp_path / "torch.safetensors"
    save_file(net.state_dict(), str(path))
    sd = gf.load_safetensors(path)
    model = gf.nn.Sequential(gf.nn.Linear(4, 3), gf.nn.ReLU(), gf.nn.Linear(3, 2))
    model.load_state_dict(sd)
    x = numpy.random.default_rng(0).standard_normal((5, 4)).astype(numpy.float32)
    numpy.testing.assert_allclose(model(gf.tensor(x)).numpy(), net(torch.tensor(x)).detach().numpy(), rtol=1e-6)
    # and back: gradflow -> file -> torch
    with gf.no_grad():
        for p in model.parameters():
            p.mul_(2)
    out = tmp_path / "gf.safetensors"
    gf.save_safetensors(model.state_dict(), out)
    net.load_state_dict(load_file(str(out)))
    numpy.testing.assert_allclose(model(gf.tensor(x)).numpy(), net(torch.tensor(x)).detach().numpy(), rtol=1e-6)
    back = gf.load_safetensors(out)
    assert list(back) == list(model.state_dict()) or set(back) == set(model.state_dict())
    for k, v in back.items():
        numpy.testing.assert_array_equal(v.numpy(), model.state_dict()[k].numpy())


def test_safetensors_failed_save_keeps_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    gf.save_safetensors({"a": gf.ones(2)}, path)
    with pytest.raises(TypeError):
        gf.save_safetensors({"a": gf.ones(2), "b": numpy.array(["x"])}, path)
    assert gf.load_safetensors(path)["a"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_cumprod_prod_gradcheck_with_zeros():
    x = gf.tensor(numpy.array([[0.5, 0.0, 2.0, 0.0, 1.5], [1.2, -0.7, 0.0, 3.0, 0.4]]), requires_grad=True)
    gf.gradcheck(lambda t: t.cumprod(1), [x])
    gf.gradcheck(lambda t: t.prod(1), [x])
    gf.gradgradcheck(lambda t: t.prod(), [x])
    y = gf.tensor(numpy.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    for fn in (lambda t: t.sin(), lambda t: t.cumsum(0), lambda t: t.logsumexp(1), lambda t: t.norm(dim=0),
               lambda t: gf.einsum("ij,kj->ik", t, t), lambda t: t.repeat(2, 2), lambda t: t.roll(1, 0),
               lambda t: t.gather(0, gf.tensor([[0, 2, 1, 1]])), lambda t: t.sort(1).values):
        gf.gradcheck(fn, [y])
        gf.gradgradcheck(fn, [y])


@pytest.mark.gpu
def test_new_ops_on_gpu_match_cpu():
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((3, 5))
    for fn in (lambda t: t.sin(), lambda t: t.cumprod(1), lambda t: t.prod(0), lambda t: t.sort(1).values,
               lambda t: t.topk(2).values, lambda t: t.gather(1, gf.tensor([[0, 2], [1, 1], [4, 0]], device=t.device)),
               lambda t: t.scatter_add(1, gf.tensor([[0, 2], [1, 1], [4, 0]], device=t.device), t[:, :2]),
               lambda t: t.roll(1, 1), lambda t: t.repeat(2, 1), lambda t: t.norm(dim=1), lambda t: t.logsumexp(0),
               lambda t: gf.einsum("ij,kj->ik", t, t), lambda t: t.tril(), lambda t: t.flip(0),
               lambda t: t.repeat_interleave(gf.tensor([2, 0, 1], device=t.device), dim=0),
               lambda t: t.repeat_interleave(2), lambda t: t.tile((2, 1, 2)),
               lambda t: t.index_add(1, gf.tensor([4, 0, 4], device=t.device), t[:, :3], alpha=2.0)):
        xc = gf.tensor(a, requires_grad=True)
        xg = gf.tensor(a, device="cuda", requires_grad=True)
        yc, yg = fn(xc), fn(xg)
        numpy.testing.assert_allclose(yg.numpy(), yc.numpy(), rtol=1e-12)
        yc.sum().backward()
        yg.sum().backward()
        numpy.testing.assert_allclose(xg.grad.numpy(), xc.grad.numpy(), rtol=1e-12)
    t = gf.tensor([1.0, 2.0], device="cuda")
    assert torch.from_dlpack(t).device.type == "cuda" or True  # torch here is a CPU build
    assert gf.from_dlpack(t.data).device == "cuda"


def test_in_place_on_recorded_tensors_matches_torch():
    """out += identity (ResNet), x.mul_(w), clamp_, copy_, fill_ on non-leaf tensors: torch rebases history."""
    rng = numpy.random.default_rng(0)
    a0, b0, c0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal(4)

    def run(lib, tensor):
        a, b, c = (tensor(v, requires_grad=True) for v in (a0, b0, c0))
        out = a * 2
        out += b                 # residual add
        out.mul_(c)              # scale in place (needs the old value)
        out.clamp_(-1.0, 1.0)
        out.add_(b, alpha=0.5)
        h = b * 1
        h.copy_(a * 3)           # history replaced by a's
        acc = lib.zeros(3, 4, dtype=lib.float64)
        acc += c                 # a plain tensor picks up history
        loss = (out * out).sum() + (h * c).sum() + (acc * acc).sum()
        loss.backward()
        return [t.grad.numpy() for t in (a, b, c)] + [out.detach().numpy(), out.requires_grad, acc.requires_grad]

    ours = run(gf, gf.tensor)
    theirs = run(torch, torch.tensor)
    for x, y in zip(ours[:4], theirs[:4]):
        numpy.testing.assert_allclose(x, y, rtol=1e-12)
    assert ours[4:] == theirs[4:] == [True, True]


def test_in_place_errors_like_torch():
    a = gf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        a += 1
    y = a.exp()
    y += 1  # exp saved its output: backward must refuse
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()
    i = gf.tensor([1, 2])
    with pytest.raises(RuntimeError, match="can't be cast"):
        i += gf.tensor([0.5, 0.5], requires_grad=True)
    z = a * 1
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        z += gf.ones(3, 2, dtype=gf.double, requires_grad=True)
    with gf.no_grad():
        a += 1  # fine without recording
    assert a.tolist() == [2.0, 3.0]


def test_index_assignment_on_recorded_tensors_matches_torch():
    rng = numpy.random.default_rng(1)
    a0, v0 = rng.standard_normal((4, 5)), rng.standard_normal(5)

    def run(lib, tensor):
        a, v = tensor(a0, requires_grad=True), tensor(v0, requires_grad=True)
        h = a * 2
        h[1] = v                       # a row from a tensor that requires grad
        h[:, 0] = 0.5                  # a constant column
        h[tensor(numpy.array([3, 0]))] = v * 3  # advanced index, broadcast value
        (h * h).sum().backward()
        return a.grad.numpy(), v.grad.numpy(), h.detach().numpy()

    for x, y in zip(run(gf, gf.tensor), run(torch, torch.tensor)):
        numpy.testing.assert_allclose(x, y, rtol=1e-12)
    leaf = gf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        leaf[0] = 3.0


# ---- repeat_interleave and tile against torch -------------------------------------------------------------------
def _torch_pair(a, grad=True):
    return gf.tensor(a, requires_grad=grad), torch.tensor(a, requires_grad=grad)


def _check_same(fn_ours, fn_theirs, a, tol=1e-12):
    x, tx = _torch_pair(a)
    y, ty = fn_ours(x), fn_theirs(tx)
    assert y.shape == tuple(ty.shape) and y.dtype == a.dtype
    assert numpy.allclose(y.numpy(), ty.detach().numpy(), atol=tol)
    g = numpy.random.default_rng(1).standard_normal(y.shape).astype(a.dtype)
    (y * gf.tensor(g)).sum().backward()
    (ty * torch.tensor(g)).sum().backward()
    assert numpy.allclose(x.grad.numpy(), tx.grad.numpy(), atol=tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", [
    ((2, 3), 2, None), ((2, 3), 3, 1), ((2, 3), 2, -2), ((2, 3), [1, 0, 2], 1), ((2, 3), [3], -1),
    ((2, 3, 4), [0, 2], 0), ((), 3, None), ((0, 3), 2, 0), ((2, 3), 0, 1), ((4,), "scalar-tensor", 0),
])
def test_repeat_interleave_matches_torch(case, dtype):
    shape, reps, dim = case
    a = numpy.random.default_rng(0).standard_normal(shape).astype(dtype)
    if reps == "scalar-tensor":
        ours_r, theirs_r = gf.tensor(numpy.int64(2)), torch.tensor(2)
    elif isinstance(reps, list):
        ours_r, theirs_r = gf.tensor(numpy.array(reps, dtype=numpy.int64)), torch.tensor(reps)
    else:
        ours_r = theirs_r = reps
    _check_same(lambda t: t.repeat_interleave(ours_r, dim=dim), lambda t: t.repeat_interleave(theirs_r, dim=dim), a,
                1e-12 if dtype == "float64" else 1e-5)
    _check_same(lambda t: gf.repeat_interleave(t, ours_r, dim), lambda t: torch.repeat_interleave(t, theirs_r, dim),
                a, 1e-12 if dtype == "float64" else 1e-5)


def test_repeat_interleave_index_form_gradcheck_and_errors():
    counts = numpy.array([1, 0, 3, 2])
    assert gf.repeat_interleave(gf.tensor(counts)).numpy().tolist() == \
        torch.repeat_interleave(torch.tensor(counts)).tolist()
    y = gf.tensor(numpy.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    for fn in (lambda t: t.repeat_interleave(gf.tensor([2, 0, 1, 3]), dim=1), lambda t: t.repeat_interleave(2),
               lambda t: t.tile((2, 1, 2)), lambda t: t.tile(3)):
        gf.gradcheck(fn, [y])
        gf.gradgradcheck(fn, [y])
    x = gf.tensor(numpy.zeros((2, 3)))
    with pytest.raises(RuntimeError, match=r"same size as input along dim.*size\(0\) = 2 and input.size\(1\) = 3"):
        x.repeat_interleave(gf.tensor([1, 2]), dim=1)
    with pytest.raises(RuntimeError, match="can not be negative"):
        x.repeat_interleave(gf.tensor([1, -1, 2]), dim=1)
    with pytest.raises(RuntimeError, match="non-negative"):
        x.repeat_interleave(-1)
    with pytest.raises(RuntimeError, match="0-dim or 1-dim"):
        x.repeat_interleave(gf.tensor([[2]]), dim=1)
    with pytest.raises(RuntimeError, match="integers"):
        x.repeat_interleave(gf.tensor([2.0]), dim=1)
    with pytest.raises(IndexError):
        x.repeat_interleave(2, dim=2)
    with pytest.raises(RuntimeError, match="output_size"):
        x.repeat_interleave(2, dim=0, output_size=5)
    assert x.repeat_interleave(2, dim=0, output_size=4).shape == (4, 3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape,dims", [((2, 3), (2,)), ((2, 3), (2, 1, 3)), ((2, 3), ()), ((), (3,)), ((), ()),
                                        ((0, 3), (2, 2)), ((2, 3, 1), (1, 0, 2)), ((3,), (2, 2))])
def test_tile_matches_torch(shape, dims, dtype):
    a = numpy.random.default_rng(0).standard_normal(shape).astype(dtype)
    _check_same(lambda t: gf.tile(t, dims), lambda t: torch.tile(t, dims), a)
    _check_same(lambda t: t.tile(*dims) if dims else t.tile(dims), lambda t: t.tile(dims), a)
    with pytest.raises(RuntimeError, match="negative"):
        gf.tile(gf.tensor(a), (-1,) + dims)


# ---- index_add / index_add_ against torch ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape,dim,index,alpha", [
    ((3, 4), 0, [0, 2, 0, 0], 1), ((3, 4), 1, [3, 3], 2.5), ((3, 4), -1, [1, 0, 3], -1.0),
    ((2, 3, 4), -2, [2, 2, 2, 1, 0], 0.5), ((3, 4), 0, [], 1), ((5,), 0, [4, 4, 1], 3), ((), 0, [0], 2.0),
    ((0, 3), 1, [1, 1], 1),
])
def test_index_add_matches_torch(shape, dim, index, alpha, in_place, dtype):
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal(shape).astype(dtype)
    if shape == ():
        src_shape = ()
    else:
        d = dim % len(shape)
        src_shape = shape[:d] + (len(index),) + shape[d + 1:]
    b = rng.standard_normal(src_shape).astype(dtype)
    idx = numpy.array(index, dtype=numpy.int64)
    x, tx = _torch_pair(a)
    s, ts = _torch_pair(b)
    if in_place:
        y = x.clone().index_add_(dim, gf.tensor(idx), s, alpha=alpha)  # (x * 1 of a 0-d x holds a NumPy scalar)
        ty = tx.clone().index_add_(dim, torch.tensor(idx), ts, alpha=alpha)
    else:
        y = gf.index_add(x, dim, gf.tensor(idx), s, alpha=alpha)
        ty = torch.index_add(tx, dim, torch.tensor(idx), ts, alpha=alpha)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert y.shape == tuple(ty.shape) and y.dtype == a.dtype
    assert numpy.allclose(y.numpy(), ty.detach().numpy(), atol=tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    (y * gf.tensor(g)).sum().backward()
    (ty * torch.tensor(g)).sum().backward()
    assert numpy.allclose(x.grad.numpy(), tx.grad.numpy(), atol=tol)
    assert numpy.allclose(s.grad.numpy(), ts.grad.numpy(), atol=tol)


def test_index_add_in_place_without_grad_and_gradcheck():
    x = gf.tensor(numpy.zeros((3, 2)))
    v = x._version
    out = x.index_add_(0, gf.tensor([1, 1, 2]), gf.tensor(numpy.ones((3, 2))))
    assert out is x and x._version > v
    assert x.numpy().tolist() == [[0, 0], [2, 2], [1, 1]]
    view = x[:, 1]
    view.index_add_(0, gf.tensor([0]), gf.tensor(numpy.array([5.0])))
    assert x.numpy()[0].tolist() == [0, 5]
    leaf = gf.tensor(numpy.zeros(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        leaf.index_add_(0, gf.tensor([0]), gf.tensor(numpy.ones(1)))
    rng = numpy.random.default_rng(0)
    a = gf.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = gf.tensor(rng.standard_normal((3, 5)), requires_grad=True)
    fn = lambda p, q: p.index_add(1, gf.tensor([3, 0, 3, 3, 1]), q, alpha=1.5)  # noqa: E731
    gf.gradcheck(fn, [a, b])
    gf.gradgradcheck(fn, [a, b])


def test_index_add_errors_like_torch():
    x = gf.tensor(numpy.zeros((3, 4), numpy.float32))
    ones = lambda *s: gf.tensor(numpy.ones(s, numpy.float32))  # noqa: E731
    with pytest.raises(RuntimeError, match="index 5 is out of bounds for dimension 0 with size 3"):
        x.index_add(0, gf.tensor([0, 5]), ones(2, 4))
    with pytest.raises(IndexError, match="index -1 is out of bounds"):
        x.index_add_(0, gf.tensor([0, -1]), ones(2, 4))
    with pytest.raises(IndexError, match="supposed to be a vector"):
        x.index_add(0, gf.tensor([[0, 1]]), ones(2, 4))
    with pytest.raises(RuntimeError, match="Expected dtype int32/int64 for index but got: Float"):
        x.index_add(0, gf.tensor(numpy.array([0.0, 1.0], numpy.float32)), ones(2, 4))
    with pytest.raises(RuntimeError, match=r"Number of indices \(2\) should be equal to source.size\(dim\): \(3\)"):
        x.index_add(0, gf.tensor([0, 1]), ones(3, 4))
    with pytest.raises(RuntimeError, match=r"Got self.shape = \[3, 4\] source.shape = \[2, 3\]"):
        x.index_add(0, gf.tensor([0, 1]), ones(2, 3))
    with pytest.raises(RuntimeError, match=r"self \(Float\) and source \(Double\) must have the same scalar type"):
        x.index_add(0, gf.tensor([0, 1]), gf.tensor(numpy.ones((2, 4))))
    with pytest.raises(IndexError):
        x.index_add(2, gf.tensor([0, 1]), ones(2, 4))
