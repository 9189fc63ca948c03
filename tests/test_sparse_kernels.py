"""Every numba kernel of prunekit.sparse against its NumPy reference (and the references against dense NumPy)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import _jit
from prunekit.sparse import BSR, CSR, NM, Int8Weight, kernels
from prunekit.sparse.modules import FusedChain

# Our row kernels are compiled with parallel=True on purpose (see prunekit/sparse/kernels.py);
# pytest resets the warning filters that module installs, so repeat it here.
# Every test here holds a numba kernel itself against its reference: run them on the numba backend.
pytestmark = [pytest.mark.filterwarnings("ignore:(?s).*parallel=True' was specified but no transformation"),
              pytest.mark.numba]

shapes = st.tuples(st.integers(1, 40), st.integers(1, 70))
densities = st.sampled_from([0.0, 0.05, 0.3, 1.0])
dtypes = st.sampled_from([np.float32, np.float64])
batches = st.sampled_from([None, 1, 3, 17])  # None: a 1-D x


def sparse_matrix(rng, shape, density, dtype):
    w = rng.standard_normal(shape).astype(dtype)
    return w * (rng.random(shape) < density)


def make_x(rng, batch, n, dtype, contiguous):
    """x of shape (n,) or (batch, n); a strided view of a bigger array when not contiguous."""
    rows = 1 if batch is None else batch
    big = rng.standard_normal((rows * 2, n * 2)).astype(dtype)
    x = big[:rows, :n].copy() if contiguous else big[::2, ::2]
    assert x.flags.c_contiguous == contiguous or x.size <= 1
    return x[0] if batch is None else x


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def test_references_agree_with_dense_numpy():
    rng = np.random.default_rng(0)
    w = sparse_matrix(rng, (8, 12), 0.4, np.float64)
    x = rng.standard_normal((3, 12))
    b = rng.standard_normal(8)
    c = CSR.from_dense(w)
    np.testing.assert_allclose(kernels.csr_spmv_reference(c.data, c.indices, c.indptr, c.shape, x[0], b), w @ x[0] + b)
    np.testing.assert_allclose(kernels.csr_spmm_reference(c.data, c.indices, c.indptr, c.shape, x, b), x @ w.T + b)
    f = BSR.from_dense(w, (4, 4))
    np.testing.assert_allclose(kernels.bsr_spmm_reference(f.blocks, f.indices, f.indptr, f.shape, x), x @ w.T)
    w_nm = w.copy()
    w_nm.reshape(8, 3, 4)[:, :, 2:] = 0
    g = NM.from_dense(w_nm, 2, 4)
    np.testing.assert_allclose(kernels.nm_spmm_reference(g.values, g.positions, g.shape, 2, 4, x), x @ w_nm.T)


@settings(max_examples=40)
@given(shape=shapes, density=densities, dtype=dtypes, batch=batches, contiguous=st.booleans(), bias=st.booleans(),
       simd=st.booleans(), seed=st.integers(0, 2**16))
def test_csr_kernels_match_reference(shape, density, dtype, batch, contiguous, bias, simd, seed):
    rng = np.random.default_rng(seed)
    w = sparse_matrix(rng, shape, density, dtype)
    c = CSR.from_dense(w)
    x = make_x(rng, batch, shape[1], dtype, contiguous)
    b = rng.standard_normal(shape[0]).astype(dtype) if bias else None
    use_simd = simd and dtype == np.float32
    fn = kernels.csr_spmv if x.ndim == 1 else kernels.csr_spmm
    y = fn(c, x, bias=b, simd=use_simd)
    ref = (kernels.csr_spmv_reference if x.ndim == 1 else kernels.csr_spmm_reference)(
        c.data, c.indices, c.indptr, c.shape, x, b)
    assert y.dtype == dtype and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, **tol(dtype))


@settings(max_examples=30)
@given(block=st.sampled_from([(4, 4), (8, 8), (16, 16), (4, 8), (2, 1)]), nb=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       density=densities, dtype=dtypes, batch=batches, contiguous=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_bsr_kernels_match_reference(block, nb, density, dtype, batch, contiguous, bias, seed):
    rng = np.random.default_rng(seed)
    r, c = block
    tiles = rng.random(nb) < density
    w = rng.standard_normal((nb[0] * r, nb[1] * c)).astype(dtype) * np.kron(tiles, np.ones(block, bool))
    f = BSR.from_dense(w, block)
    x = make_x(rng, batch, w.shape[1], dtype, contiguous)
    b = rng.standard_normal(w.shape[0]).astype(dtype) if bias else None
    y = kernels.bsr_spmm(f, x, bias=b)
    ref = kernels.bsr_spmm_reference(f.blocks, f.indices, f.indptr, f.shape, x, b)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref, **tol(dtype))


def nm_matrix(rng, rows, groups, n, m, dtype):
    w = rng.standard_normal((rows, groups, m)).astype(dtype)
    drop = np.argsort(rng.random(w.shape), axis=2)[:, :, n:]
    np.put_along_axis(w, drop, 0, axis=2)
    return w.reshape(rows, groups * m)


@settings(max_examples=40)
@given(nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 4), (2, 2)]), rows=st.integers(1, 20), groups=st.integers(1, 40),
       dtype=dtypes, batch=batches, contiguous=st.booleans(), bias=st.booleans(), simd=st.booleans(),
       seed=st.integers(0, 2**16))
def test_nm_kernels_match_reference(nm, rows, groups, dtype, batch, contiguous, bias, simd, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    w = nm_matrix(rng, rows, groups, n, m, dtype)
    f = NM.from_dense(w, n, m)
    x = make_x(rng, batch, w.shape[1], dtype, contiguous)
    b = rng.standard_normal(rows).astype(dtype) if bias else None
    y = kernels.nm_spmm(f, x, bias=b, simd=simd and dtype == np.float32)
    ref = kernels.nm_spmm_reference(f.values, f.positions, f.shape, n, m, x, b)
    np.testing.assert_allclose(y, ref, **tol(dtype))


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
@pytest.mark.parametrize("batch", [None, 20])
def test_parallel_and_single_thread_paths_agree(fmt, batch, monkeypatch):
    """Large products run on all threads, small ones on one: both must give the reference's answer."""
    rng = np.random.default_rng(1)
    w = nm_matrix(rng, 256, 256, 2, 4, np.float32) if fmt == "nm" else sparse_matrix(rng, (256, 1024), 0.5, np.float32)
    make = {"csr": CSR.from_dense, "bsr": lambda a: BSR.from_dense(a, 16), "nm": lambda a: NM.from_dense(a, 2, 4)}[fmt]
    f = make(w)
    x = make_x(rng, batch, 1024, np.float32, True)
    ref = x @ w.T.astype(np.float64)
    assert f.nnz >= _jit.PARALLEL_MIN_WORK  # the default takes the parallel path...
    monkeypatch.setattr(kernels, "_free_cores", lambda: True)  # ...when a core is free (not so on a busy CI box)
    y_par = kernels.linear(f, x)
    monkeypatch.setattr(_jit, "PARALLEL_MIN_WORK", 10**12)  # for_work() now picks every kernel's serial twin
    y_one = kernels.linear(f, x)
    np.testing.assert_allclose(y_par, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y_one, ref, rtol=1e-4, atol=1e-4)


def test_parallel_kernels_give_way_when_no_core_is_free(monkeypatch):
    """_for_work: the parallel kernel above the threshold while a core is free, else its single-thread twin."""
    k = kernels.csr_spmv_kernel
    monkeypatch.setattr(kernels, "_free_cores", lambda: True)
    assert kernels._for_work(k, _jit.PARALLEL_MIN_WORK) is k
    assert kernels._for_work(k, _jit.PARALLEL_MIN_WORK - 1) is k.serial
    monkeypatch.setattr(kernels, "_free_cores", lambda: False)
    assert kernels._for_work(k, 10**9) is k.serial
    assert kernels._for_work(kernels.fused_chain_kernel, 10**9) is kernels.fused_chain_kernel  # not parallel: as is


def test_free_cores_counts_other_processes_running_tasks(monkeypatch):
    watch = kernels._FreeCores(interval=0.0)
    watch.cores = 2
    for others, free in ((0, True), (1, False), (7, False), (None, True)):  # None: /proc says nothing
        monkeypatch.setattr(watch, "_running_elsewhere", lambda o=others: o)
        assert watch() is free, others
    watch.cores = 4
    for others, free in ((2, True), (3, False)):  # one core for the caller, at least one for a worker
        monkeypatch.setattr(watch, "_running_elsewhere", lambda o=others: o)
        assert watch() is free, others
    watch.cores = 1
    assert watch() is False  # one core: never parallel
    cached = kernels._FreeCores(interval=3600.0)
    first = cached()
    monkeypatch.setattr(cached, "_read", lambda: (_ for _ in ()).throw(AssertionError("read again")))
    assert cached() is first  # within the interval the answer is reused


def test_running_elsewhere_leaves_out_our_own_threads(tmp_path):
    """Machine-wide running tasks minus our own running threads, read from a /proc laid out by hand."""
    (tmp_path / "loadavg").write_text("3.10 2.00 1.50 5/312 4242\n")
    for tid, state in ((100, "R"), (101, "R"), (102, "S")):  # the caller and a spinning worker run; one sleeps
        (tmp_path / "self" / "task" / str(tid)).mkdir(parents=True)
        (tmp_path / "self" / "task" / str(tid) / "stat").write_text(f"{tid} (python (x)) {state} 1 2 3 4\n")
    assert kernels._FreeCores._running_elsewhere(str(tmp_path)) == 3
    (tmp_path / "loadavg").write_text("garbage")
    assert kernels._FreeCores._running_elsewhere(str(tmp_path)) is None
    assert kernels._FreeCores._running_elsewhere(str(tmp_path / "missing")) is None
    if os.path.exists("/proc/self/task"):
        real = kernels._FreeCores._running_elsewhere()
        assert isinstance(real, int) and real >= 0


def test_csr_with_int32_indices_and_scalar_kernel_agree_with_simd():
    rng = np.random.default_rng(2)
    w = sparse_matrix(rng, (50, 300), 0.2, np.float32)
    x = rng.standard_normal((5, 300)).astype(np.float32)
    c16, c32 = CSR.from_dense(w), CSR.from_dense(w, index_dtype=np.int32)
    ref = x @ w.T
    for c in (c16, c32):
        for simd in (True, False):
            np.testing.assert_allclose(kernels.csr_spmm(c, x, simd=simd), ref, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(kernels.csr_spmv(c, x[2], simd=simd), ref[2], rtol=1e-5, atol=1e-5)


def test_out_buffer_is_filled_in_place():
    rng = np.random.default_rng(3)
    w = sparse_matrix(rng, (10, 20), 0.3, np.float32)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    out = np.full((4, 10), np.nan, dtype=np.float32)
    for f in (CSR.from_dense(w), BSR.from_dense(w, (2, 4))):
        res = kernels.linear(f, x, out=out)
        assert res is out
        np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- int8


@settings(max_examples=30)
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 70)), batch=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_quantize_rows_kernel_matches_reference_exactly(shape, batch, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, shape[1])) * rng.choice([1e-3, 1, 1e3])).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0
    q, s = kernels.quantize_rows(x)
    q_ref, s_ref = kernels.quantize_rows_reference(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    qu, su = kernels.quantize_rows(x, offset=128, width=shape[1] + 3)
    np.testing.assert_array_equal(qu[:, :shape[1]].astype(np.int16) - 128, q_ref)
    assert np.all(qu[:, shape[1]:] == 128)


def _int8_modes():
    """Every int8 kernel this CPU runs, e.g. ("avx2", "portable"), asked on the numba backend (where these tests
    run) even when PRUNEKIT_BACKEND=numpy, under which int8_kernels() answers ("portable",)."""
    import importlib.util

    import prunekit

    if importlib.util.find_spec("numba") is None:
        return ("portable",)
    with prunekit.backend("numba"):
        return kernels.int8_kernels()


int8_modes = _int8_modes()


@pytest.mark.parametrize("kernel", int8_modes)
@settings(max_examples=25)
@given(shape=st.tuples(st.integers(1, 70), st.integers(1, 90)), batch=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_int8_matmul_is_exact(kernel, shape, batch, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    q = Int8Weight.from_dense(w)
    xq = rng.integers(-127, 128, size=(batch, shape[1])).astype(np.int8)
    acc = kernels.int8_matmul_int32(xq, q, kernel=kernel)
    np.testing.assert_array_equal(acc, kernels.int8_matmul_int32_reference(xq, q.q))


@pytest.mark.parametrize("kernel", int8_modes)
@settings(max_examples=25)
@given(shape=st.tuples(st.integers(1, 70), st.integers(1, 90)), batch=batches, dtype=dtypes, bias=st.booleans(),
       contiguous=st.booleans(), seed=st.integers(0, 2**16))
def test_int8_linear_matches_reference(kernel, shape, batch, dtype, bias, contiguous, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(dtype)
    q = Int8Weight.from_dense(w)
    x = make_x(rng, batch, shape[1], np.float32, contiguous)
    b = rng.standard_normal(shape[0]).astype(dtype) if bias else None
    y = kernels.int8_linear(q, x, bias=b, kernel=kernel)
    ref = kernels.int8_linear_reference(q, x, b)
    assert y.shape == ref.shape and y.dtype == dtype
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # and the quantized product is close to the float one (error ~ scale of x and w)
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    bound = np.abs(x).max() * np.abs(w).max() * shape[1] * 2 / 127 + 1e-6
    assert np.max(np.abs(y - exact)) <= bound


def test_int8_kernels_give_identical_outputs():
    """Every int8 kernel sums exactly in int32, so all of them agree bit for bit (same dequantization)."""
    rng = np.random.default_rng(4)
    q = Int8Weight.from_dense(rng.standard_normal((100, 203)).astype(np.float32))
    assert int8_modes[-1] == "portable"
    for x in (rng.standard_normal(203).astype(np.float32), rng.standard_normal((13, 203)).astype(np.float32)):
        want = kernels.int8_linear(q, x, kernel="portable")
        for kernel in int8_modes:
            np.testing.assert_array_equal(kernels.int8_linear(q, x, kernel=kernel), want)


@pytest.mark.parametrize("kernel", int8_modes)
def test_int8_extreme_values_do_not_saturate(kernel):
    """+-127 everywhere: the worst case for AVX2's vpmaddubsw, whose int16 pair sums saturate at 32767
    (255 * 127 * 2 would; the sign trick keeps them at 2 * 127 * 127)."""
    rng = np.random.default_rng(6)
    for n_out, n_in in ((64, 256), (17, 37)):
        wq = (127 * rng.choice([-1, 1], size=(n_out, n_in))).astype(np.int8)
        wq[0] = 127
        wq[1] = -127
        q = Int8Weight(wq, np.ones(n_out, np.float32))
        xq = (127 * rng.choice([-1, 1], size=(5, n_in))).astype(np.int8)
        xq[0] = 127
        xq[1] = -127
        xq[2, ::2] = 0
        acc = kernels.int8_matmul_int32(xq, q, kernel=kernel)
        np.testing.assert_array_equal(acc, kernels.int8_matmul_int32_reference(xq, wq))
        assert acc[0, 0] == 127 * 127 * n_in and acc[1, 0] == -127 * 127 * n_in
        x = xq.astype(np.float32)  # quantizes to itself (scale 1)
        np.testing.assert_array_equal(kernels.int8_linear(q, x, kernel=kernel), acc.astype(np.float32))
        np.testing.assert_array_equal(kernels.int8_linear(q, x[0], kernel=kernel), acc[0].astype(np.float32))


@pytest.mark.parametrize("env, drops", [("PRUNEKIT_NO_VNNI", {"vnni"}), ("PRUNEKIT_NO_INT8_SIMD", {"vnni", "avx2"})])
def test_int8_simd_kernels_can_be_switched_off(env, drops):
    code = ("from prunekit.sparse import kernels, Int8Weight; import numpy as np; print(kernels.int8_kernels()); "
            "q = Int8Weight.from_dense(np.eye(5, dtype=np.float32)); "
            "print(kernels.int8_linear(q, np.arange(5, dtype=np.float32)).tolist())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, env: "1", "PRUNEKIT_BACKEND": "numba"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert eval(out[0]) == tuple(k for k in int8_modes if k not in drops)
    assert eval(out[1]) == pytest.approx([0, 1, 2, 3, 4], abs=0.02)


def test_int8_kernel_argument_is_checked():
    q = Int8Weight.from_dense(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="kernel.*portable"):
        kernels.int8_linear(q, np.ones(4, np.float32), kernel="avx9000")
    for missing in {"vnni", "avx2"} - set(int8_modes):  # asking for what this CPU lacks is an error, not a fallback
        with pytest.raises(ValueError, match="kernel must be"):
            kernels.int8_linear(q, np.ones(4, np.float32), kernel=missing)
        with pytest.raises(ValueError, match="kernel must be"):
            kernels.int8_matmul_int32(np.ones((1, 4), np.int8), q, kernel=missing)


@pytest.mark.parametrize("kernel", int8_modes)
def test_int8_kernel_choice_reaches_its_kernel(kernel):
    """Each flavour keeps its own scratch (uint8 activations for VNNI, int8 for AVX2): proof that it ran,
    since all flavours give identical numbers."""
    rng = np.random.default_rng(7)
    q = Int8Weight.from_dense(rng.standard_normal((20, 30)).astype(np.float32))
    kernels.int8_linear(q, rng.standard_normal(30).astype(np.float32), kernel=kernel)
    kernels.int8_linear(q, rng.standard_normal((3, 30)).astype(np.float32), kernel=kernel)
    ws = q.workspace
    if kernel == "portable":
        assert set(ws.keys()) == {("portable", 1), ("portable", 3)}
    else:
        want = np.uint8 if kernel == "vnni" else np.int8
        assert set(ws.keys()) == {("gemv", kernel), (kernel, 4)}
        assert ws.get(("gemv", kernel), None).xu.dtype == want and ws.get((kernel, 4), None)[0].dtype == want
    assert ws.gemv is None  # an explicit kernel never installs the default short path


@pytest.mark.parametrize("kernel", int8_modes)
def test_int8_empty_batch(kernel):
    q = Int8Weight.from_dense(np.ones((3, 5), np.float32))
    assert kernels.int8_matmul_int32(np.ones((0, 5), np.int8), q, kernel=kernel).shape == (0, 3)
    assert kernels.int8_linear(q, np.ones((0, 5), np.float32), kernel=kernel).shape == (0, 3)


def test_int8_default_short_path_is_correct_and_keeps_no_state():
    """kernel=None at batch 1 (float32, no bias) takes the short path straight to the compiled kernel once
    the first call has set it up; mixing it with bias, out=, explicit kernels and batches must not leak."""
    rng = np.random.default_rng(8)
    q = Int8Weight.from_dense(rng.standard_normal((70, 130)).astype(np.float32))
    b = rng.standard_normal(70).astype(np.float32)
    out = np.empty(70, np.float32)
    for step in range(12):
        x = (rng.choice([0.0, 1e-3, 1.0, 50.0]) * rng.standard_normal(130)).astype(np.float32)
        bias = b if step % 3 == 0 else None
        kernel = None if step % 2 == 0 else int8_modes[step % len(int8_modes)]
        ref = kernels.int8_linear_reference(q, x, bias)
        y = kernels.int8_linear(q, x, bias=bias, kernel=kernel)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        assert kernels.int8_linear(q, x, bias=bias, out=out, kernel=kernel) is out
        np.testing.assert_array_equal(out, y)
        if step == 0 and int8_modes[0] != "portable":
            assert q.workspace.gemv.in_shape == (130,)  # the short path is installed by the first default call
        if step % 5 == 0:
            kernels.int8_linear(q, rng.standard_normal((3, 130)).astype(np.float32))


@pytest.mark.parametrize("kernel", int8_modes)
def test_int8_batch1_reuses_its_buffers_without_leaking_state(kernel):
    """The batch-1 path keeps scratch buffers on the weight: later calls must not see earlier inputs."""
    rng = np.random.default_rng(5)
    q = Int8Weight.from_dense(rng.standard_normal((70, 130)).astype(np.float32))
    b = rng.standard_normal(70).astype(np.float32)
    out = np.empty(70, np.float32)
    for bias in (b, None, b, None):
        for scale in (1.0, 1e-3, 0.0, 50.0):  # 0.0: an all-zero input (scale 0) must give exactly the bias
            x = (scale * rng.standard_normal(130)).astype(np.float32)
            y = kernels.int8_linear(q, x, bias=bias, out=out, kernel=kernel)
            assert y is out
            np.testing.assert_allclose(y, kernels.int8_linear_reference(q, x, bias), rtol=1e-5, atol=1e-5)
            if scale == 0.0:
                np.testing.assert_array_equal(y, 0 if bias is None else bias)
            y2 = kernels.int8_linear(q, x, bias=bias, kernel=kernel)  # a fresh output array
            np.testing.assert_array_equal(y2, y)
    with pytest.raises(ValueError, match="out must be"):
        kernels.int8_linear(q, x, out=np.empty(71, np.float32))
    with pytest.raises(ValueError, match="x must be"):
        kernels.int8_linear(q, np.ones(129, np.float32))


# ----------------------------------------------------------------------------- fused chain


@settings(max_examples=25)
@given(sizes=st.lists(st.integers(1, 50), min_size=2, max_size=5), density=densities, dtype=dtypes,
       batch=st.integers(1, 4), data=st.data())
def test_fused_chain_matches_layer_by_layer_numpy(sizes, density, dtype, batch, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    layers, ref_layers = [], []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = sparse_matrix(rng, (b, a), density, dtype)
        bias = rng.standard_normal(b).astype(dtype) if data.draw(st.booleans()) else None
        relu = data.draw(st.booleans())
        dense = data.draw(st.booleans())
        layers.append((w if dense else CSR.from_dense(w), bias, relu))
        ref_layers.append((w, bias, relu))
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    ref = x.astype(np.float64)
    for w, b, relu in ref_layers:
        ref = ref @ w.T + (0 if b is None else b)
        if relu:
            ref = np.maximum(ref, 0)
    y = FusedChain(layers, dtype=dtype).run(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref, **tol(dtype))


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_argument():
    rng = np.random.default_rng(5)
    c = CSR.from_dense(sparse_matrix(rng, (4, 6), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"x must be an array whose last dimension is in_features = 6, got shape \(2, 5\)."):
        kernels.linear(c, np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match=r"x must be a floating-point array"):
        kernels.linear(c, np.ones((2, 6), np.int64))
    with pytest.raises(ValueError, match=r"x must be a 1-D or 2-D array"):
        kernels.linear(c, np.ones((2, 2, 6), np.float32))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray"):
        kernels.linear(c, [[1.0] * 6])
    with pytest.raises(ValueError, match=r"bias must be None or a 1-D array of length out_features = 4"):
        kernels.linear(c, np.ones(6, np.float32), bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"out must be a C-contiguous array of shape \(4,\)"):
        kernels.linear(c, np.ones(6, np.float32), out=np.empty(5, np.float32))
    with pytest.raises(TypeError, match=r"w must be a CSR, BSR, NM or Int8Weight"):
        kernels.linear(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="simd must be"):
        kernels.csr_spmv(CSR.from_dense(np.eye(3)), np.ones(3), simd=True)  # float64 has no SIMD kernel
    with pytest.raises(TypeError, match="xq must be"):
        kernels.int8_matmul_int32(np.ones((1, 3), np.float32), Int8Weight.from_dense(np.eye(3, dtype=np.float32)))


def test_float64_x_is_computed_in_the_weights_dtype():
    rng = np.random.default_rng(6)
    w = sparse_matrix(rng, (5, 7), 0.5, np.float32)
    x = rng.standard_normal((2, 7))  # float64
    y = kernels.linear(CSR.from_dense(w), x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
