"""prunekit.functional and the numba kernels of _conv_kernels.

Values are checked against naive loop implementations written here (the most
literal reading of each definition), gradients against finite differences, and
each numba kernel against its NumPy ``*_reference`` (which is in turn checked
against the loops).
"""
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit._conv_kernels as K
import prunekit.functional as F
from gradhelpers import check_grads
from prunekit import nn
from prunekit.tensor import Tensor, gradcheck, no_grad

PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def serial_numba():
    """One numba thread for tests that call a kernel hundreds of times on tiny inputs (gradcheck).

    On a loaded 2-core machine every launch of a parallel kernel can cost ~10 ms of
    thread synchronisation; the multi-threaded kernels are tested by the property
    tests at the end of this file. Under the numpy backend there is no kernel (and numba stays unimported).
    """
    import prunekit

    if prunekit.get_backend() == "numpy":
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def leaf(shape, seed=0, scale=1.0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape) * scale, requires_grad=True)


def distinct(shape, seed=0):
    """float64 leaf with all entries different (gaps of 0.01): no ties inside a pooling window."""
    n = int(np.prod(shape))
    data = np.random.default_rng(seed).permutation(n).reshape(shape) * 0.01
    return Tensor(data.astype(np.float64), requires_grad=True)



# ------------------------------------------------------- naive references
def naive_conv2d(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(n):
        for q in range(o):
            for r in range(oh):
                for s in range(ow):
                    acc = 0.0
                    for ch in range(c):
                        for a in range(kh):
                            for bb in range(kw):
                                acc += xp[i, ch, r * sh + a, s * sw + bb] * w[q, ch, a, bb]
                    y[i, q, r, s] = acc + (0.0 if b is None else b[q])
    return y


def naive_im2col(x, kh, kw, sh, sw, ph, pw):
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = []
    for i in range(n):
        for r in range(oh):
            for s in range(ow):
                rows.append([xp[i, ch, r * sh + a, s * sw + b] for ch in range(c) for a in range(kh) for b in range(kw)])
    return np.array(rows, dtype=x.dtype).reshape(n * oh * ow, c * kh * kw)


def naive_col2im(cols, shape, kh, kw, sh, sw, ph, pw):
    n, c, h, w = shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros(shape, dtype=cols.dtype)
    for i in range(n):
        for r in range(oh):
            for s in range(ow):
                col = 0
                for ch in range(c):
                    for a in range(kh):
                        for b in range(kw):
                            y, x = r * sh - ph + a, s * sw - pw + b
                            if 0 <= y < h and 0 <= x < w:
                                out[i, ch, y, x] += cols[(i * oh + r) * ow + s, col]
                            col += 1
    return out


def naive_max_pool(x, kh, kw, sh, sw):
    """(out, flat argmax a*kw+b of the first maximum in row-major window order)."""
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, c, oh, ow), dtype=x.dtype)
    arg = np.zeros((n, c, oh, ow), dtype=np.int64)
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    best, best_k = -np.inf, -1
                    for a in range(kh):
                        for b in range(kw):
                            v = x[i, ch, r * sh + a, s * sw + b]
                            if v > best:
                                best, best_k = v, a * kw + b
                    out[i, ch, r, s], arg[i, ch, r, s] = best, best_k
    return out, arg


def naive_max_pool_backward(g, arg, shape, kh, kw, sh, sw):
    dx = np.zeros(shape, dtype=g.dtype)
    n, c, oh, ow = g.shape
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    k = arg[i, ch, r, s]
                    dx[i, ch, r * sh + k // kw, s * sw + k % kw] += g[i, ch, r, s]
    return dx


def naive_avg_pool(x, kh, kw, sh, sw):
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for s in range(ow):
            out[:, :, r, s] = x[:, :, r * sh:r * sh + kh, s * sw:s * sw + kw].mean(axis=(2, 3))
    return out


def naive_log_softmax(z):
    """Straight from the definition (fine for moderate logits)."""
    e = np.exp(z)
    return np.log(e / e.sum(axis=-1, keepdims=True))


# ------------------------------------------------------------ activations
@pytest.mark.parametrize("fn, ref", [
    (F.relu, lambda a: np.where(a > 0, a, 0.0)),
    (F.sigmoid, lambda a: 1 / (1 + np.exp(-a))),
    (F.tanh, np.tanh),
])
def test_activations(fn, ref):
    x = leaf((3, 4), 1)
    x.data[np.abs(x.data) < 0.05] = 0.3  # relu has a kink at 0
    np.testing.assert_allclose(fn(x).data, ref(x.data), rtol=1e-12)
    check_grads(fn, x)
    np.testing.assert_allclose(fn(x.data).data, ref(x.data), rtol=1e-12)  # plain arrays accepted


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(axis):
    x = leaf((3, 4, 5), 2)
    ls = F.log_softmax(x, axis=axis)
    ref = np.log(np.exp(x.data) / np.exp(x.data).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(ls.data, ref, rtol=1e-12, atol=1e-12)
    sm = F.softmax(x, axis=axis)
    np.testing.assert_allclose(sm.data.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(sm.data, np.exp(ref), rtol=1e-12)
    check_grads(lambda x: F.log_softmax(x, axis=axis), x)
    check_grads(lambda x: F.softmax(x, axis=axis), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_is_stable_for_huge_logits(dtype):
    z = np.array([[1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4, -1e4 + 2.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sm = F.softmax(Tensor(z, requires_grad=True))
        ls = F.log_softmax(Tensor(z))
        ce = F.cross_entropy(Tensor(z), np.array([0, 1]))
    shifted = z - z.max(axis=1, keepdims=True)  # softmax is shift-invariant
    np.testing.assert_allclose(sm.data, np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True), rtol=1e-5)
    assert np.all(np.isfinite(ls.data)) and np.all(np.isfinite(sm.data))
    np.testing.assert_allclose(sm.data.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ls.data[0, 2], -1e4 - np.log1p(np.exp(-1.0)), rtol=1e-6)
    expected_ce = (np.log1p(np.exp(-1.0)) + 2.0 + np.log1p(2 * np.exp(-2.0))) / 2
    assert ce.item() == pytest.approx(expected_ce, rel=1e-5)


# ----------------------------------------------------------------- losses
def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(3)
    z = leaf((6, 4), 3)
    y = rng.integers(0, 4, 6)
    ce = F.cross_entropy(z, y)
    p = np.exp(z.data) / np.exp(z.data).sum(axis=1, keepdims=True)
    assert ce.item() == pytest.approx(-np.mean(np.log(p[np.arange(6), y])), rel=1e-12)
    ce.backward()
    np.testing.assert_allclose(z.grad, (p - np.eye(4)[y]) / 6, atol=1e-14)
    check_grads(lambda z: F.cross_entropy(z, y), z)


def test_cross_entropy_dtype_and_accepted_labels():
    z = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    y = np.array([4, 0, 2])
    ce = F.cross_entropy(Tensor(z), y)
    assert ce.dtype == np.float32
    assert F.cross_entropy(Tensor(z), y.astype(np.int32)).item() == pytest.approx(ce.item())
    assert F.cross_entropy(Tensor(z), y.astype(np.uint8)).item() == pytest.approx(ce.item())
    assert F.cross_entropy(Tensor(z), [4, 0, 2]).item() == pytest.approx(ce.item())
    assert F.cross_entropy(Tensor(z), y.astype(np.float64)).item() == pytest.approx(ce.item())  # integral floats


@pytest.mark.parametrize("labels, exc, words", [
    (np.array([0, 3, 5]), ValueError, ["labels must be", "[0, 4]"]),        # 5 classes: max label 4
    (np.array([0, -1, 2]), ValueError, ["labels must be", "[0, 4]"]),
    (np.array([0, 1]), ValueError, ["labels must be", "(3,)"]),             # wrong length
    (np.array([0, 1, 2, 3]), ValueError, ["labels must be", "(3,)"]),
    (np.array([[0, 1, 2]]), ValueError, ["labels must be"]),                # wrong ndim
    (np.array([0.0, 1.5, 2.0]), TypeError, ["labels must be", "integer"]),  # non-integer floats
])
def test_cross_entropy_label_errors(labels, exc, words):
    z = Tensor(np.zeros((3, 5)))
    with pytest.raises(exc) as err:
        F.cross_entropy(z, labels)
    for w in words:
        assert w in str(err.value)


def test_cross_entropy_requires_2d_logits():
    with pytest.raises(ValueError, match="logits must be"):
        F.cross_entropy(Tensor(np.zeros(5)), np.array([1]))


def test_nll_loss():
    z = leaf((5, 3), 5)
    y = np.array([0, 2, 1, 1, 0])
    lp = F.log_softmax(z)
    nll = F.nll_loss(lp, y)
    assert nll.item() == pytest.approx(-np.mean(naive_log_softmax(z.data)[np.arange(5), y]), rel=1e-12)
    assert nll.item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-12)
    check_grads(lambda z: F.nll_loss(F.log_softmax(z), y), z)
    lp_leaf = leaf((5, 3), 6)
    lp_leaf.grad = None
    F.nll_loss(lp_leaf, y).backward()
    expected = np.zeros((5, 3))
    expected[np.arange(5), y] = -1 / 5
    np.testing.assert_allclose(lp_leaf.grad, expected)
    with pytest.raises(ValueError, match="labels must be"):
        F.nll_loss(lp, np.array([0, 3, 1, 1, 0]))


def test_mse_loss():
    p, t = leaf((4, 3), 7), leaf((4, 3), 8)
    loss = F.mse_loss(p, t)
    assert loss.item() == pytest.approx(np.mean((p.data - t.data) ** 2), rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(p.grad, 2 * (p.data - t.data) / 12)
    check_grads(lambda p, t: F.mse_loss(p, t), p, t)
    assert F.mse_loss(p, t.data).item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="target must be"):
        F.mse_loss(p, np.zeros((4, 1)))


# ----------------------------------------------------------------- linear
@pytest.mark.parametrize("xshape", [(5, 3), (3,), (2, 4, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(xshape, with_bias):
    x, w = leaf(xshape, 9), leaf((4, 3), 10)
    b = leaf((4,), 11) if with_bias else None
    out = F.linear(x, w, b)
    np.testing.assert_allclose(out.data, x.data @ w.data.T + (b.data if with_bias else 0), rtol=1e-12)
    inputs = (x, w, b) if with_bias else (x, w)
    check_grads(lambda *a: F.linear(a[0], a[1], a[2] if with_bias else None), *inputs)


def test_linear_skips_gradient_of_constant_input():
    w, b = leaf((4, 3), 12), leaf((4,), 13)
    x = Tensor(np.ones((2, 3)))
    F.linear(x, w, b).sum().backward()
    assert x.grad is None
    np.testing.assert_allclose(w.grad, np.full((4, 3), 2.0))
    np.testing.assert_allclose(b.grad, np.full(4, 2.0))


def test_linear_wrong_in_features():
    with pytest.raises(ValueError, match="x must be"):
        F.linear(Tensor(np.ones((2, 5))), leaf((4, 3)))


# ------------------------------------------------------------ convolution
CONV_CASES = [
    # (x shape, weight shape, stride, padding)
    ((2, 1, 5, 5), (3, 1, 3, 3), 1, 0),
    ((2, 2, 5, 6), (3, 2, 3, 3), 1, 1),
    ((1, 3, 7, 6), (2, 3, 3, 3), 2, 0),
    ((2, 2, 6, 7), (3, 2, 3, 3), 2, 1),
    ((1, 2, 4, 5), (2, 2, 3, 3), 1, 2),
    ((2, 2, 5, 6), (3, 2, 2, 3), 1, 1),         # non-square kernel
    ((1, 3, 6, 5), (2, 3, 3, 1), (2, 1), (1, 0)),  # per-axis stride and padding
    ((2, 3, 4, 4), (4, 3, 1, 1), 1, 0),         # 1x1 convolution
    ((1, 2, 5, 5), (2, 2, 5, 5), 1, 0),         # kernel covers the whole image
    ((1, 1, 1, 1), (2, 1, 1, 1), 1, 0),         # 1x1 image
]


def _pairs(v):
    return (v, v) if isinstance(v, int) else v


@pytest.fixture(params=["im2col", "direct"])
def conv_path(request, monkeypatch):
    """Run a conv test through im2col + BLAS, and through the direct kernels where they apply (stride 1)."""
    monkeypatch.setattr(F, "DIRECT_CONV_MAX_CHANNELS", 0 if request.param == "im2col" else 1_000)
    return request.param


@pytest.mark.parametrize("xs, ws, stride, padding", CONV_CASES)
def test_conv2d_against_loops_and_finite_differences(xs, ws, stride, padding, serial_numba, conv_path):
    x, w, b = leaf(xs, 14), leaf(ws, 15), leaf((ws[0],), 16)
    out = F.conv2d(x, w, b, stride=stride, padding=padding)
    np.testing.assert_allclose(out.data, naive_conv2d(x.data, w.data, b.data, _pairs(stride), _pairs(padding)),
                               rtol=1e-10, atol=1e-12)
    check_grads(lambda x, w, b: F.conv2d(x, w, b, stride, padding), x, w, b)


def test_conv2d_without_bias_and_float32(serial_numba, conv_path):
    x = np.random.default_rng(17).standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = np.random.default_rng(18).standard_normal((4, 3, 3, 3)).astype(np.float32)
    out = F.conv2d(Tensor(x), Tensor(w, requires_grad=True), None, stride=1, padding=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, naive_conv2d(x, w, None, (1, 1), (1, 1)), rtol=1e-4, atol=1e-4)
    xl, wl = leaf((1, 2, 4, 4), 19), leaf((3, 2, 2, 2), 20)
    check_grads(lambda x, w: F.conv2d(x, w, stride=2), xl, wl)


def test_conv2d_weight_gradient_matches_im2col_formula(conv_path):
    x, w = leaf((2, 2, 5, 5), 21), leaf((3, 2, 3, 3), 22)
    g = np.random.default_rng(23).standard_normal((2, 3, 3, 3))
    F.conv2d(x, w).backward(g)
    # dL/dW[o, c, a, b] = sum_{n, i, j} g[n, o, i, j] * x[n, c, i + a, j + b]
    expected = np.zeros(w.shape)
    for a in range(3):
        for b in range(3):
            expected[:, :, a, b] = np.einsum("noij,ncij->oc", g, x.data[:, :, a:a + 3, b:b + 3])
    np.testing.assert_allclose(w.grad, expected, rtol=1e-10)


def test_conv2d_wrong_channel_count_names_x_and_channels():
    with pytest.raises(ValueError) as err:
        F.conv2d(Tensor(np.ones((1, 2, 5, 5))), leaf((4, 3, 3, 3)))
    msg = str(err.value)
    assert "x must be" in msg and "3 channels" in msg and "2 channels" in msg


def test_conv2d_other_input_errors():
    w = leaf((4, 3, 3, 3))
    with pytest.raises(ValueError, match="x must be"):
        F.conv2d(Tensor(np.ones((3, 5, 5))), w)          # not 4-D
    with pytest.raises(ValueError, match="x must be"):
        F.conv2d(Tensor(np.ones((1, 3, 2, 2))), w)       # smaller than the kernel
    with pytest.raises(TypeError, match="stride must be"):
        F.conv2d(Tensor(np.ones((1, 3, 5, 5))), w, stride=1.5)


_X = np.zeros((1, 1, 5, 5))
_W = np.zeros((1, 1, 3, 3))


@pytest.mark.parametrize("call, name", [
    (lambda: F.conv2d(Tensor(_X), Tensor(_W), stride=0), "stride"),
    (lambda: F.conv2d(Tensor(_X), Tensor(_W), stride=-1), "stride"),
    (lambda: F.conv2d(Tensor(_X), Tensor(_W), padding=-1), "padding"),
    (lambda: F.max_pool2d(Tensor(_X), 0), "kernel_size"),
    (lambda: F.max_pool2d(Tensor(_X), 2, stride=0), "stride"),
    (lambda: F.max_pool2d(Tensor(_X), 2, stride=-1), "stride"),
    (lambda: F.avg_pool2d(Tensor(_X), 2, stride=0), "stride"),
    (lambda: nn.Conv2d(1, 1, 3, stride=0), "stride"),
    (lambda: nn.Conv2d(1, 1, 0), "kernel_size"),
], ids=["conv_stride0", "conv_stride_neg", "conv_pad_neg", "maxpool_k0", "maxpool_stride0",
        "maxpool_stride_neg", "avgpool_stride0", "Conv2d_stride0", "Conv2d_k0"])
def test_window_arguments_are_validated(call, name):
    with pytest.raises(ValueError, match=f"{name} must be"):
        call()


# ---------------------------------------------------------------- pooling
POOL_CASES = [
    # (x shape, kernel, stride)
    ((2, 2, 4, 4), 2, None),
    ((1, 2, 5, 5), 2, None),        # leftover row/column ignored
    ((2, 1, 5, 6), 3, 1),           # overlapping windows
    ((1, 2, 6, 7), 2, 3),           # stride > kernel: gaps
    ((1, 2, 5, 7), (2, 3), (1, 2)), # non-square window and stride
    ((2, 3, 3, 3), 3, None),        # one window covers everything
    ((1, 1, 4, 4), 1, 1),           # 1x1 window: identity
]


@pytest.mark.parametrize("xs, k, s", POOL_CASES)
def test_max_pool2d(xs, k, s, serial_numba):
    x = distinct(xs, 24)
    kh, kw = _pairs(k)
    sh, sw = _pairs(k if s is None else s)
    out = F.max_pool2d(x, k, s)
    ref, arg = naive_max_pool(x.data, kh, kw, sh, sw)
    np.testing.assert_array_equal(out.data, ref)
    check_grads(lambda x: F.max_pool2d(x, k, s), x)
    g = np.random.default_rng(25).standard_normal(out.shape)
    x.grad = None
    F.max_pool2d(x, k, s).backward(g)
    np.testing.assert_allclose(x.grad, naive_max_pool_backward(g, arg, xs, kh, kw, sh, sw), rtol=1e-12)


def test_max_pool2d_ties_go_to_the_first_maximum():
    x = Tensor(np.array([[[[1.0, 1.0, 0.0], [1.0, 0.0, 2.0], [2.0, 2.0, 2.0]]]]), requires_grad=True)
    F.max_pool2d(x, 2, 1).backward(np.ones((1, 1, 2, 2)))
    # windows: [[1,1],[1,0]] -> (0,0); [[1,0],[0,2]] -> (1,2); [[1,0],[2,2]] -> (2,0); [[0,2],[2,2]] -> (1,2)
    np.testing.assert_array_equal(x.grad[0, 0], [[1, 0, 0], [0, 0, 2], [1, 0, 0]])


@pytest.mark.parametrize("xs, k, s", POOL_CASES)
def test_avg_pool2d(xs, k, s):
    x = leaf(xs, 26)
    kh, kw = _pairs(k)
    sh, sw = _pairs(k if s is None else s)
    np.testing.assert_allclose(F.avg_pool2d(x, k, s).data, naive_avg_pool(x.data, kh, kw, sh, sw), rtol=1e-12)
    check_grads(lambda x: F.avg_pool2d(x, k, s), x)


def test_pool_dtype_and_errors():
    x32 = Tensor(np.ones((1, 1, 4, 4), dtype=np.float32))
    assert F.max_pool2d(x32, 2).dtype == np.float32
    assert F.avg_pool2d(x32, 2).dtype == np.float32
    with pytest.raises(ValueError, match="kernel_size must be"):
        F.max_pool2d(x32, 5)
    with pytest.raises(ValueError, match="x must be"):
        F.avg_pool2d(Tensor(np.ones((4, 4))), 2)


# ---------------------------------------------------------- batch norm
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 3)])
def test_batch_norm_training(shape):
    x, w, b = leaf(shape, 27, scale=2.0), leaf((3,), 28), leaf((3,), 29)
    x.data += 1.5
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bshape = (1, 3) if len(shape) == 2 else (1, 3, 1, 1)
    rm0 = np.array([0.1, -0.2, 0.3])
    rv0 = np.array([1.0, 2.0, 0.5])
    rm, rv = rm0.copy(), rv0.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-5)
    mean = x.data.mean(axis=axes)
    var = x.data.var(axis=axes)                      # biased, used to normalise
    m = x.data.size // 3
    xhat = (x.data - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5)
    np.testing.assert_allclose(y.data, xhat * w.data.reshape(bshape) + b.data.reshape(bshape), rtol=1e-10)
    np.testing.assert_allclose(rm, 0.8 * rm0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.8 * rv0 + 0.2 * var * m / (m - 1), rtol=1e-12)  # unbiased
    check_grads(lambda x, w, b: F.batch_norm(x, rm0.copy(), rv0.copy(), w, b, True), x, w, b)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 3, 2)])
def test_batch_norm_eval_uses_running_statistics(shape):
    x, w, b = leaf(shape, 30), leaf((3,), 31), leaf((3,), 32)
    bshape = (1, 3) if len(shape) == 2 else (1, 3, 1, 1)
    rm, rv = np.array([0.5, -1.0, 2.0]), np.array([4.0, 0.25, 1.0])
    rm_before, rv_before = rm.copy(), rv.copy()
    y = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)
    expected = (x.data - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + 1e-5) * w.data.reshape(bshape) \
        + b.data.reshape(bshape)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12)
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)
    check_grads(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False), x, w, b)


def test_batch_norm_without_affine():
    x = leaf((6, 2), 33)
    y = F.batch_norm(x, np.zeros(2), np.ones(2), training=True)
    np.testing.assert_allclose(y.data.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.data.var(axis=0), 1.0, rtol=1e-4)
    check_grads(lambda x: F.batch_norm(x, np.zeros(2), np.ones(2), None, None, True), x)


def test_batch_norm_takes_pytorchs_positional_order():
    """torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps).

    Hand-computed: channel values [1, 3] and [2, 6] (batch of 2): batch means 2 and 4,
    biased variances 1 and 4, so x_hat = [-1, 1] / sqrt(1 + eps) and [-2, 2] / sqrt(4 + eps);
    y = x_hat * [2, 3] + [10, 20]. Running stats, momentum 0.5, unbiased variances 2 and 8:
    mean 0.5 * [0, 0] + 0.5 * [2, 4] = [1, 2]; var 0.5 * [1, 1] + 0.5 * [2, 8] = [1.5, 4.5].
    """
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    rm, rv = np.zeros(2), np.ones(2)
    w, b = Tensor(np.array([2.0, 3.0])), Tensor(np.array([10.0, 20.0]))
    y = F.batch_norm(Tensor(x), rm, rv, w, b, True, 0.5, 1e-5)
    e = 1e-5
    expected = np.array([[-2 / np.sqrt(1 + e) + 10, -6 / np.sqrt(4 + e) + 20],
                         [2 / np.sqrt(1 + e) + 10, 6 / np.sqrt(4 + e) + 20]])
    np.testing.assert_allclose(y.data, expected, rtol=1e-12)
    np.testing.assert_allclose(rm, [1.0, 2.0])
    np.testing.assert_allclose(rv, [1.5, 4.5])
    # evaluation mode, positionally: (x - running_mean) / sqrt(running_var + eps) * weight + bias
    y = F.batch_norm(Tensor(x), rm, rv, w, b, False, 0.5, 1e-5)
    np.testing.assert_allclose(y.data, (x - [1, 2]) / np.sqrt(np.array([1.5, 4.5]) + e) * [2, 3] + [10, 20],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="batch_norm\\(\\): bias must be given exactly when weight is given"):
        F.batch_norm(Tensor(x), rm, rv, w, None, False)


def test_batch_norm_after_a_layer_backpropagates_into_it():
    """The normalised input is an interior node reached by several paths (mean, var, centring)."""
    x, w = leaf((6, 3), 34), leaf((4, 3), 35)
    check_grads(lambda x, w: F.batch_norm(F.linear(x, w).tanh(), np.zeros(4), np.ones(4), None, None, True), x, w)


# ---------------------------------------------------------------- dropout
def test_dropout_scaling_and_rate():
    x = Tensor(np.ones((200, 500), dtype=np.float32))
    y = F.dropout(x, p=0.3, training=True, rng=np.random.default_rng(0)).data
    assert y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.7)}
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.01                 # 100k Bernoulli draws: sd ~ 0.0015
    assert abs(y.mean() - 1.0) < 0.02                # inverted dropout keeps the mean


def test_dropout_seeded_and_gradient():
    x = leaf((4, 6), 36)
    a = F.dropout(x, 0.5, rng=np.random.default_rng(7))
    b = F.dropout(x, 0.5, rng=np.random.default_rng(7))
    c = F.dropout(x, 0.5, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    kept = a.data != 0
    np.testing.assert_allclose(a.data[kept], 2 * x.data[kept])
    a.sum().backward()
    np.testing.assert_allclose(x.grad, 2.0 * kept)
    x.grad = None
    check_grads(lambda x: F.dropout(x, 0.4, rng=np.random.default_rng(9)), x)


def test_dropout_identity_cases_and_errors():
    x = leaf((3, 3), 37)
    np.testing.assert_array_equal(F.dropout(x, 0.0, rng=np.random.default_rng(0)).data, x.data)
    np.testing.assert_array_equal(F.dropout(x, 0.9, training=False).data, x.data)
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p must be"):
            F.dropout(x, p)


# ---------------------------------------------------------------- flatten
def test_flatten():
    x = leaf((2, 3, 4, 5), 38)
    np.testing.assert_array_equal(F.flatten(x).data, x.data.reshape(2, 60))
    np.testing.assert_array_equal(F.flatten(x, start_dim=2).data, x.data.reshape(2, 3, 20))
    np.testing.assert_array_equal(F.flatten(x, start_dim=0).data, x.data.reshape(-1))
    assert F.flatten(Tensor(np.zeros((0, 3, 4), np.float32))).shape == (0, 12)   # an empty batch, as in torch
    check_grads(lambda x: F.flatten(x), x)
    with pytest.raises(ValueError, match="start_dim must be"):
        F.flatten(x, start_dim=4)


# ---------------------------------- numba kernels vs NumPy references vs loops
@st.composite
def conv_geometry(draw):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, h + 2 * ph)), draw(st.integers(1, w + 2 * pw))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (n, c, h, w), (kh, kw, sh, sw, ph, pw), dtype


@pytest.mark.numba
@PROPERTY
@given(geom=conv_geometry(), seed=st.integers(0, 2**31 - 1))
def test_im2col_kernel_reference_and_loops_agree(geom, seed):
    shape, (kh, kw, sh, sw, ph, pw), dtype = geom
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    oh, ow = K.out_size(shape[2], kh, sh, ph), K.out_size(shape[3], kw, sw, pw)
    # the kernels store patches as columns: (C*kh*kw, N*OH*OW), the transpose of the loops' rows
    cols = np.full((shape[1] * kh * kw, shape[0] * oh * ow), np.nan, dtype=dtype)
    K.im2col_kernel(x, kh, kw, sh, sw, ph, pw, oh, ow, cols)
    ref = K.im2col_reference(x, kh, kw, sh, sw, ph, pw)
    loops = naive_im2col(x, kh, kw, sh, sw, ph, pw)
    np.testing.assert_array_equal(ref.T, loops)
    np.testing.assert_array_equal(cols, ref)
    np.testing.assert_array_equal(F.im2col(x, (kh, kw), (sh, sw), (ph, pw)), loops)


@pytest.mark.numba
@PROPERTY
@given(geom=conv_geometry(), seed=st.integers(0, 2**31 - 1))
def test_col2im_kernel_reference_and_loops_agree_and_are_the_adjoint(geom, seed):
    shape, (kh, kw, sh, sw, ph, pw), dtype = geom
    rng = np.random.default_rng(seed)
    oh, ow = K.out_size(shape[2], kh, sh, ph), K.out_size(shape[3], kw, sw, pw)
    cols = rng.standard_normal((shape[0] * oh * ow, shape[1] * kh * kw)).astype(dtype)
    out = np.full(shape, np.nan, dtype=dtype)  # the kernel must overwrite, not add to, its output
    K.col2im_kernel(np.ascontiguousarray(cols.T), kh, kw, sh, sw, ph, pw, oh, ow, out)
    ref = K.col2im_reference(np.ascontiguousarray(cols.T), shape, kh, kw, sh, sw, ph, pw)
    loops = naive_col2im(cols, shape, kh, kw, sh, sw, ph, pw)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ref, loops, rtol=tol, atol=tol)
    np.testing.assert_allclose(out, loops, rtol=tol, atol=tol)
    # adjoint: <im2col(x), c> == <x, col2im(c)>
    x = rng.standard_normal(shape)
    c64 = cols.astype(np.float64)
    lhs = np.sum(F.im2col(x, (kh, kw), (sh, sw), (ph, pw)) * c64)
    rhs = np.sum(x * naive_col2im(c64, shape, kh, kw, sh, sw, ph, pw))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


@st.composite
def direct_conv_geometry(draw):
    n, c, o = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 40))  # rows wider and narrower than a vector
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, h + 2 * ph)), draw(st.integers(1, w + 2 * pw))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (n, c, h, w), (o, c, kh, kw), (ph, pw), dtype


@pytest.mark.numba
@PROPERTY
@given(geom=direct_conv_geometry(), bias=st.booleans(), parallel=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_direct_conv_kernels_match_references_and_loops(geom, bias, parallel, seed):
    """Forward vs the NumPy reference and the loops; weight/bias gradients vs their einsum formula;
    the input gradient is the adjoint of the forward: <conv(x), g> == <x, grad_x(g)>."""
    xs, ws, (ph, pw), dtype = geom
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else np.zeros(0, dtype)
    kh, kw = ws[2:]
    oh, ow = K.out_size(xs[2], kh, 1, ph), K.out_size(xs[3], kw, 1, pw)
    pick = (lambda k: k) if parallel else (lambda k: k.serial)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)

    y = np.full((xs[0], ws[0], oh, ow), np.nan, dtype=dtype)  # must be overwritten
    pick(K.conv_direct_kernel)(x, w, b, ph, pw, y)
    ref = K.conv_direct_reference(x, w, b if bias else None, 1, 1, ph, pw)
    np.testing.assert_allclose(ref, naive_conv2d(x, w, b if bias else None, (1, 1), (ph, pw)), **tol)
    np.testing.assert_allclose(y, ref, **tol)

    g = rng.standard_normal(y.shape).astype(dtype)
    tasks = min(xs[0], 3)
    part_w = np.full((tasks,) + ws, np.nan, dtype=dtype)
    part_b = np.full((tasks, ws[0]), np.nan, dtype=dtype)
    pick(K.conv_direct_grad_w_kernel)(x, g, ph, pw, part_w, part_b)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dw = np.zeros(ws)
    for a in range(kh):
        for c in range(kw):
            dw[:, :, a, c] = np.einsum("noij,ncij->oc", g, xp[:, :, a:a + oh, c:c + ow])
    np.testing.assert_allclose(part_w.sum(axis=0), dw, **tol)
    np.testing.assert_allclose(part_b.sum(axis=0), g.sum(axis=(0, 2, 3)), **tol)
    ref_dw, ref_db = K.conv_direct_grad_w_reference(x, g, kh, kw, ph, pw)
    np.testing.assert_allclose(ref_dw, dw, **tol)
    np.testing.assert_allclose(ref_db, g.sum(axis=(0, 2, 3)), **tol)

    dx = np.full(xs, np.nan, dtype=dtype)
    pick(K.conv_direct_grad_x_kernel)(g, w, ph, pw, dx)
    ref_dx = K.conv_direct_grad_x_reference(g, w, xs, ph, pw)
    np.testing.assert_allclose(dx, ref_dx, **tol)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    lhs = np.sum(K.conv_direct_reference(x64, w.astype(np.float64), None, 1, 1, ph, pw) * g64)
    for got in (dx, ref_dx):  # the input gradient is the adjoint of the forward
        assert lhs == pytest.approx(np.sum(x64 * got), rel=1e-4 if dtype == np.float32 else 1e-10, abs=1e-4)


def test_conv2d_takes_the_direct_path_only_where_it_applies(monkeypatch):
    """Few channels and stride 1 -> direct kernels; otherwise im2col (so both get exercised in models)."""
    calls = []
    monkeypatch.setattr(F, "_direct_conv2d", lambda *a: calls.append(a) or "direct")
    x1, x8 = Tensor(np.ones((1, 1, 6, 6))), Tensor(np.ones((1, 8, 6, 6)))
    assert F.conv2d(x1, Tensor(np.ones((2, 1, 3, 3)))) == "direct"
    assert F.conv2d(x1, Tensor(np.ones((2, 1, 3, 3))), stride=2) != "direct"
    assert F.conv2d(x8, Tensor(np.ones((2, 8, 3, 3)))) != "direct"
    assert F.conv2d(x1, Tensor(np.ones((2, 1, 1, 1)))) != "direct"  # 1x1: a plain matrix product
    assert len(calls) == 1


@st.composite
def pool_geometry(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, h)), draw(st.integers(1, w))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ties = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (n, c, h, w), (kh, kw, sh, sw), ties, dtype


@pytest.mark.numba
@PROPERTY
@given(geom=pool_geometry(), seed=st.integers(0, 2**31 - 1))
def test_max_pool_kernels_reference_and_loops_agree(geom, seed):
    shape, (kh, kw, sh, sw), ties, dtype = geom
    rng = np.random.default_rng(seed)
    # with ties=True values come from {0, 1, 2}, so most windows have tied maxima
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    oh, ow = (shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1
    out = np.empty(shape[:2] + (oh, ow), dtype=dtype)
    arg = np.empty(out.shape, dtype=np.int32)
    K.max_pool_kernel(x, kh, kw, sh, sw, out, arg)
    ref_out, ref_arg = K.max_pool_reference(x, kh, kw, sh, sw)
    loop_out, loop_arg = naive_max_pool(x, kh, kw, sh, sw)
    np.testing.assert_array_equal(ref_out, loop_out)
    np.testing.assert_array_equal(ref_arg, loop_arg)
    np.testing.assert_array_equal(out, loop_out)
    np.testing.assert_array_equal(arg, loop_arg)

    g = rng.standard_normal(out.shape).astype(dtype)
    dx = np.full(shape, np.nan, dtype=dtype)
    K.max_pool_backward_kernel(g, arg, kh, kw, sh, sw, dx)
    ref_dx = K.max_pool_backward_reference(g, ref_arg, shape, kh, kw, sh, sw)
    loop_dx = naive_max_pool_backward(g, loop_arg, shape, kh, kw, sh, sw)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ref_dx, loop_dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, loop_dx, rtol=tol, atol=tol)


@pytest.mark.numba
def test_kernels_pure_python_versions_match_reference():
    """``py_func`` is the uncompiled kernel: same code path a learner steps through in a debugger."""
    x = np.random.default_rng(40).standard_normal((1, 2, 4, 5))
    oh, ow = K.out_size(4, 3, 1, 1), K.out_size(5, 2, 2, 1)
    cols = np.empty((2 * 3 * 2, oh * ow))
    K.im2col_kernel.py_func(x, 3, 2, 1, 2, 1, 1, oh, ow, cols)
    np.testing.assert_array_equal(cols.T, naive_im2col(x, 3, 2, 1, 2, 1, 1))


def test_no_grad_conv_and_pool_build_no_graph():
    x, w = leaf((1, 1, 4, 4), 41), leaf((2, 1, 3, 3), 42)
    with no_grad():
        y = F.max_pool2d(F.conv2d(x, w, padding=1), 2)
        z = F.cross_entropy(F.linear(F.flatten(y), leaf((3, 8), 43)), np.array([1]))
    assert not y.requires_grad and not z.requires_grad and z._parents == ()


def test_batch_norm_refuses_a_single_value_per_channel_in_training():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="x must be"):
        bn(Tensor(np.ones((1, 3), np.float32)))
    bn.eval()
    assert bn(Tensor(np.ones((1, 3), np.float32))).shape == (1, 3)
