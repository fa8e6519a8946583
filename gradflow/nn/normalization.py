"""Normalization layers: ``BatchNorm1d``/``BatchNorm2d``, ``LayerNorm`` and ``GroupNorm``, as in ``torch.nn``.

BatchNorm keeps ``running_mean``, ``running_var`` and ``num_batches_tracked`` as buffers, so
they are in the ``state_dict`` under PyTorch's names, move with ``.to()``, and are
updated in place by a recorded op (``gradflow.normalization.RunningStats``) that
``gradflow.compile`` replays with the rest of a training step.
"""

import numpy

from gradflow import backend
from gradflow import normalization as N
from gradflow.nn import init
from gradflow.nn.layers import _empty
from gradflow.nn.module import Module, Parameter
from gradflow.tensor import Tensor


class _BatchNorm(Module):
    dims = ()  # accepted input ranks
    # as torch's: a state dict without it (saved before it existed, or written by hand) still loads
    # strictly, leaving the count as it is
    _optional_state = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(_empty((self.num_features,), device, dtype))
            self.bias = Parameter(_empty((self.num_features,), device, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            xp = backend.xp_for(device or backend.default_device())
            dt = numpy.dtype(dtype or numpy.float32)
            self.register_buffer("running_mean", Tensor(xp.zeros(self.num_features, dtype=dt)))
            self.register_buffer("running_var", Tensor(xp.ones(self.num_features, dtype=dt)))
            self.register_buffer("num_batches_tracked", Tensor(xp.zeros((), dtype=numpy.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, x):
        if x.ndim not in self.dims:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(f'{d}-d' for d in self.dims)} input, "
                             f"got shape {tuple(x.shape)}")
        # batch statistics while training, or always when no running statistics are kept
        use_batch = self.training or self.running_mean is None
        track = self.training and self.track_running_stats
        return N.batch_norm(x, self.running_mean if track or not self.training else None,
                            self.running_var if track or not self.training else None, self.weight, self.bias,
                            use_batch, self.momentum, self.eps, self.num_batches_tracked if track else None)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs, per channel."""
    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs, per channel over the batch and all positions."""
    dims = (4,)


class LayerNorm(Module):
    """Normalize over the trailing ``normalized_shape`` dimensions, with an elementwise affine."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = tuple(int(s) for s in shape), float(eps), \
            elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(_empty(self.normalized_shape, device, dtype))
            if bias:
                self.bias = Parameter(_empty(self.normalized_shape, device, dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, x):
        return N.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """Normalize each sample's channels in ``num_groups`` groups, with a per-channel affine."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = int(num_groups), int(num_channels), \
            float(eps), affine
        if affine:
            self.weight = Parameter(_empty((self.num_channels,), device, dtype))
            self.bias = Parameter(_empty((self.num_channels,), device, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, x):
        return N.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
