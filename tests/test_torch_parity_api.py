"""Issue 13's names against PyTorch, table-driven: values, dtypes, shapes and float64 gradients.

Each row: (name, gradflow call, torch call, inputs). Inputs are specs turned into the same
NumPy data for both libraries; float inputs are float64 and require grad, so the gradient
of sum(r * output) (r fixed random) is compared for every differentiable output too.
(To be merged into tests/test_torch_parity.py, issue 9's table, by the lead.)
"""
import numpy
import pytest
import torch

import gradflow as gf
import gradflow.nn.functional as GF
import torch.nn.functional as TF


def F(*shape, low=None, high=None, positive=False, ties=False):
    return ("f", shape, dict(low=low, high=high, positive=positive, ties=ties))


def I(*shape, low=0, high=5):
    return ("i", shape, dict(low=low, high=high))


def B(*shape):
    return ("b", shape, {})


def C(value):
    return ("c", value, {})  # a constant passed as is to both


def _make(spec, rng):
    kind, shape, kw = spec
    if kind == "c":
        return shape
    if kind == "i":
        return rng.integers(kw["low"], kw["high"], size=shape).astype(numpy.int64)
    if kind == "b":
        return rng.random(shape) > 0.5
    if kw["ties"]:
        return rng.integers(-3, 3, size=shape).astype(numpy.float64)
    if kw["low"] is not None:
        return rng.uniform(kw["low"], kw["high"], size=shape)
    a = rng.standard_normal(shape)
    return numpy.abs(a) + 0.5 if kw["positive"] else a


IDX = numpy.array([[0, 2, 1], [1, 0, 0]])
MASK = numpy.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])

ROWS = [
    # elementwise math
    ("sin", lambda x: x.sin(), lambda x: x.sin(), [F(3, 4)]),
    ("cos", lambda x: gf.cos(x), lambda x: torch.cos(x), [F(3, 4)]),
    ("exp2", lambda x: x.exp2(), lambda x: x.exp2(), [F(3, 4)]),
    ("log2", lambda x: x.log2(), lambda x: x.log2(), [F(3, 4, positive=True)]),
    ("log10", lambda x: gf.log10(x), lambda x: torch.log10(x), [F(3, 4, positive=True)]),
    ("rsqrt", lambda x: x.rsqrt(), lambda x: x.rsqrt(), [F(3, 4, positive=True)]),
    ("floor", lambda x: x.floor(), lambda x: x.floor(), [F(3, 4)]),
    ("ceil", lambda x: gf.ceil(x), lambda x: torch.ceil(x), [F(3, 4)]),
    ("round", lambda x: (x * 3).round(), lambda x: (x * 3).round(), [F(3, 4)]),
    ("round_decimals", lambda x: x.round(decimals=2), lambda x: x.round(decimals=2), [F(3, 4)]),
    ("sign", lambda x: x.sign(), lambda x: x.sign(), [F(3, 4)]),
    ("trunc", lambda x: gf.trunc(x * 3), lambda x: torch.trunc(x * 3), [F(3, 4)]),
    ("neg", lambda x: x.neg(), lambda x: x.neg(), [F(3, 4)]),
    ("pow", lambda x: x.pow(3), lambda x: x.pow(3), [F(3, 4)]),
    ("add_alpha", lambda x, y: x.add(y, alpha=2), lambda x, y: x.add(y, alpha=2), [F(3, 4), F(4)]),
    ("sub_alpha", lambda x, y: x.sub(y, alpha=0.5), lambda x, y: x.sub(y, alpha=0.5), [F(3, 4), F(3, 1)]),
    ("mul", lambda x, y: x.mul(y), lambda x, y: x.mul(y), [F(3, 4), F(4)]),
    ("div", lambda x, y: x.div(y), lambda x, y: x.div(y), [F(3, 4), F(4, positive=True)]),
    ("div_int", lambda x, y: gf.div(x, y), lambda x, y: torch.div(x, y), [I(3, 4), I(4, low=1)]),
    ("div_floor", lambda x, y: x.div(y, rounding_mode="floor"), lambda x, y: x.div(y, rounding_mode="floor"),
     [I(3, 4, low=-9, high=9), I(4, low=1)]),
    ("div_trunc", lambda x, y: x.div(y, rounding_mode="trunc"), lambda x, y: x.div(y, rounding_mode="trunc"),
     [I(3, 4, low=-9, high=9), I(4, low=1)]),
    ("mod", lambda x, y: x % y, lambda x, y: x % y, [F(3, 4), F(4, low=0.5, high=2)]),
    ("mod_int", lambda x, y: x % y, lambda x, y: x % y, [I(3, 4, low=-9, high=9), I(4, low=1, high=4)]),
    ("floordiv", lambda x, y: x // y, lambda x, y: x // y, [I(3, 4, low=-9, high=9), I(4, low=1, high=4)]),
    ("floordiv_float", lambda x: x.detach() // 0.3, lambda x: x.detach() // 0.3, [F(3, 4)]),  # torch: grad_fn=NotImplemented
    ("and", lambda a, b: a & b, lambda a, b: a & b, [B(3, 4), B(3, 4)]),
    ("or", lambda a, b: a | b, lambda a, b: a | b, [B(3, 4), B(4)]),
    ("xor", lambda a, b: a ^ b, lambda a, b: a ^ b, [I(3, 4), I(3, 4)]),
    ("invert", lambda a: ~a, lambda a: ~a, [B(3, 4)]),
    ("invert_int", lambda a: ~a, lambda a: ~a, [I(3, 4)]),
    ("clamp_min", lambda x: x.clamp_min(0.1), lambda x: x.clamp_min(0.1), [F(3, 4)]),
    ("clamp_max", lambda x: x.clamp_max(0.1), lambda x: x.clamp_max(0.1), [F(3, 4)]),
    ("lerp", lambda a, b: a.lerp(b, 0.3), lambda a, b: a.lerp(b, 0.3), [F(3, 4), F(3, 4)]),
    ("lerp_tensor", lambda a, b, w: gf.lerp(a, b, w), lambda a, b, w: torch.lerp(a, b, w), [F(3, 4), F(3, 4), F(3, 4)]),
    ("relu", lambda x: x.relu(), lambda x: x.relu(), [F(3, 4)]),
    ("sigmoid", lambda x: x.sigmoid(), lambda x: x.sigmoid(), [F(3, 4)]),
    ("tanh", lambda x: x.tanh(), lambda x: x.tanh(), [F(3, 4)]),
    ("softmax", lambda x: x.softmax(0), lambda x: x.softmax(0), [F(3, 4)]),
    ("log_softmax", lambda x: x.log_softmax(dim=1), lambda x: x.log_softmax(dim=1), [F(3, 4)]),
    # comparisons and predicates
    ("eq", lambda a, b: a.eq(b), lambda a, b: a.eq(b), [F(3, 4, ties=True), F(4, ties=True)]),
    ("ne", lambda a, b: a.ne(b), lambda a, b: a.ne(b), [F(3, 4, ties=True), F(4, ties=True)]),
    ("lt", lambda a: a.lt(0), lambda a: a.lt(0), [F(3, 4)]),
    ("le", lambda a, b: a.le(b), lambda a, b: a.le(b), [F(3, 4, ties=True), F(3, 4, ties=True)]),
    ("gt", lambda a: a.gt(0.5), lambda a: a.gt(0.5), [F(3, 4)]),
    ("ge", lambda a, b: a.ge(b), lambda a, b: a.ge(b), [I(3, 4), I(3, 4)]),
    ("all", lambda a: a.all(), lambda a: a.all(), [B(3, 4)]),
    ("all_dim", lambda a: a.all(dim=1), lambda a: a.all(dim=1), [B(3, 4)]),
    ("any", lambda a: a.any(), lambda a: a.any(), [B(3, 4)]),
    ("any_dim_keep", lambda a: gf.any(a, 0, keepdim=True), lambda a: torch.any(a, 0, keepdim=True), [B(3, 4)]),
    ("isnan", lambda x: (x.log()).isnan(), lambda x: (x.log()).isnan(), [F(3, 4)]),
    ("isinf", lambda x: (1 / x.floor()).isinf(), lambda x: (1 / x.floor()).isinf(), [F(3, 4)]),
    ("isfinite", lambda x: x.log().isfinite(), lambda x: x.log().isfinite(), [F(3, 4)]),
    ("isclose", lambda a, b: gf.isclose(a, a + b * 1e-7), lambda a, b: torch.isclose(a, a + b * 1e-7), [F(3, 4), F(3, 4)]),
    ("allclose", lambda a, b: gf.allclose(a, a + b * 1e-9), lambda a, b: torch.allclose(a, a + b * 1e-9), [F(3, 4), F(3, 4)]),
    ("equal", lambda a: gf.equal(a, a * 1), lambda a: torch.equal(a, a * 1), [F(3, 4)]),
    ("not_equal", lambda a, b: gf.equal(a, b), lambda a, b: torch.equal(a, b), [F(3, 4), F(3, 4)]),
    # shapes
    ("t", lambda x: x.t(), lambda x: x.t(), [F(3, 4)]),
    ("t_1d", lambda x: x.t(), lambda x: x.t(), [F(4)]),
    ("view_as", lambda x, y: x.view_as(y), lambda x, y: x.view_as(y), [F(3, 4), F(2, 6)]),
    ("expand", lambda x: x.expand(2, 3, 4), lambda x: x.expand(2, 3, 4), [F(3, 1)]),
    ("expand_minus_one", lambda x: x.expand(2, -1, 4), lambda x: x.expand(2, -1, 4), [F(3, 1)]),
    ("expand_as", lambda x, y: x.expand_as(y), lambda x, y: x.expand_as(y), [F(3, 1), F(2, 3, 5)]),
    ("contiguous", lambda x: x.t().contiguous(), lambda x: x.t().contiguous(), [F(3, 4)]),
    ("repeat", lambda x: x.repeat(2, 1, 3), lambda x: x.repeat(2, 1, 3), [F(3, 4)]),
    ("flip", lambda x: x.flip(0, 2), lambda x: x.flip(0, 2), [F(2, 3, 4)]),
    ("flip_list", lambda x: gf.flip(x, [1]), lambda x: torch.flip(x, [1]), [F(2, 3, 4)]),
    ("roll", lambda x: x.roll(2, 1), lambda x: x.roll(2, 1), [F(3, 4)]),
    ("roll_flat", lambda x: x.roll(-3), lambda x: x.roll(-3), [F(3, 4)]),
    ("roll_multi", lambda x: gf.roll(x, (1, -1), (0, 1)), lambda x: torch.roll(x, (1, -1), (0, 1)), [F(3, 4)]),
    ("tril", lambda x: x.tril(), lambda x: x.tril(), [F(4, 4)]),
    ("triu_k", lambda x: x.triu(1), lambda x: x.triu(1), [F(2, 3, 4)]),
    ("tril_neg", lambda x: gf.tril(x, -1), lambda x: torch.tril(x, -1), [F(3, 5)]),
    ("chunk", lambda x: x.chunk(3, 1), lambda x: x.chunk(3, 1), [F(2, 7)]),
    ("chunk_uneven", lambda x: gf.chunk(x, 4), lambda x: torch.chunk(x, 4), [F(6, 2)]),
    ("split", lambda x: x.split(2, 1), lambda x: x.split(2, 1), [F(2, 5)]),
    ("split_sizes", lambda x: gf.split(x, [1, 3, 1], 1), lambda x: torch.split(x, [1, 3, 1], 1), [F(2, 5)]),
    ("unbind", lambda x: x.unbind(1), lambda x: x.unbind(1), [F(2, 3)]),
    # indexing
    ("masked_fill", lambda x: x.masked_fill(gf.tensor(MASK), -1.5), lambda x: x.masked_fill(torch.tensor(MASK), -1.5),
     [F(3, 4)]),
    ("masked_fill_bcast", lambda x: x.masked_fill(gf.tensor(MASK[0]), 0.0),
     lambda x: x.masked_fill(torch.tensor(MASK[0]), 0.0), [F(3, 4)]),
    ("gather", lambda x: x.gather(1, gf.tensor(IDX)), lambda x: x.gather(1, torch.tensor(IDX)), [F(2, 4)]),
    ("gather_dim0", lambda x: gf.gather(x, 0, gf.tensor(IDX)), lambda x: torch.gather(x, 0, torch.tensor(IDX)),
     [F(3, 5)]),
    ("scatter", lambda x, s: x.scatter(1, gf.tensor([[0, 2, 1], [3, 0, 1]]), s),
     lambda x, s: x.scatter(1, torch.tensor([[0, 2, 1], [3, 0, 1]]), s), [F(2, 4), F(2, 3)]),
    ("scatter_value", lambda x: x.scatter(1, gf.tensor(IDX[:, :2]), 2.5),
     lambda x: x.scatter(1, torch.tensor(IDX[:, :2]), 2.5), [F(2, 4)]),
    ("scatter_add", lambda x, s: x.scatter_add(1, gf.tensor(IDX), s), lambda x, s: x.scatter_add(1, torch.tensor(IDX), s),
     [F(2, 4), F(2, 3)]),
    ("scatter_add_dim0", lambda x, s: gf.scatter_add(x, 0, gf.tensor(IDX), s),
     lambda x, s: torch.scatter_add(x, 0, torch.tensor(IDX), s), [F(3, 4), F(2, 3)]),
    # sorting and reductions
    ("topk", lambda x: x.topk(2), lambda x: x.topk(2), [F(3, 5)]),
    ("topk_smallest", lambda x: gf.topk(x, 3, dim=0, largest=False), lambda x: torch.topk(x, 3, dim=0, largest=False),
     [F(4, 3)]),
    ("sort", lambda x: x.sort(), lambda x: x.sort(), [F(3, 5)]),
    ("sort_desc_stable", lambda x: x.sort(dim=0, descending=True, stable=True),
     lambda x: x.sort(dim=0, descending=True, stable=True), [F(6, 3, ties=True)]),
    ("sort_stable", lambda x: gf.sort(x, stable=True), lambda x: torch.sort(x, stable=True), [F(3, 8, ties=True)]),
    ("argsort", lambda x: x.argsort(dim=0, stable=True), lambda x: x.argsort(dim=0, stable=True), [F(5, 3, ties=True)]),
    ("argsort_desc", lambda x: gf.argsort(x, descending=True, stable=True),
     lambda x: torch.argsort(x, descending=True, stable=True), [I(3, 7)]),
    ("cumsum", lambda x: x.cumsum(1), lambda x: x.cumsum(1), [F(3, 4)]),
    ("cumsum_int", lambda x: gf.cumsum(x, 0), lambda x: torch.cumsum(x, 0), [I(3, 4)]),
    ("cumsum_bool", lambda x: gf.cumsum(x, -1), lambda x: torch.cumsum(x, -1), [B(3, 4)]),
    ("cumprod", lambda x: x.cumprod(1), lambda x: x.cumprod(1), [F(3, 5)]),
    ("cumprod_zeros", lambda x: (x * gf.tensor(MASK.astype(numpy.float64))).cumprod(1),
     lambda x: (x * torch.tensor(MASK.astype(numpy.float64))).cumprod(1), [F(3, 4)]),
    ("prod", lambda x: x.prod(), lambda x: x.prod(), [F(3, 4)]),
    ("prod_dim", lambda x: x.prod(1, keepdim=True), lambda x: x.prod(1, keepdim=True), [F(3, 4)]),
    ("prod_zero", lambda x: (x * gf.tensor(MASK.astype(numpy.float64))).prod(0),
     lambda x: (x * torch.tensor(MASK.astype(numpy.float64))).prod(0), [F(3, 4)]),
    ("prod_int", lambda x: gf.prod(x, 1), lambda x: torch.prod(x, 1), [I(3, 4)]),
    ("norm", lambda x: x.norm(), lambda x: x.norm(), [F(3, 4)]),
    ("norm_dim", lambda x: x.norm(dim=1, keepdim=True), lambda x: x.norm(dim=1, keepdim=True), [F(3, 4)]),
    ("norm_p1", lambda x: gf.norm(x, 1, dim=0), lambda x: torch.norm(x, 1, dim=0), [F(3, 4)]),
    ("norm_p3", lambda x: x.norm(3), lambda x: x.norm(3), [F(3, 4)]),
    ("norm_inf", lambda x: x.norm(float("inf"), dim=1), lambda x: x.norm(float("inf"), dim=1), [F(3, 4)]),
    ("norm_zero_grad", lambda x: (x * 0).norm(), lambda x: (x * 0).norm(), [F(3, 4)]),
    ("std", lambda x: x.std(), lambda x: x.std(), [F(3, 4)]),
    ("std_dim", lambda x: gf.std(x, 1, keepdim=True), lambda x: torch.std(x, 1, keepdim=True), [F(3, 4)]),
    ("logsumexp", lambda x: x.logsumexp(1), lambda x: x.logsumexp(1), [F(3, 4)]),
    ("logsumexp_big", lambda x: gf.logsumexp(x * 1000, (0, 1), keepdim=True),
     lambda x: torch.logsumexp(x * 1000, (0, 1), keepdim=True), [F(3, 4)]),
    # linear algebra, creation-ish
    ("einsum_mm", lambda a, b: gf.einsum("ij,jk->ik", a, b), lambda a, b: torch.einsum("ij,jk->ik", a, b),
     [F(3, 4), F(4, 2)]),
    ("einsum_batch", lambda a, b: gf.einsum("bij,bjk->bik", a, b), lambda a, b: torch.einsum("bij,bjk->bik", a, b),
     [F(2, 3, 4), F(2, 4, 5)]),
    ("einsum_implicit", lambda a, b: gf.einsum("ij,kj", a, b), lambda a, b: torch.einsum("ij,kj", a, b),
     [F(3, 4), F(2, 4)]),
    ("einsum_sum_only", lambda a: gf.einsum("ij->j", a), lambda a: torch.einsum("ij->j", a), [F(3, 4)]),
    ("einsum_outer_ellipsis", lambda a, b: gf.einsum("...i,...j->...ij", a, b),
     lambda a, b: torch.einsum("...i,...j->...ij", a, b), [F(2, 3), F(2, 4)]),
    ("einsum_dot_list", lambda a, b: gf.einsum("i,i->", [a, b]), lambda a, b: torch.einsum("i,i->", [a, b]),
     [F(5), F(5)]),
    ("einsum_trace", lambda a: gf.einsum("ii->", a), lambda a: torch.einsum("ii->", a), [F(4, 4)]),
    ("einsum_diag_mixed", lambda a, b: gf.einsum("iij,jk->ik", a, b), lambda a, b: torch.einsum("iij,jk->ik", a, b),
     [F(3, 3, 4), F(4, 2)]),
    ("einsum_diag_out", lambda a: gf.einsum("ii->i", a), lambda a: torch.einsum("ii->i", a), [F(3, 3)]),
    ("bmm", lambda a, b: gf.bmm(a, b), lambda a, b: torch.bmm(a, b), [F(2, 3, 4), F(2, 4, 5)]),
    ("meshgrid_ij", lambda a, b: gf.meshgrid(a, b, indexing="ij"), lambda a, b: torch.meshgrid(a, b, indexing="ij"),
     [F(3), F(4)]),
    ("meshgrid_xy", lambda a, b, c: gf.meshgrid(a, b, c, indexing="xy"),
     lambda a, b, c: torch.meshgrid(a, b, c, indexing="xy"), [F(3), F(4), F(2)]),
    ("clone", lambda x: x.clone() * 2, lambda x: x.clone() * 2, [F(3, 4)]),
    ("long", lambda x: (x * 3).long(), lambda x: (x * 3).long(), [F(3, 4)]),
    ("int", lambda x: (x * 3).int(), lambda x: (x * 3).int(), [F(3, 4)]),
    ("bool", lambda x: x.floor().bool(), lambda x: x.floor().bool(), [F(3, 4)]),
    ("half", lambda x: x.half(), lambda x: x.half(), [F(3, 4)]),
    ("to_dtype", lambda x: x.to(gf.float), lambda x: x.to(torch.float), [F(3, 4)]),
    ("to_kw", lambda x: x.to(dtype=gf.float16), lambda x: x.to(dtype=torch.float16), [F(3, 4)]),
    ("to_other", lambda x, y: y.to(x), lambda x, y: y.to(x), [F(3, 4), I(2)]),
    ("type_cast", lambda x: x.type(gf.long), lambda x: x.type(torch.long), [F(3, 4)]),
    ("type_name", lambda x: x.type(), lambda x: x.type(), [F(3, 4)]),
    ("dim", lambda x: x.dim(), lambda x: x.dim(), [F(3, 4)]),
    ("numel", lambda x: x.numel(), lambda x: x.numel(), [F(3, 4)]),
    ("size", lambda x: (tuple(x.size()), x.size(1), x.size(-2)), lambda x: (tuple(x.size()), x.size(1), x.size(-2)),
     [F(3, 4)]),
    ("is_cuda", lambda x: x.is_cuda, lambda x: x.is_cuda, [F(3, 4)]),
    ("grad_fn_leaf", lambda x: x.grad_fn is None, lambda x: x.grad_fn is None, [F(3, 4)]),
    ("grad_fn", lambda x: (x * 2).grad_fn is None, lambda x: (x * 2).grad_fn is None, [F(3, 4)]),
    # nn.functional (issue 13)
    ("silu", lambda x: GF.silu(x), lambda x: TF.silu(x), [F(3, 4, low=-6, high=6)]),
    ("relu6", lambda x: GF.relu6(x * 4), lambda x: TF.relu6(x * 4), [F(3, 4, low=-3, high=3)]),
    ("hardtanh", lambda x: GF.hardtanh(x, -0.5, 0.7), lambda x: TF.hardtanh(x, -0.5, 0.7), [F(3, 4)]),
    # torch's hardsigmoid and celu gradients use float32 constants (1.0f / 6, 1.0 / alpha.toFloat()) even in
    # float64; gradflow's are exact, so those two rows allow float32-level gradient differences
    ("hardsigmoid", lambda x: GF.hardsigmoid(x), lambda x: TF.hardsigmoid(x), [F(3, 4, low=-5, high=5)], 1e-7),
    ("hardswish", lambda x: GF.hardswish(x), lambda x: TF.hardswish(x), [F(3, 4, low=-5, high=5)]),
    ("mish", lambda x: GF.mish(x), lambda x: TF.mish(x), [F(3, 4, low=-6, high=6)]),
    ("softsign", lambda x: GF.softsign(x), lambda x: TF.softsign(x), [F(3, 4)]),
    ("logsigmoid", lambda x: GF.logsigmoid(x), lambda x: TF.logsigmoid(x), [F(3, 4, low=-30, high=30)]),
    ("celu", lambda x: GF.celu(x, 0.7), lambda x: TF.celu(x, 0.7), [F(3, 4)], 1e-7),
    ("softmin", lambda x: GF.softmin(x, 1), lambda x: TF.softmin(x, 1), [F(3, 4)]),
    ("pad", lambda x: GF.pad(x, (1, 2)), lambda x: TF.pad(x, (1, 2)), [F(2, 3)]),
    ("pad_2d_value", lambda x: GF.pad(x, (1, 0, 2, 1), value=-1.5), lambda x: TF.pad(x, (1, 0, 2, 1), value=-1.5),
     [F(2, 3, 4)]),
    ("pad_crop", lambda x: GF.pad(x, (-1, 2)), lambda x: TF.pad(x, (-1, 2)), [F(2, 3)]),
    ("normalize", lambda x: GF.normalize(x), lambda x: TF.normalize(x), [F(3, 4)]),
    ("normalize_p1", lambda x: GF.normalize(x, p=1, dim=0), lambda x: TF.normalize(x, p=1, dim=0), [F(3, 4)]),
    ("cosine_similarity", lambda a, b: GF.cosine_similarity(a, b), lambda a, b: TF.cosine_similarity(a, b),
     [F(3, 4), F(3, 4)]),
    ("cosine_similarity_bcast", lambda a, b: GF.cosine_similarity(a, b, dim=-1),
     lambda a, b: TF.cosine_similarity(a, b, dim=-1), [F(2, 3, 4), F(4)]),
    ("kl_div", lambda a, b: GF.kl_div(a.log_softmax(1), b.softmax(1), reduction="batchmean"),
     lambda a, b: TF.kl_div(a.log_softmax(1), b.softmax(1), reduction="batchmean"), [F(3, 4), F(3, 4)]),
    ("kl_div_mean_zeros", lambda a, b: GF.kl_div(a, b.abs() * gf.tensor(MASK.astype(numpy.float64))),
     lambda a, b: TF.kl_div(a, b.abs() * torch.tensor(MASK.astype(numpy.float64))), [F(3, 4), F(3, 4)]),
    ("kl_div_log_target", lambda a, b: GF.kl_div(a, b, reduction="sum", log_target=True),
     lambda a, b: TF.kl_div(a, b, reduction="sum", log_target=True), [F(3, 4), F(3, 4)]),
    ("kl_div_none", lambda a, b: GF.kl_div(a, b.softmax(1), reduction="none"),
     lambda a, b: TF.kl_div(a, b.softmax(1), reduction="none"), [F(3, 4), F(3, 4)]),
    ("one_hot", lambda t: GF.one_hot(t, 6), lambda t: TF.one_hot(t, 6), [I(2, 3)]),
    ("ce_probs", lambda x, q: GF.cross_entropy(x, q.softmax(1)), lambda x, q: TF.cross_entropy(x, q.softmax(1)),
     [F(4, 5), F(4, 5)]),
    ("ce_probs_nd", lambda x, q: GF.cross_entropy(x, q.softmax(1)), lambda x, q: TF.cross_entropy(x, q.softmax(1)),
     [F(2, 5, 3, 2), F(2, 5, 3, 2)]),
    ("ce_probs_nd_sum_smooth", lambda x, q: GF.cross_entropy(x, q.softmax(1), reduction="sum", label_smoothing=0.2),
     lambda x, q: TF.cross_entropy(x, q.softmax(1), reduction="sum", label_smoothing=0.2), [F(2, 5, 3), F(2, 5, 3)]),
    ("ce_probs_1d", lambda x, q: GF.cross_entropy(x, q.softmax(0)), lambda x, q: TF.cross_entropy(x, q.softmax(0)),
     [F(5), F(5)]),
    ("ce_nd_index", lambda x, t: GF.cross_entropy(x, t), lambda x, t: TF.cross_entropy(x, t), [F(2, 5, 3), I(2, 3)]),
    ("ce_nd_index_smooth", lambda x, t: GF.cross_entropy(x, t, label_smoothing=0.1),
     lambda x, t: TF.cross_entropy(x, t, label_smoothing=0.1), [F(2, 5, 3, 2), I(2, 3, 2)]),
    ("ce_nd_index_smooth_ignore", lambda x, t: GF.cross_entropy(x, t.masked_fill(t == 0, -100), label_smoothing=0.3),
     lambda x, t: TF.cross_entropy(x, t.masked_fill(t == 0, -100), label_smoothing=0.3), [F(2, 5, 4), I(2, 4)]),
    ("ce_1d_index_smooth_none", lambda x: GF.cross_entropy(x, gf.tensor(2), reduction="none", label_smoothing=0.1),
     lambda x: TF.cross_entropy(x, torch.tensor(2), reduction="none", label_smoothing=0.1), [F(5)]),
]


def _gf(values):
    return [gf.tensor(v, requires_grad=v.dtype == numpy.float64) if isinstance(v, numpy.ndarray) else v
            for v in values]


def _torch(values):
    return [torch.tensor(v, requires_grad=v.dtype == numpy.float64) if isinstance(v, numpy.ndarray) else v
            for v in values]


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [y for o in out for y in _flat(o)]
    return [out]


def _dtype_name(t):
    return str(t.dtype).replace("torch.", "")


def check_row(fn_gf, fn_torch, specs, seed=0, grad_rtol=1e-10):
    rng = numpy.random.default_rng(seed)
    values = [_make(s, rng) for s in specs]
    ins_gf, ins_torch = _gf(values), _torch(values)
    out_gf, out_torch = _flat(fn_gf(*ins_gf)), _flat(fn_torch(*ins_torch))
    assert len(out_gf) == len(out_torch)
    for a, b in zip(out_gf, out_torch):
        if isinstance(b, torch.Tensor):
            assert isinstance(a, gf.Tensor), f"expected a Tensor, got {type(a).__name__}"
            assert tuple(a.shape) == tuple(b.shape)
            assert _dtype_name(a) == _dtype_name(b), (a.dtype, b.dtype)
            assert a.requires_grad == b.requires_grad, "requires_grad differs"
            numpy.testing.assert_allclose(a.numpy().astype(numpy.float64),
                                          b.detach().double().numpy(), rtol=1e-12, atol=1e-12)
        else:
            assert type(a) is type(b) and a == b, (a, b)
    # gradients of sum(r * out) over the differentiable float outputs
    pairs = [(a, b) for a, b in zip(out_gf, out_torch) if isinstance(b, torch.Tensor) and b.requires_grad]
    if not pairs:
        return
    loss_gf, loss_torch = 0, 0
    for k, (a, b) in enumerate(pairs):
        r = numpy.random.default_rng(100 + k).standard_normal(b.shape)
        loss_gf = loss_gf + (a * gf.tensor(r)).sum()
        loss_torch = loss_torch + (b * torch.tensor(r)).sum()
    loss_gf.backward()
    loss_torch.backward()
    for x, y in zip(ins_gf, ins_torch):
        if isinstance(y, torch.Tensor) and y.requires_grad:
            gy = numpy.zeros(y.shape) if y.grad is None else y.grad.numpy()
            gx = numpy.zeros(x.shape) if x.grad is None else x.grad.numpy()
            numpy.testing.assert_allclose(gx, gy, rtol=grad_rtol, atol=1e-12)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_parity(row):
    _, fn_gf, fn_torch, specs, *tol = row
    check_row(fn_gf, fn_torch, specs, grad_rtol=tol[0] if tol else 1e-10)
