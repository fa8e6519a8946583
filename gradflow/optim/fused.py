"""Fused in-place optimizer updates on raw arrays: one kernel launch per parameter.

Each update is PyTorch's single-tensor (``foreach=False``) rule for one element, written
once in ``kernels/optimizers.cuh`` and once in NumPy below, with the same operation order:
results match ``torch.optim`` to rounding in float32 and float64. Where torch adds with
``alpha=`` (weight decay, SGD's momentum and step, RMSprop's and Adadelta's step), one fused
multiply-add, the CPU does too (``blas.axpy``; SGD's momentum in one pass with ``blas.scale_add``):
SGD's steps are torch's bit for bit. Scalars that do not
depend on the element (bias corrections, ``1 - beta``, ``-lr``) are folded here in
double, as torch folds them in Python before casting to the tensor's dtype.

All functions update ``param`` and the state arrays in place and return None. State
arrays have ``param``'s shape and dtype and are allocated by the caller; L1 adds
``l1 * sign(param)`` to the gradient where weight decay is added. ``flat_buffer`` gives
the multi-tensor path: parameters kept as views of one buffer update in one launch.
"""
import functools

import numpy

from gradflow import backend
from gradflow.blas import axpy, bind_axpy, bind_scale_add, scale_add
from gradflow.kernel import Elementwise, device_scalar_twin

_OPT = ("optimizers.cuh",)


_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))  # dtypes, not types: `in` tests identity first


def _check(param, grad, *state):
    if param.dtype not in _FLOATS:
        raise TypeError(f"fused optimizer updates support float32 and float64 parameters, got {param.dtype}")
    for a in (grad,) + state:
        if a is not None and (a.shape != param.shape or a.dtype != param.dtype):
            raise ValueError(f"fused update: array of shape {a.shape} and dtype {a.dtype} does not match the "
                             f"parameter's {param.shape} {param.dtype}")


def _opt_grad(p, g, maximize, weight_decay, l1):
    """NumPy twin of gf_opt_grad."""
    if maximize:
        g = -g
    if weight_decay != 0:  # torch: grad.add(param, alpha=weight_decay)
        g = axpy(weight_decay, p, g if maximize else g.copy())
    if l1 != 0:
        g = g + l1 * numpy.sign(p)
    return g


def _lerp(a, b, w):
    """torch.lerp with a scalar weight, in a's dtype."""
    w = a.dtype.type(w)
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1 - w)


# ---- SGD ---------------------------------------------------------------------------------------------
def _sgd_np(grad, neg_lr, weight_decay, l1, maximize, param, buf=None, momentum=0.0, one_minus_dampening=1.0,
            nesterov=0, first_step=0):
    g = _opt_grad(param, grad, maximize, weight_decay, l1) if maximize or weight_decay or l1 else grad
    if buf is not None:  # in place with out=: the same roundings, fewer temporaries
        if first_step:
            buf[...] = g
        elif one_minus_dampening == 1:  # torch: buf.mul_(momentum).add_(g), two roundings in one pass
            scale_add(buf, momentum, g)
        else:  # torch: buf.mul_(momentum).add_(g, alpha=1 - dampening), the add one fma
            numpy.multiply(buf, momentum, out=buf)
            axpy(one_minus_dampening, g, buf)
        g = axpy(momentum, buf, g.copy()) if nesterov else buf  # torch: g.add(buf, alpha=momentum)
    axpy(neg_lr, g, param)  # torch: param.add_(g, alpha=-lr)


_sgd = Elementwise("sgd", "T grad, T neg_lr, T weight_decay, T l1, int32 maximize", "T param",
                   "gf_sgd(param, grad, (T*)0, neg_lr, T(0), T(1), 0, 0, weight_decay, l1, maximize)",
                   headers=_OPT, scalars="neg_lr weight_decay l1 maximize", numpy=_sgd_np)


def _sgd_momentum_np(grad, neg_lr, momentum, one_minus_dampening, nesterov, first_step, weight_decay, l1, maximize,
                     param, buf):
    _sgd_np(grad, neg_lr, weight_decay, l1, maximize, param, buf, momentum, one_minus_dampening, nesterov, first_step)


_sgd_momentum = Elementwise(
    "sgd_momentum",
    "T grad, T neg_lr, T momentum, T one_minus_dampening, int32 nesterov, int32 first_step, T weight_decay, T l1, "
    "int32 maximize", "T param, T buf",
    "gf_sgd(param, grad, &buf, neg_lr, momentum, one_minus_dampening, nesterov, first_step, weight_decay, l1, "
    "maximize)",
    headers=_OPT, scalars="neg_lr momentum one_minus_dampening nesterov first_step weight_decay l1 maximize",
    numpy=_sgd_momentum_np)


def sgd_(param, grad, momentum_buf, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, l1=0.0,
         maximize=False, first_step=False):
    """SGD step; with momentum, ``first_step=True`` sets buf = d_p as torch does on its first step."""
    _check(param, grad, momentum_buf)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if momentum == 0:
        _sgd(grad, -lr, weight_decay, l1, int(maximize), param)
        return
    if momentum_buf is None:
        raise ValueError("sgd_: momentum != 0 needs a momentum buffer")
    _sgd_momentum(grad, -lr, momentum, 1 - dampening, int(nesterov), int(first_step), weight_decay, l1,
                  int(maximize), param, momentum_buf)


def bind_sgd(param, grad, momentum_buf, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, l1=0.0,
             maximize=False):
    """``sgd_`` of NumPy arrays past the first step as a callable of no arguments, everything checked and
    bound now: what the steady step of a training loop calls each step, skipping the checks and the
    kernel dispatch (inside a step of the 784-128-32-10 MLP those cost several microseconds)."""
    _check(param, grad, momentum_buf)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if type(param) is not numpy.ndarray or (momentum != 0 and momentum_buf is None):
        raise ValueError("bind_sgd: NumPy arrays only, with a momentum buffer when momentum != 0")
    plain = not (weight_decay or l1 or maximize)  # the gradient as it is: each pass a bound BLAS call
    if momentum == 0:
        if plain:
            return bind_axpy(-lr, grad, param)
        return functools.partial(_sgd_np, grad, -lr, weight_decay, l1, int(maximize), param)
    if plain and dampening == 0 and not nesterov:  # the steady step of the plain momentum loop
        return _two_calls(bind_scale_add(momentum_buf, momentum, grad), bind_axpy(-lr, momentum_buf, param))
    return functools.partial(_sgd_np, grad, -lr, weight_decay, l1, int(maximize), param, momentum_buf, momentum,
                             1 - dampening, int(nesterov), 0)


def _two_calls(first, second):
    """``first(); second()`` as one callable of no arguments."""
    def both():
        first()
        second()
    return both


# ---- Adam / AdamW ------------------------------------------------------------------------------------
def _adam_np(grad, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size,
             weight_decay, decay_factor, decoupled, l1, maximize, param, exp_avg, exp_avg_sq, max_exp_avg_sq=None):
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            param[...] = param * decay_factor
        else:
            g = axpy(weight_decay, param, g.copy())  # torch: grad.add(param, alpha=weight_decay)
    if l1 != 0:
        g = g + l1 * numpy.sign(param)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        numpy.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    denom = numpy.sqrt(second) / bias_correction2_sqrt + eps
    param[...] = param + neg_step_size * exp_avg / denom


_ADAM_IN = ("T grad, T one_minus_beta1, T beta2, T one_minus_beta2, T bias_correction2_sqrt, T eps, T neg_step_size, "
            "T weight_decay, T decay_factor, int32 decoupled, T l1, int32 maximize")
_ADAM_SCALARS = [p.split()[-1] for p in _ADAM_IN.split(",")[1:]]
_ADAM_ARGS = ("one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size, weight_decay, "
              "decay_factor, decoupled, l1, maximize")
_adam = Elementwise("adam", _ADAM_IN, "T param, T exp_avg, T exp_avg_sq",
                    f"gf_adam(param, grad, exp_avg, exp_avg_sq, (T*)0, {_ADAM_ARGS})",
                    headers=_OPT, scalars=_ADAM_SCALARS, numpy=_adam_np)
_adam_amsgrad = Elementwise("adam_amsgrad", _ADAM_IN, "T param, T exp_avg, T exp_avg_sq, T max_exp_avg_sq",
                            f"gf_adam(param, grad, exp_avg, exp_avg_sq, &max_exp_avg_sq, {_ADAM_ARGS})",
                            headers=_OPT, scalars=_ADAM_SCALARS, numpy=_adam_np)


def adam_(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step,
          amsgrad=False, decoupled_weight_decay=False, l1=0.0, maximize=False):
    """Adam step (AdamW with ``decoupled_weight_decay``); ``step`` is the 1-based count after increment."""
    _check(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    if step < 1:
        raise ValueError(f"adam_: step is 1-based (the count after this step), got {step}")
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    args = (grad, 1 - beta1, beta2, 1 - beta2, bias_correction2 ** 0.5, eps, -step_size, weight_decay,
            1 - lr * weight_decay, int(decoupled_weight_decay), l1, int(maximize), param, exp_avg, exp_avg_sq)
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("adam_: amsgrad needs max_exp_avg_sq")
        _adam_amsgrad(*args, max_exp_avg_sq)
    else:
        _adam(*args)


# ---- Adagrad -------------------------------------------------------------------------------------------
def _adagrad_np(grad, neg_clr, eps, weight_decay, l1, maximize, param, state_sum):
    g = _opt_grad(param, grad, maximize, weight_decay, l1)
    state_sum[...] = state_sum + g * g
    param[...] = param + neg_clr * g / (numpy.sqrt(state_sum) + eps)


_adagrad = Elementwise("adagrad", "T grad, T neg_clr, T eps, T weight_decay, T l1, int32 maximize",
                       "T param, T state_sum",
                       "gf_adagrad(param, grad, state_sum, neg_clr, eps, weight_decay, l1, maximize)",
                       headers=_OPT, scalars="neg_clr eps weight_decay l1 maximize", numpy=_adagrad_np)


def adagrad_(param, grad, state_sum, *, lr, lr_decay, weight_decay, eps, step, l1=0.0, maximize=False):
    """Adagrad step; ``step`` is the 1-based count after increment."""
    _check(param, grad, state_sum)
    clr = lr / (1 + (step - 1) * lr_decay)
    _adagrad(grad, -clr, eps, weight_decay, l1, int(maximize), param, state_sum)


# ---- Adadelta ------------------------------------------------------------------------------------------
def _adadelta_np(grad, neg_lr, rho, one_minus_rho, eps, weight_decay, l1, maximize, param, square_avg, acc_delta):
    g = _opt_grad(param, grad, maximize, weight_decay, l1)
    square_avg[...] = square_avg * rho + one_minus_rho * g * g
    delta = numpy.sqrt(acc_delta + eps) / numpy.sqrt(square_avg + eps) * g
    acc_delta[...] = acc_delta * rho + one_minus_rho * delta * delta
    axpy(neg_lr, delta, param)  # torch: param.add_(delta, alpha=-lr)


_adadelta = Elementwise(
    "adadelta", "T grad, T neg_lr, T rho, T one_minus_rho, T eps, T weight_decay, T l1, int32 maximize",
    "T param, T square_avg, T acc_delta",
    "gf_adadelta(param, grad, square_avg, acc_delta, neg_lr, rho, one_minus_rho, eps, weight_decay, l1, maximize)",
    headers=_OPT, scalars="neg_lr rho one_minus_rho eps weight_decay l1 maximize", numpy=_adadelta_np)


def adadelta_(param, grad, square_avg, acc_delta, *, lr, rho, eps, weight_decay, l1=0.0, maximize=False):
    _check(param, grad, square_avg, acc_delta)
    _adadelta(grad, -lr, rho, 1 - rho, eps, weight_decay, l1, int(maximize), param, square_avg, acc_delta)


# ---- RMSprop: four variants (centered or not, momentum or not) -------------------------------------------
def _rmsprop_np(grad, neg_lr, alpha, one_minus_alpha, eps, momentum, weight_decay, l1, maximize, param, square_avg,
                grad_avg=None, buf=None):
    g = _opt_grad(param, grad, maximize, weight_decay, l1)
    square_avg[...] = square_avg * alpha + one_minus_alpha * g * g
    if grad_avg is not None:
        grad_avg[...] = _lerp(grad_avg, g, one_minus_alpha)
        avg = numpy.sqrt(square_avg + -1 * grad_avg * grad_avg)
    else:
        avg = numpy.sqrt(square_avg)
    avg = avg + eps
    if buf is not None:
        buf[...] = buf * momentum + g / avg
        axpy(neg_lr, buf, param)  # torch: param.add_(buf, alpha=-lr)
    else:
        param[...] = param + neg_lr * g / avg


_RMS_IN = "T grad, T neg_lr, T alpha, T one_minus_alpha, T eps, T momentum, T weight_decay, T l1, int32 maximize"
_RMS_SCALARS = [p.split()[-1] for p in _RMS_IN.split(",")[1:]]
_RMS_ARGS = "neg_lr, alpha, one_minus_alpha, eps, momentum, weight_decay, l1, maximize"


def _rms_variant(name, outs, grad_avg, buf, numpy_impl):
    return Elementwise(name, _RMS_IN, outs, f"gf_rmsprop(param, grad, square_avg, {grad_avg}, {buf}, {_RMS_ARGS})",
                       headers=_OPT, scalars=_RMS_SCALARS, numpy=numpy_impl)


_rmsprop = _rms_variant("rmsprop", "T param, T square_avg", "(T*)0", "(T*)0", _rmsprop_np)
_rmsprop_centered = _rms_variant("rmsprop_centered", "T param, T square_avg, T grad_avg", "&grad_avg", "(T*)0",
                                 _rmsprop_np)
_rmsprop_momentum = _rms_variant("rmsprop_momentum", "T param, T square_avg, T buf", "(T*)0", "&buf",
                                 lambda *a: _rmsprop_np(*a[:-1], None, a[-1]))
_rmsprop_centered_momentum = _rms_variant("rmsprop_centered_momentum", "T param, T square_avg, T grad_avg, T buf",
                                          "&grad_avg", "&buf", _rmsprop_np)


def rmsprop_(param, grad, square_avg, grad_avg, momentum_buf, *, lr, alpha, eps, weight_decay, momentum, centered,
             l1=0.0, maximize=False):
    """RMSprop step; ``grad_avg`` is used only when centered, ``momentum_buf`` only when momentum > 0."""
    _check(param, grad, square_avg, grad_avg if centered else None, momentum_buf if momentum > 0 else None)
    if centered and grad_avg is None:
        raise ValueError("rmsprop_: centered=True needs grad_avg")
    if momentum > 0 and momentum_buf is None:
        raise ValueError("rmsprop_: momentum > 0 needs momentum_buf")
    args = (grad, -lr, alpha, 1 - alpha, eps, momentum, weight_decay, l1, int(maximize), param, square_avg)
    if centered and momentum > 0:
        _rmsprop_centered_momentum(*args, grad_avg, momentum_buf)
    elif centered:
        _rmsprop_centered(*args, grad_avg)
    elif momentum > 0:
        _rmsprop_momentum(*args, momentum_buf)
    else:
        _rmsprop(*args)


# ==== issue 13: NAdam, RAdam, Adamax ====================================================================
def _decay(param, g, weight_decay, decay_factor, decoupled):
    if weight_decay != 0:
        if decoupled:
            param[...] = param * param.dtype.type(decay_factor)
        else:
            g = axpy(weight_decay, param, g.copy())  # torch: grad.add(param, alpha=weight_decay)
    return g


def _nadam_np(grad, one_minus_beta1, beta2, one_minus_beta2, bias_correction2, eps, c_grad, c_avg, weight_decay,
              decay_factor, decoupled, maximize, param, exp_avg, exp_avg_sq):
    g = -grad if maximize else grad
    g = _decay(param, g, weight_decay, decay_factor, decoupled)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    denom = numpy.sqrt(exp_avg_sq / param.dtype.type(bias_correction2)) + eps
    param[...] = param + c_grad * g / denom
    param[...] = param + c_avg * exp_avg / denom


_NADAM_IN = ("T grad, T one_minus_beta1, T beta2, T one_minus_beta2, T bias_correction2, T eps, T c_grad, T c_avg, "
             "T weight_decay, T decay_factor, int32 decoupled, int32 maximize")
_nadam = Elementwise("nadam", _NADAM_IN, "T param, T exp_avg, T exp_avg_sq",
                     "gf_nadam(param, grad, exp_avg, exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, "
                     "bias_correction2, eps, c_grad, c_avg, weight_decay, decay_factor, decoupled, maximize)",
                     headers=_OPT, scalars=[p.split()[-1] for p in _NADAM_IN.split(",")[1:]], numpy=_nadam_np)


def nadam_mu_product(mu_product, mu):
    """torch keeps NAdam's running product of momentum coefficients in a float32 tensor."""
    return float(numpy.float32(mu_product) * numpy.float32(mu))


def nadam_(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, momentum_decay, step,
           mu_product, decoupled_weight_decay=False, maximize=False):
    """NAdam step; ``step`` is the 1-based count after increment, ``mu_product`` the product including
    this step's mu (see ``nadam_mu_product``). Returns nothing; the caller keeps mu_product."""
    _check(param, grad, exp_avg, exp_avg_sq)
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product_next = mu_product * mu_next
    c_grad = -lr * (1.0 - mu) / (1.0 - mu_product)
    c_avg = (-lr * mu_next) / (1.0 - mu_product_next)
    _nadam(grad, 1 - beta1, beta2, 1 - beta2, 1 - beta2 ** step, eps, c_grad, c_avg, weight_decay,
           1 - lr * weight_decay, int(decoupled_weight_decay), int(maximize), param, exp_avg, exp_avg_sq)


def _radam_np(grad, one_minus_beta1, beta2, one_minus_beta2, bias_correction1, lr, bias_correction2_sqrt, eps, rect,
              rectify, weight_decay, decay_factor, decoupled, maximize, param, exp_avg, exp_avg_sq):
    t = param.dtype.type
    g = -grad if maximize else grad
    g = _decay(param, g, weight_decay, decay_factor, decoupled)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    u = exp_avg / t(bias_correction1)
    u = u * t(lr)
    if rectify:
        adaptive = (t(1) / (numpy.sqrt(exp_avg_sq) + t(eps))) * t(bias_correction2_sqrt)
        u = u * adaptive
        u = u * t(rect)
    param[...] = param - u


_RADAM_IN = ("T grad, T one_minus_beta1, T beta2, T one_minus_beta2, T bias_correction1, T lr, "
             "T bias_correction2_sqrt, T eps, T rect, int32 rectify, T weight_decay, T decay_factor, "
             "int32 decoupled, int32 maximize")
_radam = Elementwise("radam", _RADAM_IN, "T param, T exp_avg, T exp_avg_sq",
                     "gf_radam(param, grad, exp_avg, exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, "
                     "bias_correction1, lr, bias_correction2_sqrt, eps, rect, rectify, weight_decay, decay_factor, "
                     "decoupled, maximize)",
                     headers=_OPT, scalars=[p.split()[-1] for p in _RADAM_IN.split(",")[1:]], numpy=_radam_np)


def radam_(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, step,
           decoupled_weight_decay=False, maximize=False):
    """RAdam step (Liu et al., 2020); ``step`` is the 1-based count after increment."""
    _check(param, grad, exp_avg, exp_avg_sq)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    rectify = rho_t > 5.0
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectify else 0.0
    _radam(grad, 1 - beta1, beta2, 1 - beta2, bias_correction1, lr, bias_correction2 ** 0.5, eps, rect,
           int(rectify), weight_decay, 1 - lr * weight_decay, int(decoupled_weight_decay), int(maximize),
           param, exp_avg, exp_avg_sq)


def _adamax_np(grad, one_minus_beta1, beta2, eps, neg_clr, weight_decay, maximize, param, exp_avg, exp_inf):
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = axpy(weight_decay, param, g.copy())  # torch: grad.add(param, alpha=weight_decay)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1)
    exp_inf[...] = numpy.maximum(exp_inf * beta2, numpy.abs(g) + eps)
    param[...] = param + neg_clr * exp_avg / exp_inf


_adamax = Elementwise("adamax", "T grad, T one_minus_beta1, T beta2, T eps, T neg_clr, T weight_decay, int32 maximize",
                      "T param, T exp_avg, T exp_inf",
                      "gf_adamax(param, grad, exp_avg, exp_inf, one_minus_beta1, beta2, eps, neg_clr, weight_decay, "
                      "maximize)",
                      headers=_OPT, scalars="one_minus_beta1 beta2 eps neg_clr weight_decay maximize",
                      numpy=_adamax_np)


def adamax_(param, grad, exp_avg, exp_inf, *, lr, beta1, beta2, eps, weight_decay, step, maximize=False):
    """Adamax step (the infinity-norm Adam); ``step`` is the 1-based count after increment."""
    _check(param, grad, exp_avg, exp_inf)
    clr = lr / (1 - beta1 ** step)
    _adamax(grad, 1 - beta1, beta2, eps, -clr, weight_decay, int(maximize), param, exp_avg, exp_inf)


# ---- multi-tensor path ---------------------------------------------------------------------------------
def flat_buffer(arrays, dtype=None, orders=None):
    """One contiguous buffer holding copies of ``arrays``, and views of it shaped like each.

    Keep a group's parameters, gradients and each state in buffers of the same layout and
    a single fused call on the buffers updates every parameter in one kernel launch
    (the elementwise rules do not care where one parameter ends). The group then shares
    its hyperparameters. ``orders`` gives each view's memory order ('C' or 'F', see
    ``memory_order``): every buffer of one group must use the parameters' orders, whatever
    the order of the arrays copied in, or the fused update would pair unrelated elements.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("flat_buffer: needs at least one array")
    xp = backend.xp_of(arrays[0])
    orders = orders or ["C"] * len(arrays)
    buffer = xp.empty(sum(a.size for a in arrays), dtype=dtype or arrays[0].dtype)
    views, start = [], 0
    for a, order in zip(arrays, orders):
        view = buffer[start:start + a.size].reshape(a.shape, order=order)
        view[...] = a
        views.append(view)
        start += a.size
    return buffer, views


def memory_order(array):
    """'F' for a 2-D array stored column-major (a Linear weight on the CPU), else 'C'."""
    return "F" if array.ndim == 2 and not array.flags.c_contiguous and array.flags.f_contiguous else "C"


# ---- device-scalar twins: the updates a captured step records ------------------------------------------
class Update:
    """One fused update kernel and its device-scalar twin.

    Called as the kernel (``_sgd(grad, -lr, ...)``) it runs it, unless an optimizer step is
    being folded for a captured replay (``deferred``): then it only logs the call, so the
    caller can launch the twin instead. The twin (``<name>_dev``) is the same declaration
    with every hyperparameter an array parameter: called with 0-d device arrays (views of
    one buffer that the host refills before each graph launch), its hyperparameters are
    read from device memory, so a CUDA graph holding the launch stays valid when the
    learning rate, the bias corrections or the step count change. After the hyperparameters
    it takes ``found_inf``, a 0-d float32 device flag: nonzero, the update does nothing
    (parameters and state keep their values), as PyTorch's capturable fused optimizers skip
    a step on the device when loss scaling found an inf or NaN gradient
    (``gradflow.amp.GradScaler.step`` in a CUDA graph). Called as
    ``update.device(*before, *scalars, found_inf, *after)``.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.scalars = [p for p in kernel.params if p.scalar]
        self.device = device_scalar_twin(kernel, skip="found_inf")

    def __call__(self, *args):
        if _deferred is not None:
            _deferred.append((self, args))
        else:
            self.kernel(*args)

    def split(self, args):
        """``args`` of a kernel call as (arrays before the scalars, scalar values, arrays after)."""
        first = next(k for k, p in enumerate(self.kernel.params) if p.scalar)
        end = first + len(self.scalars)
        return args[:first], args[first:end], args[end:]


_deferred = None  # a list while an optimizer step is folded for a captured launch (see Update)


class deferred:
    """``with fused.deferred() as calls:`` log the update calls made inside instead of running them."""

    def __enter__(self):
        global _deferred
        if _deferred is not None:
            raise RuntimeError("fused.deferred() does not nest")
        _deferred = []
        return _deferred

    def __exit__(self, *exc):
        global _deferred
        _deferred = None
        return False


for _name, _kernel in list(globals().items()):  # every update declared above gets its device-scalar twin
    if isinstance(_kernel, Elementwise) and _kernel.headers == _OPT:
        globals()[_name] = Update(_kernel)
del _name, _kernel
