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
from gradflow.ops import promote_types, result_type
from gradflow.random import Generator, manual_seed
from gradflow.tensor import Function, Size, Tensor, enable_grad, grad, is_grad_enabled, no_grad
# ==== API breadth (issue 13) ====
from gradflow.creation import (empty_like, full_like, linspace, logspace, rand_like, randint_like, randn_like,
                               randperm)
from gradflow.ops import (add_, bitwise_and, bitwise_not, bitwise_or, bitwise_xor, bmm, ceil, chunk, clamp_max,
                          clamp_min, clone, contiguous, cos, cumprod, cumsum, div_, einsum, equal, exp2, fill_, flip,
                          floor, floor_divide, gather, index_add, isclose, isfinite, isinf, isnan, lerp, log2, log10,
                          logical_and, logical_not, logical_or, logsumexp, masked_fill, meshgrid, mul_, neg, norm,
                          prod, remainder, repeat, repeat_interleave, roll, round, rsqrt, scatter, scatter_add, sign,
                          sin, sort, split, std, sub_, t, tile, topk, tril, triu, trunc, unbind, zero_)
from gradflow.ops import add, argsort, mul, pow, sub  # noqa: E402
from gradflow.ops import allclose, reduce_all as all, reduce_any as any  # noqa: E402,A001
from gradflow.ops import true_divide as div  # noqa: E402  (torch.div, with rounding_mode=)
from gradflow.ops import xlogy  # noqa: E402
from gradflow.tensor import (get_default_dtype, inference_mode, is_inference_mode_enabled, set_default_dtype,
                             set_grad_enabled, set_printoptions)

from numpy import bool_, float32, float64, int32, int64  # dtypes, as gradflow.float32 etc.

__version__ = "0.1.0"

from gradflow import data, datasets, nn, optim, train  # noqa: E402  (they build on the core above)
from gradflow import autograd, cuda, utils  # noqa: E402
from gradflow import amp  # noqa: E402
from gradflow.amp import GradScaler  # noqa: E402  (torch.GradScaler is torch.amp.GradScaler)
cuda.amp = amp.cuda_namespace  # torch.cuda.amp.GradScaler, PyTorch's deprecated spelling
from gradflow.activation import relu, sigmoid, tanh  # noqa: E402
from gradflow.softmax_ops import log_softmax, softmax  # noqa: E402
from gradflow.interop import from_dlpack, load_safetensors, save_safetensors  # noqa: E402


def _dtype_aliases():
    """torch's dtype names (gradflow.float is float32, gradflow.long is int64, ...); bfloat16 needs the
    ``ml_dtypes`` package (the ``interop`` extra), which CuPy 14 also uses for it."""
    aliases = dict(float=float32, double=float64, half=numpy.float16, float16=numpy.float16, long=int64, int=int32,
                   int16=numpy.int16, int8=numpy.int8, uint8=numpy.uint8, short=numpy.int16, bool=bool_,
                   float32=float32, float64=float64)
    try:
        import ml_dtypes
        aliases["bfloat16"] = ml_dtypes.bfloat16
    except ImportError:
        pass
    return aliases


import numpy  # noqa: E402

globals().update(_dtype_aliases())  # defined last: these names shadow builtins (float, int, bool) here


class device(str):
    """``gradflow.device('cuda')``: a device name usable wherever gradflow takes one ('cuda:0' is 'cuda')."""

    def __new__(cls, type, index=None):
        from gradflow.tensor import _device_name
        name = _device_name(type if index is None else f"{type}:{index}")
        return super().__new__(cls, name)

    @property
    def type(self):
        return str(self)

    @property
    def index(self):
        return 0 if self == "cuda" else None
from gradflow.serialization import load, save  # noqa: E402
from gradflow import distributed  # noqa: E402  (MPI/NCCL process groups; mpi4py is imported on first use)
