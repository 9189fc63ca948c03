"""prunekit.tensor: every op checked against NumPy (forward) and finite differences (backward).

Gradients are checked with ``gradcheck`` in float64 (central differences), plus an
explicit shape check: ``gradcheck`` compares with ``np.allclose``, which would
broadcast a wrongly shaped gradient and let it pass.
"""
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit.tensor as tensor_module
from gradhelpers import check_grads
from prunekit.tensor import Tensor, enable_grad, gradcheck, is_grad_enabled, no_grad

PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------- helpers
def leaf(shape, seed=0, low=None, high=None, away_from_zero=False):
    """A float64 leaf with requires_grad; optionally uniform in [low, high] or |x| in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    if low is not None:
        data = rng.uniform(low, high, size=shape)
    elif away_from_zero:
        data = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)
    else:
        data = rng.standard_normal(shape)
    return Tensor(np.asarray(data, dtype=np.float64), requires_grad=True)


def distinct(shape, seed=0):
    """A float64 leaf whose entries are all different (gaps >= 0.1): no ties for max."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    data = rng.permutation(n).astype(np.float64).reshape(shape) * 0.1 - 0.05 * n
    return Tensor(data, requires_grad=True)



seeds = st.integers(0, 2**31 - 1)


# ------------------------------------------------- binary ops, broadcasting
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@PROPERTY
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3), seed=seeds)
def test_binary_op_broadcasting(name, shapes, seed):
    op, ref = BINARY[name]
    sa, sb = shapes.input_shapes
    a, b = leaf(sa, seed), leaf(sb, seed + 1, away_from_zero=True)
    out = op(a, b)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.data, ref(a.data, b.data), rtol=1e-12)
    check_grads(op, a, b)


def test_binary_grads_against_closed_form():
    a = leaf((2, 3), 1)
    b = leaf((3,), 2, away_from_zero=True)
    ((a * b) / b + a * b - b).sum().backward()
    np.testing.assert_allclose(a.grad, 1 + np.broadcast_to(b.data, (2, 3)))
    np.testing.assert_allclose(b.grad, a.data.sum(axis=0) - 2, atol=1e-12)  # -b is broadcast over 2 rows


@pytest.mark.parametrize("op, ref", [
    (lambda x: 2.5 + x, lambda x: 2.5 + x),
    (lambda x: 2.5 - x, lambda x: 2.5 - x),
    (lambda x: 2.5 * x, lambda x: 2.5 * x),
    (lambda x: 2.5 / x, lambda x: 2.5 / x),
    (lambda x: 2.0 ** x, lambda x: 2.0 ** x),
    (lambda x: -x, lambda x: -x),
    (lambda x: np.arange(1.0, 4.0) + x, lambda x: np.arange(1.0, 4.0) + x),
    (lambda x: np.arange(1.0, 4.0) - x, lambda x: np.arange(1.0, 4.0) - x),
    (lambda x: np.arange(1.0, 4.0) * x, lambda x: np.arange(1.0, 4.0) * x),
    (lambda x: np.arange(1.0, 4.0) / x, lambda x: np.arange(1.0, 4.0) / x),
], ids=["radd", "rsub", "rmul", "rdiv", "rpow", "neg", "nd+T", "nd-T", "nd*T", "nd/T"])
def test_reflected_and_unary_minus(op, ref):
    x = leaf((2, 3), 3, away_from_zero=True)
    out = op(x)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.data, ref(x.data), rtol=1e-12)
    check_grads(op, x)


def test_ndarray_matmul_tensor_is_reflected():
    m = np.arange(6.0).reshape(2, 3)
    x = leaf((3, 4), 4)
    out = m @ x
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.data, m @ x.data)
    check_grads(lambda x: m @ x, x)


# ------------------------------------------------------------------- pow
@pytest.mark.parametrize("exponent", [2, 3, -1, -2, 0.5, 1.5, -0.5, 0, 1])
def test_pow_scalar_exponent(exponent):
    x = leaf((3, 2), 5, low=0.5, high=2.0)
    out = x ** exponent
    np.testing.assert_allclose(out.data, x.data ** exponent)
    check_grads(lambda x: x ** exponent, x)
    x.grad = None
    (x ** exponent).sum().backward()
    np.testing.assert_allclose(x.grad, exponent * x.data ** (exponent - 1) if exponent else 0.0)


@pytest.mark.parametrize("exponent", [2, 3])
def test_pow_integer_exponent_negative_base(exponent):
    x = leaf((4,), 6, away_from_zero=True)
    np.testing.assert_allclose((x ** exponent).data, x.data ** exponent)
    check_grads(lambda x: x ** exponent, x)


def test_pow_tensor_exponent_and_rpow():
    x = leaf((2, 3), 7, low=0.5, high=2.0)
    y = leaf((3,), 8)
    np.testing.assert_allclose((x ** y).data, x.data ** y.data)
    check_grads(lambda x, y: x ** y, x, y)
    x.grad = y.grad = None
    (x ** y).sum().backward()
    np.testing.assert_allclose(y.grad, (x.data ** y.data * np.log(x.data)).sum(axis=0))
    z = leaf((4,), 9)
    np.testing.assert_allclose((3.0 ** z).data, 3.0 ** z.data)
    check_grads(lambda z: 3.0 ** z, z)
    z.grad = None
    (3.0 ** z).sum().backward()
    np.testing.assert_allclose(z.grad, np.log(3.0) * 3.0 ** z.data)


def test_pow_rejects_non_number_exponent():
    with pytest.raises(TypeError, match="exponent"):
        Tensor([1.0, 2.0]) ** "2"


# --------------------------------------------------------------- matmul
MATMUL_SHAPES = [
    ((4,), (4, 3)),
    ((2, 4), (4,)),
    ((2, 4), (4, 3)),
    ((5, 2, 4), (5, 4, 3)),        # batched
    ((5, 2, 4), (4, 3)),           # batch on the left only
    ((2, 4), (5, 4, 3)),           # batch on the right only
    ((2, 1, 2, 4), (3, 4, 2)),     # broadcast batch dims
    ((4,), (2, 4, 3)),             # 1-D left, batched right
    ((2, 3, 4), (4,)),             # batched left, 1-D right
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul(sa, sb):
    a, b = leaf(sa, 10), leaf(sb, 11)
    out = a @ b
    np.testing.assert_allclose(out.data, np.matmul(a.data, b.data), rtol=1e-12)
    check_grads(lambda a, b: a @ b, a, b)


def test_matmul_grads_against_closed_form():
    a, b = leaf((3, 4), 12), leaf((4, 2), 13)
    g = np.random.default_rng(0).standard_normal((3, 2))
    (a @ b).backward(g)
    np.testing.assert_allclose(a.grad, g @ b.data.T)
    np.testing.assert_allclose(b.grad, a.data.T @ g)


def test_matmul_vector_dot_vector():
    a, b = leaf((4,), 14), leaf((4,), 15)
    out = a @ b
    np.testing.assert_allclose(out.data, a.data @ b.data)
    check_grads(lambda a, b: a @ b, a, b)


@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 5)), ((3,), (4,)), ((2, 3), (4,)), ((3,), (4, 2))])
def test_matmul_shape_mismatch_names_the_shapes(sa, sb):
    with pytest.raises(ValueError, match=r"matmul") as err:
        Tensor(np.ones(sa)) @ Tensor(np.ones(sb))
    assert str(sa) in str(err.value) and str(sb) in str(err.value)


def test_matmul_rejects_scalars():
    with pytest.raises(ValueError, match="matmul"):
        Tensor(2.0) @ Tensor(np.ones(3))


# ----------------------------------------------------------- reductions
@st.composite
def shape_and_axis(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "neg", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(0, nd - 1))
    elif kind == "neg":
        axis = draw(st.integers(-nd, -1))
    else:
        axes = draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
        axis = tuple(a - nd if draw(st.booleans()) else a for a in axes)  # mix in negative axes
    return shape, axis, draw(st.booleans())


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@PROPERTY
@given(case=shape_and_axis(), seed=seeds)
def test_reductions(name, case, seed):
    shape, axis, keepdims = case
    x = distinct(shape, seed)
    out = getattr(x, name)(axis=axis, keepdims=keepdims)
    expected = getattr(np, name)(x.data, axis=axis, keepdims=keepdims)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)
    check_grads(lambda x: getattr(x, name)(axis=axis, keepdims=keepdims), x)


def test_sum_and_mean_grads_closed_form():
    x = leaf((2, 3, 4), 16)
    x.sum(axis=(0, 2)).backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad, np.broadcast_to(np.array([1.0, 2.0, 3.0])[None, :, None], (2, 3, 4)))
    x.grad = None
    x.mean(axis=-1, keepdims=True).sum().backward()
    np.testing.assert_allclose(x.grad, np.full((2, 3, 4), 0.25))


def test_max_gradient_goes_to_the_maximum_and_ties_share():
    x = Tensor(np.array([[1.0, 5.0, 2.0], [4.0, 4.0, 0.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 1, 0], [0.5, 0.5, 0]])


# ----------------------------------------------------- shape manipulation
def test_reshape_forms():
    x = leaf((2, 3, 4), 17)
    for args in [((6, 4),), (6, 4), ((-1,),), (4, -1), ((2, 12),)]:
        out = x.reshape(*args)
        shape = args[0] if len(args) == 1 else args
        np.testing.assert_array_equal(out.data, x.data.reshape(shape))
        check_grads(lambda x: x.reshape(*args), x)


def test_transpose_and_T():
    x = leaf((2, 3, 4), 18)
    np.testing.assert_array_equal(x.T.data, x.data.T)
    check_grads(lambda x: x.T, x)
    for axes in [(1, 0, 2), (2, 0, 1), (0, 2, 1)]:
        np.testing.assert_array_equal(x.transpose(axes).data, x.data.transpose(axes))
        np.testing.assert_array_equal(x.transpose(*axes).data, x.data.transpose(axes))
        check_grads(lambda x: x.transpose(*axes), x)
    m = leaf((3, 5), 19)
    np.testing.assert_array_equal(m.T.data, m.data.T)
    check_grads(lambda m: m.T * np.arange(3.0), m)


def test_transpose_negative_axes():
    x = leaf((2, 3, 4), 20)
    np.testing.assert_array_equal(x.transpose(-1, 0, 1).data, x.data.transpose(-1, 0, 1))
    check_grads(lambda x: x.transpose(-1, 0, 1), x)


def test_transpose_out_of_range_axis_raises():
    x = leaf((2, 3, 4), 20)
    with pytest.raises((ValueError, IndexError)):
        x.transpose(5, 0, 1)


# --------------------------------------------------------------- indexing
INDEXES = {
    "slices": (slice(1, None), slice(None, None, 2)),
    "int": 1,
    "negative_int": (-1, 2),
    "ellipsis": (Ellipsis, 1),
    "int_array_repeats": np.array([0, 2, 0, 0]),
    "list_repeats": [2, 2, 1],
    "two_int_arrays": (np.array([0, 1, 1]), np.array([3, 0, 3])),
    "array_and_slice": (np.array([2, 0, 2]), slice(1, 3)),
    "boolean_mask": np.array([True, False, True]),
    "newaxis": (None, slice(None), 0),
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_indexing(name):
    index = INDEXES[name]
    x = leaf((3, 4), 21)
    np.testing.assert_array_equal(x[index].data, x.data[index])
    check_grads(lambda x: x[index], x)


def test_indexing_with_repeats_counts_each_use():
    x = leaf((5,), 22)
    idx = np.array([0, 3, 3, 3, 1, 0])
    x[idx].sum().backward()
    np.testing.assert_array_equal(x.grad, np.bincount(idx, minlength=5))


def test_boolean_mask_from_data_and_tensor_index():
    x = leaf((4, 3), 23)
    mask = x.data > 0
    np.testing.assert_array_equal(x[mask].data, x.data[mask])
    check_grads(lambda x: x[mask], x)
    x.grad = None
    x[mask].sum().backward()
    np.testing.assert_array_equal(x.grad, mask.astype(float))
    idx = Tensor(np.array([2.0, 0.0]))
    np.testing.assert_array_equal(x[idx].data, x.data[[2, 0]])


# ---------------------------------------------------------- elementwise
UNARY = {
    # name: (method call, NumPy reference, input kind)
    "exp": (lambda x: x.exp(), np.exp, "any"),
    "log": (lambda x: x.log(), np.log, "positive"),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, "positive"),
    "abs": (lambda x: x.abs(), np.abs, "nonzero"),
    "clip": (lambda x: x.clip(-0.3, 0.4), lambda a: np.clip(a, -0.3, 0.4), "clip"),
    "clip_low": (lambda x: x.clip(-0.3), lambda a: np.maximum(a, -0.3), "clip"),
    "clip_high": (lambda x: x.clip(None, 0.4), lambda a: np.minimum(a, 0.4), "clip"),
    "relu": (lambda x: x.relu(), lambda a: np.where(a > 0, a, 0.0), "nonzero"),
    "sigmoid": (lambda x: x.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), "any"),
    "tanh": (lambda x: x.tanh(), np.tanh, "any"),
}


def _unary_input(kind, shape, seed):
    rng = np.random.default_rng(seed)
    if kind == "positive":
        data = rng.uniform(0.2, 3.0, shape)
    elif kind == "nonzero":
        data = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.05, 2.0, shape)
    elif kind == "clip":  # keep every value >= 0.01 away from the clip boundaries
        data = rng.choice([-1.0, -0.1, 0.1, 1.0], shape) + rng.uniform(-0.05, 0.05, shape)
    else:
        data = rng.standard_normal(shape) * 2
    return Tensor(np.asarray(data, dtype=np.float64), requires_grad=True)


@pytest.mark.parametrize("name", sorted(UNARY))
@PROPERTY
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), seed=seeds)
def test_unary(name, shape, seed):
    op, ref, kind = UNARY[name]
    x = _unary_input(kind, shape, seed)
    np.testing.assert_allclose(op(x).data, ref(x.data), rtol=1e-12, atol=1e-15)
    check_grads(op, x)


def test_unary_grads_closed_form():
    x = Tensor(np.array([-2.0, -0.5, 0.5, 2.0]), requires_grad=True)
    for op, d in [
        (lambda x: x.exp(), np.exp(x.data)),
        (lambda x: x.tanh(), 1 - np.tanh(x.data) ** 2),
        (lambda x: x.sigmoid(), np.exp(-x.data) / (1 + np.exp(-x.data)) ** 2),
        (lambda x: x.relu(), np.array([0.0, 0.0, 1.0, 1.0])),
        (lambda x: x.abs(), np.array([-1.0, -1.0, 1.0, 1.0])),
        (lambda x: x.clip(-1.0, 1.0), np.array([0.0, 1.0, 1.0, 0.0])),
    ]:
        x.grad = None
        op(x).sum().backward()
        np.testing.assert_allclose(x.grad, d, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_large_inputs_do_not_overflow(dtype):
    x = Tensor(np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        s = x.sigmoid()
        s.sum().backward()
        t = x.tanh()
    assert s.dtype == dtype
    assert np.all(np.isfinite(s.data)) and np.all(np.isfinite(x.grad)) and np.all(np.isfinite(t.data))
    np.testing.assert_allclose(s.data[[0, 1, 3, 5, 6]], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert 0 < s.data[2] < 1e-20 if dtype == np.float64 else s.data[2] < 1e-20
    np.testing.assert_allclose(x.grad[[0, 1, 5, 6]], 0.0)
    assert x.grad[3] == pytest.approx(0.25)


# ---------------------------------------------------------------- dtypes
def test_dtype_rule():
    assert Tensor(np.zeros(3, dtype=np.float64)).dtype == np.float64
    assert Tensor(np.zeros(3, dtype=np.float32)).dtype == np.float32
    assert Tensor(1.5).dtype == np.float32
    assert Tensor(3).dtype == np.float32
    assert Tensor([1, 2, 3]).dtype == np.float32
    assert Tensor([[1.5, 2.5]]).dtype == np.float32
    assert Tensor(np.arange(4)).dtype == np.float32
    assert Tensor(np.array([True, False])).dtype == np.float32
    x32 = Tensor(np.ones(3, dtype=np.float32))
    assert (x32 * 2.5).dtype == np.float32
    assert (2.5 * x32).dtype == np.float32
    assert (x32 + 1).dtype == np.float32
    assert (x32 / 3.0).dtype == np.float32
    assert (1.0 - x32).dtype == np.float32
    assert (x32 ** 2).dtype == np.float32
    assert x32.sigmoid().dtype == np.float32 and x32.tanh().dtype == np.float32
    assert x32.mean().dtype == np.float32
    x64 = Tensor(np.ones(3))
    assert (x64 * 2.5).dtype == np.float64 and x64.exp().dtype == np.float64


def test_grad_dtype_and_shape_follow_the_leaf():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    b = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    ((x * b).sum(axis=0) * 2.0).sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.shape == (2, 3)
    assert b.grad.dtype == np.float32 and b.grad.shape == (3,)
    np.testing.assert_array_equal(b.grad, [4.0, 4.0, 4.0])


def test_basic_accessors():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.shape == (2, 3) and x.ndim == 2 and x.size == 6 and len(x) == 2
    assert x.numpy() is x.data
    assert Tensor([[4.0]]).item() == 4.0 and isinstance(Tensor([[4.0]]).item(), float)
    d = x.detach()
    assert not d.requires_grad and d.data is x.data
    assert not (d * 2).requires_grad


# ------------------------------------------------------------- autograd
def test_gradients_accumulate_across_backward_calls():
    x = leaf((3,), 30)
    w = Tensor(np.array([1.0, 2.0, 3.0]))
    (x * w).sum().backward()
    (x * w).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * w.data)
    y = x * 3.0
    y.sum().backward()  # a third graph sharing the leaf
    np.testing.assert_allclose(x.grad, 2 * w.data + 3.0)


def test_backward_twice_on_the_same_graph_needs_retain_graph():
    # PyTorch's rule: the first backward() frees the graph unless retain_graph=True.
    x = leaf((3,), 31)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)  # the refused call added nothing


def test_backward_frees_the_graph_without_the_cycle_collector():
    # Each closure refers to its own output, so before backward() freed the graph every node sat in a
    # reference cycle and its arrays waited for gc (several GB for a CNN at batch 128).
    import gc
    import weakref
    x = leaf((4, 3), 32)
    w = leaf((3, 2), 33)
    gc.disable()
    try:
        hidden = (x @ w).relu()
        probe = weakref.ref(hidden)
        (hidden * hidden).sum().backward()
        del hidden
        assert probe() is None, "an interior node outlived its graph: a reference cycle is left"
        kept = (x @ w).relu()
        probe = weakref.ref(kept)
        (kept * kept).sum().backward(retain_graph=True)
        del kept
        assert probe() is not None  # retain_graph keeps the closures (and so the cycle) until gc
    finally:
        gc.enable()
        gc.collect()


def test_deep_chain_does_not_hit_recursion_limit():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y = y * x
    y.sum().backward()
    np.testing.assert_allclose(y.data, (x.data + 5000) * x.data)
    np.testing.assert_allclose(x.grad, 2 * x.data + 5000)


def test_no_grad_builds_no_graph():
    x = leaf((3,), 32)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2 + 1).exp().sum()
        with enable_grad():
            assert is_grad_enabled()
            z = x * 2
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert not y.requires_grad and y._parents == ()
    assert z.requires_grad
    with pytest.raises(RuntimeError):
        y.backward()
    np.testing.assert_allclose(y.data, np.exp(x.data * 2 + 1).sum())


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()


def test_ops_on_constants_build_no_graph():
    a, b = Tensor([1.0, 2.0]), Tensor([3.0, 4.0])
    c = (a * b + 1).sum()
    assert not c.requires_grad and c._parents == ()


def test_backward_errors():
    x = leaf((2, 3), 33)
    with pytest.raises(ValueError, match="grad"):
        (x * 2).backward()
    with pytest.raises(RuntimeError):
        Tensor([1.0]).backward()


def test_backward_with_explicit_gradient():
    x = leaf((2, 3), 34)
    g = np.arange(6.0).reshape(2, 3)
    (x * 3.0).backward(g)
    np.testing.assert_allclose(x.grad, 3 * g)


def test_leaf_used_twice_gets_summed_gradient():
    x = leaf((4,), 35)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)
    check_grads(lambda x: x * x.exp() + x.sigmoid() * x, x)


def test_interior_node_used_twice_in_order_that_works():
    x = leaf((3,), 36)
    a = x * 2.0
    b = a * 3.0
    (b + a).sum().backward()  # 2 + 6 = 8
    np.testing.assert_allclose(x.grad, 8.0)


def test_interior_node_used_twice_topological_order():
    x = leaf((3,), 37)
    a = x * 2.0
    b = a * 3.0
    (a + b).sum().backward()
    np.testing.assert_allclose(x.grad, 8.0)  # bug gives 2.0


def test_gradcheck_shared_interior_node_composite():
    x = leaf((3, 4), 38)
    check_grads(lambda x: (lambda h: h * (h - h.max(axis=1, keepdims=True)))(x.tanh()), x)


@PROPERTY
@given(plan=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 4)),
                     min_size=1, max_size=25), n_out=st.integers(1, 4))
def test_random_dags_with_shared_nodes(plan, n_out):
    """Random expression graphs where nodes feed several later nodes: backward order must be topological."""
    def build(x, y):
        nodes = [x, y]
        for i, j, op in plan:
            a, b = nodes[i % len(nodes)], nodes[j % len(nodes)]
            nodes.append([lambda: a + b, lambda: a * b.tanh(), lambda: a - b.sigmoid(),
                          lambda: (a * 0.5).tanh() * b, lambda: a.sum(axis=0, keepdims=True) * b][op]())
        out = nodes[-1] + x * y  # both leaves always take part
        for extra in nodes[-n_out:-1]:
            out = out + extra
        return out

    x, y = leaf((2, 3), 46), leaf((2, 3), 47)
    check_grads(build, x, y)


# --------------------------------------------------------- the checker
def test_gradcheck_accepts_correct_and_rejects_float32():
    x = leaf((3,), 40)
    assert gradcheck(lambda x: (x * x).sum(), [x]) is True
    with pytest.raises(TypeError):
        gradcheck(lambda x: x * 2, [Tensor(np.ones(3, dtype=np.float32), requires_grad=True)])


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    def broken_exp(self):  # forward right, backward off by a factor of 2
        out = self._make(np.exp(self.data), (self,), "exp")
        if out.requires_grad:
            def _backward():
                self._accumulate(2 * out.grad * out.data)
            out._backward = _backward
        return out

    x = leaf((2, 2), 41)
    assert gradcheck(lambda x: x.exp(), [x])
    monkeypatch.setattr(tensor_module.Tensor, "exp", broken_exp)
    with pytest.raises(AssertionError, match="gradcheck failed"):
        gradcheck(lambda x: x.exp(), [x])


def test_gradcheck_catches_a_missing_gradient(monkeypatch):
    def no_backward_tanh(self):
        return self._make(np.tanh(self.data), (self,), "tanh")  # never sets _backward

    x = leaf((3,), 42)
    monkeypatch.setattr(tensor_module.Tensor, "tanh", no_backward_tanh)
    with pytest.raises(AssertionError):
        gradcheck(lambda x: x.tanh() + 0.0 * x, [x])


def test_gradcheck_on_non_contiguous_input():
    w = Tensor(np.random.default_rng(43).standard_normal((4, 3)).T, requires_grad=True)
    assert not w.data.flags.c_contiguous
    assert gradcheck(lambda w: w * 2.0, [w])


def test_leaf_gradients_are_writable_arrays_of_their_own():
    a, b = leaf((3,), 44), leaf((3,), 45)
    (a + b).sum().backward()
    assert a.grad is not b.grad
    a.grad *= 0.0
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_leaf_grad_keeps_its_dtype_when_contributions_mix_dtypes():
    """A float32 parameter's gradient stays float32 even if a float64 path also feeds it."""
    w = Tensor(np.ones(3, np.float32), requires_grad=True)
    (w * 2.0 + w * Tensor(np.full(3, 3.0))).sum().backward()  # second term computes in float64
    assert w.grad.dtype == np.float32
    np.testing.assert_allclose(w.grad, [5.0, 5.0, 5.0])


def test_backward_refuses_a_gradient_of_the_wrong_shape():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2
    with pytest.raises(ValueError, match="grad must have the tensor's shape"):
        y.backward(np.ones((3, 2)))
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, np.full((2, 3), 2.0))
