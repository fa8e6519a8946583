"""The "no framework" baseline: an MLP trained by hand with explicit array calls.

Forward (affine + ReLU), softmax cross-entropy, backward with explicit matmuls and
momentum SGD updated in place -- written the way a competent person writes it by hand,
not deliberately slow: weights are kept transposed (in, out) so every GEMM is a plain
``a @ b``, gradients land in preallocated buffers (``matmul(..., out=)``), ReLU and the
optimizer work in place. There is no tape, no Tensor objects and no per-op dispatch,
so the gap between this and a framework is the framework's overhead.

``xp`` is ``numpy`` on the CPU or ``cupy`` on the GPU (the same code runs on both).
The update follows PyTorch's SGD exactly (dampening 0, no Nesterov, no weight decay):
``buf = momentum * buf + grad; param -= lr * buf``, with ``buf = grad`` on the first step.
"""
import numpy


def softmax_cross_entropy(xp, logits, y):
    """Mean softmax cross-entropy of integer labels ``y`` and its gradient with respect to the logits."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    loss = (xp.log(s[:, 0]) - z[rows, y]).mean()   # left on the device: no sync per step
    e /= s                                           # softmax probabilities
    e[rows, y] -= 1.0
    e *= 1.0 / n
    return loss, e


class NumpyMLP:
    """A ReLU MLP; ``weights`` is a list of (W, b) pairs with W of shape (out, in), as in PyTorch."""

    def __init__(self, weights, lr=0.1, momentum=0.9, xp=numpy, dtype=numpy.float32):
        self.xp = xp
        self.lr = float(lr)
        self.momentum = float(momentum)
        # keep W transposed to (in, out): the forward GEMM is x @ W with no transpose flag
        self.W = [xp.ascontiguousarray(xp.asarray(w, dtype=dtype).T) for w, _ in weights]
        self.b = [xp.asarray(b, dtype=dtype).copy() for _, b in weights]
        self.gW = [xp.empty_like(w) for w in self.W]
        self.gb = [xp.empty_like(b) for b in self.b]
        self.params = self.W + self.b
        self.grads = self.gW + self.gb
        self.bufs = [None] * len(self.params)   # momentum buffers, created on the first step

    def forward(self, x):
        """Logits, plus every layer's input (what backward needs); activations are post-ReLU."""
        xp = self.xp
        acts = [x]
        h = x
        last = len(self.W) - 1
        for i, (w, b) in enumerate(zip(self.W, self.b)):
            h = h @ w
            h += b
            if i < last:
                xp.maximum(h, 0, out=h)
                acts.append(h)
        return h, acts

    def predict(self, x):
        return self.forward(x)[0]

    def step(self, x, y):
        """One training step on a batch (x: float (n, in), y: int (n,)); returns the loss (unsynced)."""
        xp = self.xp
        logits, acts = self.forward(x)
        loss, g = softmax_cross_entropy(xp, logits, y)
        for i in reversed(range(len(self.W))):
            a = acts[i]
            xp.matmul(a.T, g, out=self.gW[i])
            g.sum(axis=0, out=self.gb[i])
            if i > 0:
                g = g @ self.W[i].T
                g *= a > 0                               # ReLU derivative (a is post-ReLU)
        self.update()
        return loss

    def update(self):
        """Momentum SGD in place, PyTorch's formula."""
        for k, (p, g) in enumerate(zip(self.params, self.grads)):
            buf = self.bufs[k]
            if buf is None:
                buf = self.bufs[k] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            p -= self.lr * buf

    def weights(self):
        """The current weights as (W (out, in), b) pairs on the host, for comparisons."""
        to_host = (lambda a: a) if self.xp is numpy else (lambda a: a.get())
        return [(to_host(w).T.copy(), to_host(b).copy()) for w, b in zip(self.W, self.b)]
