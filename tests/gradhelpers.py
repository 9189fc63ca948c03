"""Helpers shared by the gradient tests."""
import numpy as np

from prunekit.tensor import gradcheck


def check_grads(f, *inputs):
    """gradcheck plus: every leaf's grad has the leaf's shape (allclose would broadcast)."""
    assert gradcheck(f, inputs)
    for t in inputs:
        t.grad = None
    out = f(*inputs)
    out.backward(np.ones(out.shape))
    for t in inputs:
        assert t.grad is not None
        assert t.grad.shape == t.shape, (t.grad.shape, t.shape)
