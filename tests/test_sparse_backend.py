"""prunekit.sparse on both backends: the NumPy references run without numba, and the kernels agree with them.

Under ``pk.backend("numpy")`` every public sparse/int8 op runs its NumPy reference and numba is never
imported (checked in a fresh process). Under ``"numba"`` the kernels give the same numbers: int8 bit for
bit (integer sums, then the same float32 steps), float to round-off (the kernels choose their own
summation order).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit as pk
from prunekit import Tensor, nn, no_grad
from prunekit.sparse import BSR, CSR, NM, Int8Weight, kernels, to_sparse
from prunekit.sparse.modules import FusedChain
from backendhelpers import on_both

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*parallel=True' was specified but no transformation")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sparse_matrix(rng, shape, density, dtype=np.float32):
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(dtype)


def nm_matrix(rng, rows, groups, n, m, dtype=np.float32):
    w = rng.standard_normal((rows, groups, m)).astype(dtype)
    np.put_along_axis(w, np.argsort(rng.random(w.shape), axis=2)[:, :, n:], 0, axis=2)
    return w.reshape(rows, groups * m)


CONV_PROBE = """
def conv_has_numpy_path():
    # True once functional.py's conv/pool/im2col run their NumPy references under the numpy backend
    # (the backend helper's part of issue 9); SparseConv2d uses F.im2col, the dense layers the rest
    from prunekit import functional as F
    with pk.backend("numpy"):
        try:
            x = Tensor(np.zeros((1, 1, 4, 4), np.float32))
            F.im2col(x.data, 2)
            F.max_pool2d(x, 2)
            F.conv2d(x, Tensor(np.zeros((1, 1, 2, 2), np.float32)))
        except RuntimeError as e:
            if "numpy" not in str(e):
                raise
            return False
    return True
"""
exec(CONV_PROBE)
needs_numpy_conv = pytest.mark.skipif(not conv_has_numpy_path(), reason=(
    "F.conv2d/max_pool2d/im2col have no NumPy path on this branch yet (the backend helper's part of issue 9)"))


def test_numpy_backend_runs_every_sparse_op_without_importing_numba():
    code = "import numpy as np\nimport prunekit as pk\nfrom prunekit import Tensor, nn, no_grad, sparse\n" \
        "from prunekit.sparse import kernels\n" + CONV_PROBE + textwrap.dedent("""
        import sys, warnings
        import numpy as np
        assert pk.get_backend() == "numpy"
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((32, 64)) * (rng.random((32, 64)) < 0.3)).astype(np.float32)
        w24 = w.copy(); w24.reshape(32, 16, 4)[:, :, 2:] = 0
        b = rng.standard_normal(32).astype(np.float32)
        x1, xb = rng.standard_normal(64).astype(np.float32), rng.standard_normal((5, 64)).astype(np.float32)
        for f in (sparse.CSR.from_dense(w), sparse.BSR.from_dense(w, 16), sparse.NM.from_dense(w24, 2, 4),
                  sparse.Int8Weight.from_dense(w)):
            ref = w24 if isinstance(f, sparse.NM) else w
            for x in (x1, xb):
                y = kernels.linear(f, x, bias=b)
                want = x @ ref.T + b
                tol = 0.03 * np.abs(want).max() if isinstance(f, sparse.Int8Weight) else 1e-4
                assert np.allclose(y, want, atol=tol), (type(f), np.abs(y - want).max())
        c = sparse.CSR.from_dense(w)
        kernels.csr_spmv(c, x1, simd=True); kernels.csr_spmm(c, xb); kernels.nm_spmm(sparse.NM.from_dense(w24), xb, simd=True)
        q = sparse.Int8Weight.from_dense(w)
        for k in (None, "vnni", "avx2", "portable"):
            kernels.int8_linear(q, x1, kernel=k)
        acc = kernels.int8_matmul_int32(np.ones((2, 64), np.int8), q, kernel="portable")
        assert (acc == q.q.sum(axis=1, dtype=np.int32)).all()
        qx, s = kernels.quantize_rows(xb, offset=128, width=68)
        assert qx.dtype == np.uint8 and (qx[:, 64:] == 128).all()
        assert kernels.int8_kernels() == ("portable",) and not kernels.has_vnni()
        chain = sparse.FusedChain([(c, b, True), (w[:, :16].T.copy(), None, False)])
        assert np.allclose(chain.run(xb), np.maximum(xb @ w.T + b, 0) @ w[:, :16], atol=1e-4)
        models = [(pk.models.lenet_300_100(seed=0), rng.standard_normal((3, 784)).astype(np.float32))]
        if conv_has_numpy_path():
            models.append((pk.models.lenet5(seed=0), rng.standard_normal((2, 1, 28, 28)).astype(np.float32)))
        for model, x in models:
            for p in model.parameters():
                if p.data.ndim > 1:
                    p.data[np.abs(p.data) < np.quantile(np.abs(p.data), 0.9)] = 0
            with no_grad():
                dense = model(Tensor(x)).data
                for fmt in ("auto", "csr", "bsr", "int8"):
                    fast = sparse.to_sparse(model, format=fmt, block_size=(2, 1), fuse=fmt != "bsr")
                    tol = 0.05 * np.abs(dense).max() if fmt == "int8" else 1e-4
                    assert np.allclose(fast(x).data, dense, atol=tol), fmt
                    assert np.allclose(fast(Tensor(x[:1])).data, dense[:1], atol=tol), fmt
        sl = sparse.SparseLinear(w, b)
        assert np.allclose(sl(x1).data, w @ x1 + b, atol=1e-4)
        assert sparse.warmup() == 0  # nothing to compile under the numpy backend
        assert "numba" not in sys.modules, [m for m in sys.modules if "numba" in m][:5]
        print("ok")
    """)
    env = {**os.environ, "PRUNEKIT_BACKEND": "numpy", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


# ----------------------------------------------------------------------------- parity, random shapes


@pytest.mark.numba
@settings(max_examples=15)
@given(rows=st.integers(1, 48), groups=st.integers(1, 20), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       fmt=st.sampled_from(["csr", "bsr", "nm"]), batch=st.sampled_from([None, 1, 3, 33]),
       dtype=st.sampled_from([np.float32, np.float64]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_float_formats_agree_between_backends(rows, groups, density, fmt, batch, dtype, bias, seed):
    rng = np.random.default_rng(seed)
    if fmt == "nm":
        w = nm_matrix(rng, rows, groups, 2, 4, dtype)
        f = NM.from_dense(w, 2, 4)
    elif fmt == "bsr":
        w = sparse_matrix(rng, (rows * 2, groups * 4), density, dtype)
        f = BSR.from_dense(w, (2, 4))
    else:
        w = sparse_matrix(rng, (rows, groups * 4), density, dtype)
        f = CSR.from_dense(w)
    n_in = w.shape[1]
    x = rng.standard_normal(n_in if batch is None else (batch, n_in)).astype(dtype)
    b = rng.standard_normal(w.shape[0]).astype(dtype) if bias else None
    y_numba, y_numpy = on_both(lambda: kernels.linear(f, x, bias=b))
    assert y_numba.shape == y_numpy.shape == x.shape[:-1] + (w.shape[0],)
    assert y_numba.dtype == y_numpy.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y_numba, y_numpy, **tol)
    np.testing.assert_allclose(y_numpy, x @ w.T + (0 if b is None else b), **tol)


@pytest.mark.numba
@settings(max_examples=15)
@given(rows=st.integers(1, 70), cols=st.integers(1, 150), batch=st.sampled_from([None, 1, 2, 5]),
       scale=st.sampled_from([0.0, 1e-3, 1.0, 300.0]), bias=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_int8_is_bit_exact_between_backends(rows, cols, batch, scale, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    q = Int8Weight.from_dense(rng.standard_normal((rows, cols)).astype(dtype))
    x = (scale * rng.standard_normal(cols if batch is None else (batch, cols))).astype(np.float32)
    b = rng.standard_normal(rows).astype(dtype) if bias else None
    with pk.backend("numba"):
        flavours = kernels.int8_kernels()
    with pk.backend("numpy"):
        y_numpy = kernels.int8_linear(q, x, bias=b)
        q_numpy, s_numpy = kernels.quantize_rows(np.atleast_2d(x), offset=128, width=cols + 3)
        xq = np.clip(rng.integers(-127, 128, (3, cols)), -127, 127).astype(np.int8)
        acc_numpy = kernels.int8_matmul_int32(xq, q)
    with pk.backend("numba"):
        for k in flavours:  # every int8 kernel this CPU has (SIMD and portable)
            np.testing.assert_array_equal(kernels.int8_linear(q, x, bias=b, kernel=k), y_numpy, err_msg=k)
            np.testing.assert_array_equal(kernels.int8_matmul_int32(xq, q, kernel=k), acc_numpy, err_msg=k)
        q_numba, s_numba = kernels.quantize_rows(np.atleast_2d(x), offset=128, width=cols + 3)
    np.testing.assert_array_equal(q_numba, q_numpy)
    np.testing.assert_array_equal(s_numba, s_numpy)


@pytest.mark.numba
@settings(max_examples=10)
@given(sizes=st.lists(st.integers(1, 40), min_size=2, max_size=4), density=st.sampled_from([0.0, 0.2, 1.0]),
       batch=st.integers(1, 4), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_fused_chain_agrees_between_backends(sizes, density, batch, dtype, seed):
    """The chain's NumPy reference decodes the same named record fields the kernels read."""
    rng = np.random.default_rng(seed)
    layers, ws = [], []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = sparse_matrix(rng, (n_out, n_in), density, dtype)
        b = rng.standard_normal(n_out).astype(dtype) if i % 2 == 0 else None
        layers.append((CSR.from_dense(w) if i % 2 == 0 else w, b, i < len(sizes) - 2))
        ws.append((w, b))
    chain = FusedChain(layers, dtype=dtype)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y_numba, y_numpy = on_both(lambda: chain.run(x))
    want = x
    for i, (w, b) in enumerate(ws):
        want = want @ w.T + (0 if b is None else b)
        if i < len(ws) - 1:
            want = np.maximum(want, 0)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y_numpy, want, **tol)
    np.testing.assert_allclose(y_numba, y_numpy, **tol)


# ----------------------------------------------------------------------------- a whole model


@pytest.fixture(scope="module")
def lenet5_90():
    model = pk.models.lenet5(seed=1)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight.data
            w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
    model.eval()
    return model


@needs_numpy_conv
@pytest.mark.numba
@pytest.mark.parametrize("fmt", ["auto", "csr", "int8"])
@pytest.mark.parametrize("batch", [1, 6])
def test_pruned_lenet5_through_to_sparse_agrees_between_backends(lenet5_90, fmt, batch):
    """Converted once (under numba), run on both backends: a learner may switch at any time, and the fused
    shortcut in SparseSequential.__call__ must then fall back to the reference."""
    with pk.backend("numba"):
        fast = to_sparse(lenet5_90, format=fmt)
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    with no_grad():
        y_numba, y_numpy = on_both(lambda: fast(Tensor(x)).data)
        with pk.backend("numpy"):
            dense = lenet5_90(Tensor(x)).data
    if fmt == "int8":
        # the int8 layers agree bit for bit; only the float32 layers in between (pooling, im2col) separate them
        np.testing.assert_allclose(y_numba, y_numpy, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y_numpy, dense, atol=0.05 * np.abs(dense).max())
    else:
        np.testing.assert_allclose(y_numba, y_numpy, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(y_numpy, dense, rtol=1e-4, atol=1e-5)


@pytest.mark.numba
def test_int8_short_path_and_workspace_fall_back_after_a_switch():
    """The prepared batch-1 int8 call is a numba object: after switching to numpy the reference runs instead."""
    rng = np.random.default_rng(2)
    q = Int8Weight.from_dense(rng.standard_normal((40, 70)).astype(np.float32))
    x = rng.standard_normal(70).astype(np.float32)
    with pk.backend("numba"):
        y = kernels.int8_linear(q, x)
        y = kernels.int8_linear(q, x)  # the short path, once prepared
    with pk.backend("numpy"):
        np.testing.assert_array_equal(kernels.int8_linear(q, x), y)
        np.testing.assert_array_equal(kernels.int8_linear_reference(q, x), y)
