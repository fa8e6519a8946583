"""gradflow: a small define-by-run autodiff framework on CuPy, with a NumPy fallback."""
from gradflow import backend, ops
from gradflow.backend import cuda_is_available
from gradflow.compile import CaptureError, compile, replay_as_call
from gradflow.compile import invalidate as compile_invalidate
from gradflow.creation import (arange, empty, eye, from_numpy, full, ones, ones_like, rand, randint, randn,
                               tensor, zeros, zeros_like)
from gradflow.gradcheck import gradcheck, gradgradcheck
from gradflow.ops import (abs, argmax, argmin, broadcast_to, cat, clamp, clip, concatenate, exp, flatten, log,
                          linear, matmul, max, maximum, mean, min, minimum, permute, reshape, sqrt, squeeze, stack, sum,
                          sum_to, swapaxes, transpose, unsqueeze, var, where)
from gradflow.ops import promote_types, result_type, std
from gradflow.random import manual_seed
from gradflow.tensor import Function, Size, Tensor, enable_grad, grad, is_grad_enabled, no_grad

from numpy import bool_, float16, float32, float64, int8, int16, int32, int64, uint8  # dtypes, as gradflow.float32 etc.
bool = bool_  # noqa: A001  (torch.bool)

__version__ = "0.1.0"

from gradflow import data, datasets, nn, optim, train  # noqa: E402  (they build on the core above)
from gradflow.serialization import load, save  # noqa: E402
