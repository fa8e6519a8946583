"""Convolution and pooling through im2col: forward and backward side by side.

An N-C-H-W input is unfolded into a column matrix of shape (C*kh*kw, N*OH*OW) (im2col);
a convolution is then one GEMM with the weight viewed as (O, C*kh*kw), and pooling a
reduction over each channel's kh*kw rows. The adjoint, col2im, folds columns back into
an image by adding every entry where it was read from; it gives the input gradient of
both. On the CPU im2col is ``sliding_window_view`` plus one copy and col2im kh*kw
strided additions (loops over kernel taps, never over pixels); on the GPU both are the
kernels of ``kernels/conv.cu`` and the GEMM is cuBLAS (gradflow's own GEMM while a CUDA
graph is captured).

Three Functions close under differentiation, so double backward works:
``Conv`` (y = conv(x, W) + b), ``ConvData`` (the input gradient, conv_transpose(gy, W))
and ``ConvWeight`` (the weight gradient of (x, gy)); each one's backward is written with
the other two. ``conv_transpose2d`` is ``ConvData`` run forward.

1-d forms are the 2-d ones on an (N, C, 1, L) view. Weights use PyTorch's layouts:
(out, in/groups, kh, kw) for convolutions, (in, out/groups, kh, kw) for transposed ones.
"""
import numpy
from numpy.lib.stride_tricks import sliding_window_view

from gradflow import backend, ops
from gradflow.kernel import RawKernel
from gradflow.tensor import Function, OpError, Tensor, as_tensor


# ---- geometry ---------------------------------------------------------------------------------
class Geometry:
    """Kernel, stride, leading/trailing padding and dilation of a 2-d window, plus groups.

    Immutable and comparable (compile compares the Functions' constructor attributes).
    """
    __slots__ = ("kernel", "stride", "pad_lo", "pad_hi", "dilation", "groups")

    def __init__(self, kernel, stride, pad_lo, pad_hi, dilation, groups=1):
        self.kernel, self.stride, self.dilation = tuple(kernel), tuple(stride), tuple(dilation)
        self.pad_lo, self.pad_hi, self.groups = tuple(pad_lo), tuple(pad_hi), int(groups)

    def _key(self):
        return (self.kernel, self.stride, self.pad_lo, self.pad_hi, self.dilation, self.groups)

    def __eq__(self, other):
        return isinstance(other, Geometry) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "Geometry(kernel={}, stride={}, pad_lo={}, pad_hi={}, dilation={}, groups={})".format(*self._key())

    def out_size(self, h, w):
        return tuple((size + lo + hi - d * (k - 1) - 1) // s + 1
                     for size, k, s, lo, hi, d in zip((h, w), self.kernel, self.stride, self.pad_lo, self.pad_hi,
                                                      self.dilation))


def _tuple(value, n, name):
    if isinstance(value, (int, numpy.integer)):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise OpError(f"{name} must be an int or a tuple of {n} ints, got {value}")
    return value


# ---- im2col / col2im on raw arrays ------------------------------------------------------------
IM2COL = RawKernel("conv.cu", "gf_im2col")
COL2IM = RawKernel("conv.cu", "gf_col2im")


def _launch(kernel, dtype, total, args):
    """One thread per element, grid-strided."""
    blocks = int(min((total + 255) // 256, 2 ** 31 - 1))
    kernel.function(dtype)((max(blocks, 1),), (256,), args)


def _geometry_scalars(x_shape, geom, out_hw):
    n, c, h, w = x_shape
    vals = (n, c, h, w, *geom.kernel, *geom.stride, *geom.pad_lo, *geom.dilation, *out_hw)
    return tuple(numpy.int64(v) for v in vals)


def im2col(x, geom, pad_value=0.0):
    """(N, C, H, W) array -> ((C*kh*kw, N*OH*OW) contiguous columns, (OH, OW))."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    oh, ow = geom.out_size(h, w)
    if oh <= 0 or ow <= 0:
        raise OpError(f"the window (kernel {geom.kernel}, dilation {geom.dilation}) is larger than the "
                         f"padded input {(h + geom.pad_lo[0] + geom.pad_hi[0], w + geom.pad_lo[1] + geom.pad_hi[1])}")
    xp = backend.xp_of(x)
    if xp is not numpy:
        cols = xp.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
        if cols.size:
            _launch(IM2COL, x.dtype, cols.size,
                    (xp.ascontiguousarray(x), cols, *_geometry_scalars(x.shape, geom, (oh, ow)),
                     x.dtype.type(pad_value)))
        return cols, (oh, ow)
    (plh, plw), (phh, phw) = geom.pad_lo, geom.pad_hi
    # only as much trailing padding as the last window reads (ceil-mode pooling may ask for more)
    need_h, need_w = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
    hi_h, hi_w = max(need_h - h - plh, 0), max(need_w - w - plw, 0)
    if plh or plw or hi_h or hi_w:
        padded = numpy.full((n, c, h + plh + hi_h, w + plw + hi_w), pad_value, dtype=x.dtype)
        padded[:, :, plh:plh + h, plw:plw + w] = x
        x = padded
    windows = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    windows = windows[:, :, :need_h - dh * (kh - 1):sh, :need_w - dw * (kw - 1):sw, ::dh, ::dw]
    # (N, C, OH, OW, kh, kw) -> (C, kh, kw, N, OH, OW): the copy reads whole output rows
    cols = numpy.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))
    return cols.reshape(c * kh * kw, n * oh * ow), (oh, ow)


def col2im(cols, x_shape, geom):
    """The adjoint of im2col: (C*kh*kw, N*OH*OW) columns summed back into an (N, C, H, W) array."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    oh, ow = geom.out_size(h, w)
    xp = backend.xp_of(cols)
    if xp is not numpy:
        x = xp.empty(x_shape, dtype=cols.dtype)
        if x.size:
            _launch(COL2IM, cols.dtype, x.size,
                    (xp.ascontiguousarray(cols), x, *_geometry_scalars(x_shape, geom, (oh, ow))))
        return x
    (plh, plw) = geom.pad_lo
    hp = max(h + plh, (oh - 1) * sh + dh * (kh - 1) + 1)
    wp = max(w + plw, (ow - 1) * sw + dw * (kw - 1) + 1)
    # accumulate channel-major, as the columns are laid out (each addition streams whole rows),
    # then one transposing copy to (N, C, H, W)
    padded = numpy.zeros((c, n, hp, wp), dtype=cols.dtype)
    taps = cols.reshape(c, kh, kw, n, oh, ow)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += taps[:, i, j]
    return numpy.ascontiguousarray(padded[:, :, plh:plh + h, plw:plw + w].transpose(1, 0, 2, 3))


def _gemm(a, b):
    """a @ b for 2-d, or a batch over groups for 3-d operands (gradflow's GEMM while capturing)."""
    if a.ndim == 2:
        return ops._matmul_arrays(a, b)
    if backend.capturing:
        xp = backend.xp_of(a)
        return xp.stack([ops._matmul_arrays(a[i], b[i]) for i in range(a.shape[0])])
    return a @ b


def _grouped(m, groups):
    """(rows, cols) -> (groups, rows/groups, cols) when grouped; unchanged otherwise."""
    return m if groups == 1 else m.reshape(groups, m.shape[0] // groups, m.shape[1])


def _ungrouped(m):
    return m if m.ndim == 2 else m.reshape(m.shape[0] * m.shape[1], m.shape[2])


def _transposed(m):
    return m.swapaxes(-1, -2)


def _nchw(y2, n, oh, ow):
    """(O, N*OH*OW) GEMM output -> contiguous (N, O, OH, OW)."""
    xp = backend.xp_of(y2)
    return xp.ascontiguousarray(y2.reshape(y2.shape[0], n, oh, ow).transpose(1, 0, 2, 3))


def _rows(gy):
    """(N, O, OH, OW) -> contiguous (O, N*OH*OW), the GEMM layout of an output gradient."""
    xp = backend.xp_of(gy)
    n, o = gy.shape[:2]
    return xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(o, -1)


# ---- the three convolution Functions ----------------------------------------------------------
class Conv(Function):
    """y = conv2d(x, W) + b for x (N, C, H, W), W (O, C/groups, kh, kw), b (O,)."""

    def __init__(self, geom):
        self.geom = geom

    def forward(self, x, weight, bias=None):
        geom = self.geom
        n = x.shape[0]
        o = weight.shape[0]
        cols, (oh, ow) = im2col(x, geom)
        w2 = weight.reshape(o, -1)
        y2 = _ungrouped(_gemm(_grouped(w2, geom.groups), _grouped(cols, geom.groups)))
        y = _nchw(y2, n, oh, ow)
        if bias is not None:
            y += bias.reshape(1, o, 1, 1)
        self.save_for_backward(x, weight, cols)
        return y

    def backward(self, gy):
        x, weight, cols = self.saved_tensors
        need = self.needs_input_grad
        gx = ConvData(self.geom, x.shape)(gy, weight) if need[0] else None
        gw = ConvWeight(self.geom, weight.shape)(x, gy, cols) if need[1] else None
        gb = ops.sum(gy, (0, 2, 3)) if len(need) > 2 and need[2] else None
        return gx, gw, gb


class ConvData(Function):
    """gx = the input gradient of conv2d for an output gradient gy: col2im(W^T @ gy)."""

    def __init__(self, geom, x_shape):
        self.geom, self.x_shape = geom, tuple(x_shape)

    def forward(self, gy, weight):
        geom = self.geom
        o = weight.shape[0]
        w2 = weight.reshape(o, -1)
        gcols = _ungrouped(_gemm(_transposed(_grouped(w2, geom.groups)), _grouped(_rows(gy), geom.groups)))
        self.save_for_backward(gy, weight)
        return col2im(gcols, self.x_shape, geom)

    def backward(self, ggx):
        gy, weight = self.saved_tensors
        need = self.needs_input_grad
        g_gy = Conv(self.geom)(ggx, weight) if need[0] else None
        g_w = ConvWeight(self.geom, weight.shape)(ggx, gy) if need[1] else None
        return g_gy, g_w


class ConvWeight(Function):
    """gW = the weight gradient of conv2d: gy @ im2col(x)^T, reshaped to W's layout.

    A third input may carry the columns the forward already built (saved, so replay
    and memory stay exact); it is a constant of the graph, x stays the input.
    """

    def __init__(self, geom, w_shape):
        self.geom, self.w_shape = geom, tuple(w_shape)

    def forward(self, x, gy, cols=None):
        geom = self.geom
        if cols is None:
            cols, _ = im2col(x, geom)
        gy2 = _grouped(_rows(gy), geom.groups)
        gw = _gemm(gy2, _transposed(_grouped(cols, geom.groups)))
        self.save_for_backward(x, gy)
        return gw.reshape(self.w_shape)

    def backward(self, ggw):
        x, gy = self.saved_tensors
        need = self.needs_input_grad
        g_x = ConvData(self.geom, x.shape)(gy, ggw) if need[0] else None
        g_gy = Conv(self.geom)(x, ggw) if need[1] else None
        return (g_x, g_gy) + ((None,) if len(need) > 2 else ())


# ---- the functional API -----------------------------------------------------------------------
def _check_input(x, dims, name):
    x = as_tensor(x)
    if x.ndim != dims + 2:
        raise OpError(f"{name}: expected a {dims + 2}-d input (N, C, {'H, W' if dims == 2 else 'L'}), "
                         f"got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype}")
    return x


def _padding(padding, kernel, stride, dilation, dims, name):
    """(pad_lo, pad_hi) from an int, a tuple, 'valid' or 'same' (PyTorch's split: extra on the right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * dims, (0,) * dims
        if padding == "same":
            if any(s != 1 for s in stride):
                raise OpError(f"{name}: padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
        raise OpError(f"{name}: invalid padding string {padding!r}; expected 'valid' or 'same'")
    pad = _tuple(padding, dims, "padding")
    if any(p < 0 for p in pad):
        raise OpError(f"{name}: negative padding {pad}")
    return pad, pad


def _conv_nd(x, weight, bias, stride, padding, dilation, groups, dims, name):
    x = _check_input(x, dims, name)
    weight = as_tensor(weight)
    if weight.ndim != dims + 2:
        raise OpError(f"{name}: weight must be {dims + 2}-d (out_channels, in_channels/groups, kernel...), "
                         f"got shape {weight.shape}")
    groups = int(groups)
    c, o = x.shape[1], weight.shape[0]
    if groups < 1 or c % groups or o % groups:
        raise OpError(f"{name}: groups={groups} must divide in_channels={c} and out_channels={o}")
    if weight.shape[1] * groups != c:
        raise OpError(f"{name}: input has {c} channels but weight {weight.shape} with groups={groups} "
                         f"expects {weight.shape[1] * groups}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    if bias is not None:
        bias = as_tensor(bias)
        if bias.shape != (o,):
            raise OpError(f"{name}: bias must have shape ({o},), got {bias.shape}")
    kernel = weight.shape[2:]
    stride, dilation = _tuple(stride, dims, "stride"), _tuple(dilation, dims, "dilation")
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation):
        raise OpError(f"{name}: stride {stride} and dilation {dilation} must be positive")
    lo, hi = _padding(padding, kernel, stride, dilation, dims, name)
    if dims == 1:
        x, weight = ops.unsqueeze(x, 2), ops.unsqueeze(weight, 2)
        kernel, stride, dilation, lo, hi = (1,) + kernel, (1,) + stride, (1,) + dilation, (0,) + lo, (0,) + hi
    geom = Geometry(kernel, stride, lo, hi, dilation, groups)
    h, w = x.shape[2:]
    if min(geom.out_size(h, w)) <= 0:
        raise OpError(f"{name}: kernel {weight.shape[2:]} (dilation {dilation[-dims:]}) is larger than the "
                         f"padded input of spatial size {x.shape[2:][-dims:]}")
    y = Conv(geom)(x, weight) if bias is None else Conv(geom)(x, weight, bias)
    return ops.squeeze(y, 2) if dims == 1 else y


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution (cross-correlation, as PyTorch) of (N, C, H, W) with (O, C/groups, kh, kw)."""
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-d convolution of (N, C, L) with (O, C/groups, k)."""
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def _conv_transpose_nd(x, weight, bias, stride, padding, output_padding, groups, dilation, dims, name):
    x = _check_input(x, dims, name)
    weight = as_tensor(weight)
    if weight.ndim != dims + 2:
        raise OpError(f"{name}: weight must be {dims + 2}-d (in_channels, out_channels/groups, kernel...), "
                         f"got shape {weight.shape}")
    groups = int(groups)
    c = x.shape[1]
    if weight.shape[0] != c or groups < 1 or c % groups:
        raise OpError(f"{name}: input has {c} channels but weight {weight.shape} (groups={groups}) expects "
                         f"{weight.shape[0]}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    o = weight.shape[1] * groups
    kernel = weight.shape[2:]
    stride, dilation = _tuple(stride, dims, "stride"), _tuple(dilation, dims, "dilation")
    pad, out_pad = _tuple(padding, dims, "padding"), _tuple(output_padding, dims, "output_padding")
    if any(op >= max(s, d) for op, s, d in zip(out_pad, stride, dilation)):
        raise OpError(f"{name}: output_padding {out_pad} must be smaller than either stride {stride} "
                         f"or dilation {dilation}")
    out = [(i - 1) * s - 2 * p + d * (k - 1) + op + 1
           for i, s, p, d, k, op in zip(x.shape[2:], stride, pad, dilation, kernel, out_pad)]
    if min(out) <= 0:
        raise OpError(f"{name}: the output size {tuple(out)} is not positive")
    if dims == 1:
        x, weight = ops.unsqueeze(x, 2), ops.unsqueeze(weight, 2)
        kernel, stride, dilation, pad, out_pad, out = ((1,) + kernel, (1,) + stride, (1,) + dilation, (0,) + pad,
                                                       (0,) + out_pad, [1] + out)
    # the convolution whose input gradient this is; its windows leave the last output_padding rows unread
    hi = tuple(p - op for p, op in zip(pad, out_pad))
    geom = Geometry(kernel, stride, pad, hi, dilation, groups)
    y = ConvData(geom, (x.shape[0], o, *out))(x, weight)
    if bias is not None:
        y = y + ops.reshape(as_tensor(bias), (1, o, 1, 1))
    return ops.squeeze(y, 2) if dims == 1 else y


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The adjoint of conv2d ("deconvolution"): weight (C_in, C_out/groups, kh, kw), as PyTorch."""
    return _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation, 2,
                              "conv_transpose2d")


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation, 1,
                              "conv_transpose1d")


# ---- pooling ----------------------------------------------------------------------------------
def _padded(x, geom, oh, ow, value):
    """x with the leading padding and as much trailing padding as the last window reads."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    (plh, plw) = geom.pad_lo
    hi_h = max((oh - 1) * sh + dh * (kh - 1) + 1 - h - plh, 0)
    hi_w = max((ow - 1) * sw + dw * (kw - 1) + 1 - w - plw, 0)
    if not (plh or plw or hi_h or hi_w):
        return x
    padded = numpy.full((n, c, h + plh + hi_h, w + plw + hi_w), value, dtype=x.dtype)
    padded[:, :, plh:plh + h, plw:plw + w] = x
    return padded


def _taps(padded, geom, oh, ow):
    """(tap number, (N, C, OH, OW) strided view of what that kernel tap reads) for every tap."""
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, padded[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]


def _crop(padded, x_shape, geom):
    plh, plw = geom.pad_lo
    h, w = x_shape[2:]
    if padded.shape == tuple(x_shape):
        return padded
    return numpy.ascontiguousarray(padded[:, :, plh:plh + h, plw:plw + w])


def _disjoint(geom):
    """True when no two windows share an input element (e.g. 2x2 pooling with stride 2)."""
    return all(s >= d * (k - 1) + 1 for k, s, d in zip(geom.kernel, geom.stride, geom.dilation))


def _fold_taps(x_shape, geom, oh, ow, dtype, tap_grad):
    """The adjoint of reading taps: sum ``tap_grad(t)`` (an (N, C, OH, OW) array) into an input image.

    With ``tap_grad=None``: the zero padded image, for the caller to fill (then ``_crop`` it)."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    plh, plw = geom.pad_lo
    hp = max(h + plh, (oh - 1) * sh + dh * (kh - 1) + 1)
    wp = max(w + plw, (ow - 1) * sw + dw * (kw - 1) + 1)
    padded = numpy.zeros((n, c, hp, wp), dtype=dtype)
    if tap_grad is None:
        return padded
    for t, view in _taps(padded, geom, oh, ow):
        g = tap_grad(t)
        if g is not None:
            view += g
    return _crop(padded, x_shape, geom)


class MaxPool(Function):
    """Max over each window (NaN wins, as in PyTorch); optionally also the flat argmax index per plane.

    The winning kernel tap of each window is saved; backward routes each output gradient to
    it (overlapping windows add up). On the CPU the max runs over the kh*kw strided tap views
    of the input (no column matrix); on the GPU over the im2col columns.
    """

    def __init__(self, geom, return_indices=False):
        self.geom, self.return_indices = geom, return_indices

    def forward(self, x):
        geom = self.geom
        n, c, h, w = x.shape
        oh, ow = geom.out_size(h, w)
        xp = backend.xp_of(x)
        self.x_shape = x.shape
        if xp is numpy:
            taps = list(_taps(_padded(x, geom, oh, ow, -numpy.inf), geom, oh, ow))
            y = taps[0][1].copy()
            for _, view in taps[1:]:
                numpy.maximum(y, view, out=y)  # NaN propagates, as in PyTorch
            arg = numpy.zeros(y.shape, numpy.int8 if len(taps) < 128 else numpy.int32)
            for t, view in reversed(taps):  # the first tap holding the maximum wins
                numpy.copyto(arg, t, where=view == y)
            if numpy.isnan(y).any():  # PyTorch takes the last NaN of a window
                for t, view in taps:
                    numpy.copyto(arg, t, where=view != view)
        else:
            kk = geom.kernel[0] * geom.kernel[1]
            cols, _ = im2col(x, geom, pad_value=-numpy.inf)
            cols = cols.reshape(c, kk, n * oh * ow)
            arg = cols.argmax(axis=1)
            y = xp.take_along_axis(cols, arg[:, None, :], axis=1)[:, 0, :]
            y = _nchw(y, n, oh, ow)
            arg = _nchw(arg, n, oh, ow).astype(numpy.int32)
        self.save_for_backward(arg)
        if not self.return_indices:
            return y
        kw = geom.kernel[1]
        i, j = arg.astype(numpy.int64) // kw, arg.astype(numpy.int64) % kw
        rows = (xp.arange(oh) * geom.stride[0] - geom.pad_lo[0]).reshape(oh, 1) + i * geom.dilation[0]
        cols_ = (xp.arange(ow) * geom.stride[1] - geom.pad_lo[1]).reshape(1, ow) + j * geom.dilation[1]
        return y, (rows * w + cols_).astype(numpy.int64)

    def backward(self, gy, gindex=None):
        arg, = self.saved_tensors
        return MaxPoolGrad(self.geom, self.x_shape)(gy, arg)


class MaxPoolGrad(Function):
    """Each output gradient added at its window's winning tap (linear in gy; arg is (N, C, OH, OW) taps)."""

    def __init__(self, geom, x_shape):
        self.geom, self.x_shape = geom, tuple(x_shape)

    def forward(self, gy, arg):
        geom = self.geom
        n, c, oh, ow = gy.shape
        xp = backend.xp_of(gy)
        self.save_for_backward(arg)
        if xp is numpy:
            if _disjoint(geom):  # each input element is in one window at most: place, don't add
                padded = _fold_taps(self.x_shape, geom, oh, ow, gy.dtype, None)
                for t, view in _taps(padded, geom, oh, ow):
                    numpy.copyto(view, gy, where=arg == t)
                return _crop(padded, self.x_shape, geom)
            zero = gy.dtype.type(0)
            return _fold_taps(self.x_shape, geom, oh, ow, gy.dtype, lambda t: numpy.where(arg == t, gy, zero))
        kk = geom.kernel[0] * geom.kernel[1]
        cells = n * oh * ow
        gcols = xp.zeros((c, kk * cells), dtype=gy.dtype)
        gcols[xp.arange(c)[:, None], _rows(arg).astype(numpy.int64) * cells + xp.arange(cells)] = _rows(gy)
        return col2im(gcols.reshape(c * kk, cells), self.x_shape, geom)

    def backward(self, ggx):
        arg, = self.saved_tensors
        return _TakeTaps(self.geom)(ggx, arg), None


class _TakeTaps(Function):
    """The adjoint of MaxPoolGrad: read each window's winning tap (for double backward)."""

    def __init__(self, geom):
        self.geom = geom

    def forward(self, x, arg):
        geom = self.geom
        n, c, oh, ow = arg.shape
        xp = backend.xp_of(x)
        self.save_for_backward(arg)
        self.x_shape = x.shape
        if xp is numpy:
            y = numpy.zeros(arg.shape, dtype=x.dtype)
            for t, view in _taps(_padded(x, geom, oh, ow, 0), geom, oh, ow):
                numpy.copyto(y, view, where=arg == t)
            return y
        cols, _ = im2col(x, geom)
        y = xp.take_along_axis(cols.reshape(c, -1, n * oh * ow), _rows(arg)[:, None, :], axis=1)[:, 0, :]
        return _nchw(y, n, oh, ow)

    def backward(self, gy):
        arg, = self.saved_tensors
        return MaxPoolGrad(self.geom, self.x_shape)(gy, arg), None


class AvgPool(Function):
    """Mean over each window; the divisor follows PyTorch's count_include_pad/divisor_override rules."""

    def __init__(self, geom, divisor_override=None, count_include_pad=True):
        self.geom, self.divisor_override, self.count_include_pad = geom, divisor_override, count_include_pad

    def _divisor(self, x_shape, xp, dtype):
        """A number when every window has the same divisor, else an (OH, OW) array."""
        geom = self.geom
        kh, kw = geom.kernel
        if self.divisor_override is not None:
            return dtype.type(self.divisor_override)
        h, w = x_shape[2:]
        oh, ow = geom.out_size(h, w)

        def counts(size, k, s, lo, out):
            # PyTorch counts padding cells but never the cells a ceil-mode window overhangs
            start = numpy.arange(out) * s - lo
            end = numpy.minimum(start + k, size + lo)
            if not self.count_include_pad:
                return numpy.minimum(end, size) - numpy.maximum(start, 0)
            return end - start
        div = numpy.outer(counts(h, kh, geom.stride[0], geom.pad_lo[0], oh),
                          counts(w, kw, geom.stride[1], geom.pad_lo[1], ow)).astype(dtype)
        if (div == kh * kw).all():
            return dtype.type(kh * kw)
        return xp.asarray(div)

    def forward(self, x):
        geom = self.geom
        n, c, h, w = x.shape
        oh, ow = geom.out_size(h, w)
        xp = backend.xp_of(x)
        self.divisor = div = self._divisor(x.shape, xp, x.dtype)
        self.x_shape = x.shape
        if xp is numpy:
            s = None
            for _, view in _taps(_padded(x, geom, oh, ow, 0), geom, oh, ow):
                s = view.copy() if s is None else numpy.add(s, view, out=s)
        else:
            cols, _ = im2col(x, geom)
            s = _nchw(cols.reshape(c, -1, n * oh * ow).sum(axis=1), n, oh, ow)
        return (s / div).astype(x.dtype, copy=False)

    def backward(self, gy):
        return AvgPoolGrad(self.geom, self.x_shape, self.divisor)(gy)


class AvgPoolGrad(Function):
    """Each output gradient spread evenly over its window (divided by the window's divisor)."""

    def __init__(self, geom, x_shape, divisor):
        self.geom, self.x_shape, self.divisor = geom, tuple(x_shape), divisor

    def forward(self, gy):
        geom = self.geom
        n, c, oh, ow = gy.shape
        xp = backend.xp_of(gy)
        g = (gy / self.divisor).astype(gy.dtype, copy=False)
        if xp is numpy:
            return _fold_taps(self.x_shape, geom, oh, ow, gy.dtype, lambda t: g)
        kk = geom.kernel[0] * geom.kernel[1]
        gcols = xp.broadcast_to(_rows(g).reshape(c, 1, -1), (c, kk, n * oh * ow)).reshape(c * kk, -1)
        return col2im(gcols, self.x_shape, geom)

    def backward(self, ggx):
        return _AvgPoolFixed(self.geom, self.divisor)(ggx)


class _AvgPoolFixed(AvgPool):
    """AvgPool with a divisor already known (the double-backward of AvgPoolGrad)."""

    def __init__(self, geom, divisor):
        super().__init__(geom)
        self.fixed = divisor

    def _divisor(self, x_shape, xp, dtype):
        return self.fixed


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, dims, name):
    kernel = _tuple(kernel_size, dims, "kernel_size")
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else \
        _tuple(stride, dims, "stride")
    pad, dilation = _tuple(padding, dims, "padding"), _tuple(dilation, dims, "dilation")
    if any(k < 1 for k in kernel) or any(s < 1 for s in stride):
        raise OpError(f"{name}: kernel_size {kernel} and stride {stride} must be positive")
    if any(2 * p > k for p, k in zip(pad, kernel)):
        raise OpError(f"{name}: pad should be at most half of effective kernel size, but got pad={pad} "
                         f"and kernel_size={kernel}")
    sizes = x.shape[2:] if dims == 2 else x.shape[3:]
    hi = []
    for size, k, s, p, d in zip(sizes, kernel, stride, pad, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        if span < 0:
            raise OpError(f"{name}: the window (kernel {kernel}, dilation {dilation}) is larger than the "
                             f"padded input of size {tuple(sizes)}")
        out = span // s + 1
        if ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= size + p:  # the last window would start in the right padding
                out -= 1
        hi.append((out - 1) * s + d * (k - 1) + 1 - size - p)
    if dims == 1:
        kernel, stride, pad, hi, dilation = (1,) + kernel, (1,) + stride, (0,) + pad, [0] + hi, (1,) + dilation
    return Geometry(kernel, stride, pad, tuple(hi), dilation)


def _as_4d(x, dims, name):
    """Pooling accepts batched or unbatched input, as PyTorch: (N, C, *) or (C, *)."""
    x = as_tensor(x)
    if x.ndim not in (dims + 1, dims + 2):
        raise OpError(f"{name}: expected a {dims + 1}-d or {dims + 2}-d input, got shape {x.shape}")
    unbatched = x.ndim == dims + 1
    if unbatched:
        x = ops.unsqueeze(x, 0)
    if dims == 1:
        x = ops.unsqueeze(x, 2)
    return x, unbatched


def _from_4d(y, dims, unbatched):
    if dims == 1:
        y = ops.squeeze(y, 2)
    return ops.squeeze(y, 0) if unbatched else y


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, dims, name):
    x, unbatched = _as_4d(x, dims, name)
    geom = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, dims, name)
    if not return_indices:
        return _from_4d(MaxPool(geom)(x), dims, unbatched)
    y, index = MaxPool(geom, True)(x)
    index.requires_grad, index.creator = False, None  # integer positions: no gradient
    return _from_4d(y, dims, unbatched), _from_4d(index, dims, unbatched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 2, "max_pool2d")


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 1, "max_pool1d")


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dims, name):
    x, unbatched = _as_4d(x, dims, name)
    if divisor_override is not None and divisor_override == 0:
        raise OpError(f"{name}: divisor must be not zero")
    geom = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode, dims, name)
    y = AvgPool(geom, divisor_override, count_include_pad)(x)
    return _from_4d(y, dims, unbatched)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 2,
                     "avg_pool2d")


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1, "avg_pool1d")


def _adaptive_matrix(size, out, xp, dtype):
    """(out, size) averaging matrix of PyTorch's adaptive windows [floor(i*size/out), ceil((i+1)*size/out))."""
    m = numpy.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return Tensor._wrap(xp.asarray(m.astype(dtype)))


def _adaptive_avg_pool(x, output_size, dims, name):
    x, unbatched = _as_4d(x, dims, name)
    out = (output_size,) * dims if isinstance(output_size, int) else tuple(output_size)
    if len(out) != dims:
        raise OpError(f"{name}: output_size must be an int or a tuple of {dims}, got {output_size}")
    sizes = x.shape[2:] if dims == 2 else x.shape[3:]
    out = tuple(s if o is None else o for o, s in zip(out, sizes))
    if any(o < 1 for o in out):
        raise OpError(f"{name}: output_size {out} must be positive")
    xp = backend.xp_of(x.data)
    if dims == 1:
        out = (1,) + out
    h, w = x.shape[2:]
    if h % out[0] == 0 and w % out[1] == 0:  # equal windows: a plain average pool
        geom = Geometry((h // out[0], w // out[1]), (h // out[0], w // out[1]), (0, 0), (0, 0), (1, 1))
        y = AvgPool(geom)(x)
    else:  # separable: rows then columns, each an averaging matrix
        y = ops.matmul(_adaptive_matrix(h, out[0], xp, x.dtype), x)
        y = ops.matmul(y, ops.transpose(_adaptive_matrix(w, out[1], xp, x.dtype)))
    return _from_4d(y, dims, unbatched)


def adaptive_avg_pool2d(input, output_size):
    return _adaptive_avg_pool(input, output_size, 2, "adaptive_avg_pool2d")


def adaptive_avg_pool1d(input, output_size):
    return _adaptive_avg_pool(input, output_size, 1, "adaptive_avg_pool1d")

