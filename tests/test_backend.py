"""prunekit's two backends: "numpy" runs each op's readable reference, "numba" its kernel; same results.

Parity: every kernel-backed op (conv2d on both of its paths, im2col, max_pool2d, the
fused SGD-momentum update) gives the same values and the same gradients under both
backends, on random shapes; so does a whole LeNet-5 training step. Then the switch
itself: errors, the context manager, the environment variable, and what happens
where numba is not installed (fresh interpreters, so that "numba was never imported"
means something).

Every test here pins the backends it uses, so the file gives the same results whatever
PRUNEKIT_BACKEND says (``make test`` runs it once, in its first pass).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit as pk
import prunekit._conv_kernels as K
import prunekit.functional as F
from prunekit import _backend, _jit, models, optim
from prunekit.tensor import Tensor
from backendhelpers import on_both

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_close(got, want, dtype):
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, **tol)


def forward_and_grads(op, arrays, seed):
    """Run ``op`` on fresh leaves made from ``arrays``, backpropagate a random upstream gradient;
    return (output, grad of each leaf)."""
    leaves = [None if a is None else Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = op(*leaves)
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    (out * Tensor(g)).sum().backward()
    return [out.data] + [None if t is None else t.grad for t in leaves]


# ------------------------------------------------------------- op by op
@st.composite
def conv_case(draw):
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, h + 2 * ph)), draw(st.integers(1, w + 2 * pw))
    stride = draw(st.sampled_from([(1, 1), (1, 1), (2, 1), (2, 3)]))  # stride 1 (direct path) most often
    bias = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (n, c, h, w), (o, c, kh, kw), stride, (ph, pw), bias, dtype


@pytest.mark.numba  # needs both backends (skipped where numba is not installed)
@PARITY
@given(case=conv_case(), direct=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv2d_forward_and_gradients_agree_between_backends(case, direct, seed):
    xs, ws, stride, padding, bias, dtype = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    with pytest.MonkeyPatch.context() as mp:
        # DIRECT_CONV_MAX_CHANNELS picks the path: both paths (im2col + col2im, direct kernels) are compared
        mp.setattr(F, "DIRECT_CONV_MAX_CHANNELS", 1_000 if direct else 0)
        fast, ref = on_both(lambda: forward_and_grads(
            lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), (x, w, b), seed))
    assert_close(fast, ref, dtype)


@pytest.mark.numba  # needs both backends (skipped where numba is not installed)
@PARITY
@given(case=conv_case(), seed=st.integers(0, 2**31 - 1))
def test_im2col_agrees_between_backends(case, seed):
    xs, ws, stride, padding, _, dtype = case
    x = np.random.default_rng(seed).standard_normal(xs).astype(dtype)
    fast, ref = on_both(lambda: F.im2col(x, ws[2:], stride, padding))
    np.testing.assert_array_equal(fast, ref)  # a copy of entries: bit-exact


@st.composite
def pool_case(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, h)), draw(st.integers(1, w))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ties = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return (n, c, h, w), (kh, kw), stride, ties, dtype


@pytest.mark.numba  # needs both backends (skipped where numba is not installed)
@PARITY
@given(case=pool_case(), seed=st.integers(0, 2**31 - 1))
def test_max_pool2d_forward_and_gradient_agree_between_backends(case, seed):
    shape, kernel, stride, ties, dtype = case
    rng = np.random.default_rng(seed)
    # with ties, values from {0, 1, 2}: both backends must send the gradient to the same (first) maximum
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    fast, ref = on_both(lambda: forward_and_grads(lambda x: F.max_pool2d(x, kernel, stride), (x,), seed))
    np.testing.assert_array_equal(fast[0], ref[0])  # a max: no rounding anywhere
    # the gradient is routed to the same winners; where windows overlap, a pixel's several gradients
    # are added in another order, so equal up to rounding
    assert np.array_equal(fast[1] != 0, ref[1] != 0)
    assert_close(fast[1:], ref[1:], dtype)


@pytest.mark.numba  # needs both backends (skipped where numba is not installed)
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 300), momentum=st.sampled_from([0.0, 0.5, 0.9]), nesterov=st.booleans(),
       wd=st.sampled_from([0.0, 1e-3]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_sgd_steps_agree_between_backends(n, momentum, nesterov, wd, dtype, seed):
    """Three SGD steps (the first one fills the momentum buffer) with fresh gradients each time."""
    nesterov = nesterov and momentum > 0
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]

    def run():
        p = Tensor(w0.copy(), requires_grad=True)
        opt = optim.SGD([p], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        for g in grads:
            p.grad = g.copy()
            opt.step()
        return [p.data] + ([opt.state[0]["momentum_buffer"]] if momentum else [])

    fast, ref = on_both(run)
    assert_close(fast, ref, dtype)


# ------------------------------------------------------ a whole training step
@pytest.mark.numba  # needs both backends (skipped where numba is not installed)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_lenet5_training_step_gives_the_same_weights_on_both_backends(dtype):
    """Forward, cross-entropy, backward, SGD with momentum: two steps, every weight compared."""
    rng = np.random.default_rng(3)
    x = rng.random((8, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 8)

    def run():
        model = models.lenet5(seed=0)
        for p in model.parameters():
            p.data = p.data.astype(dtype)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(model(Tensor(x)), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.data))
        return [np.asarray(losses, dtype)] + [p.data for p in model.parameters()]

    fast, ref = on_both(run)
    assert len(fast) == 1 + 10  # two losses, then 5 weights and 5 biases
    assert_close(fast, ref, dtype)
    assert not np.array_equal(fast[1], models.lenet5(seed=0).parameters()[0].data.astype(dtype))  # it trained


# ------------------------------------------------------------ the switch
def test_set_backend_and_backend_name_the_function_and_the_choices():
    for call in (lambda: pk.set_backend("torch"), lambda: pk.backend("NUMPY").__enter__()):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert "must be one of {'numpy', 'numba'}" in msg and msg.startswith(("set_backend():", "backend():"))
    before = pk.get_backend()
    with pytest.raises(ValueError):
        pk.set_backend(None)
    assert pk.get_backend() == before  # a refused choice changes nothing


def test_the_context_manager_restores_the_backend_even_after_an_error():
    before = pk.get_backend()
    with pk.backend("numpy") as name:
        assert name == "numpy" and pk.get_backend() == "numpy" and not _backend.use_numba()
        with pytest.raises(ZeroDivisionError):
            with pk.backend("numpy"):
                1 / 0
        assert pk.get_backend() == "numpy"  # the inner block restored the outer choice
    assert pk.get_backend() == before


def test_a_kernel_without_a_reference_refuses_the_numpy_backend_and_one_with_runs_it():
    calls = []

    def reference(a, out):
        calls.append(len(a))
        out[:] = 2 * a

    def double(a, out):
        for i in range(a.size):
            out[i] = 2 * a[i]

    with_ref, without = _jit.njit(reference=reference)(double), _jit.njit(double)
    a, out = np.arange(3.0), np.zeros(3)
    with pk.backend("numpy"):
        with_ref(a, out)
        with_ref.for_work(10)(a, out)  # the serial twin keeps the reference
        with pytest.raises(RuntimeError, match="lacks its NumPy path"):
            without(a, out)
    assert calls == [3, 3] and out.tolist() == [0.0, 2.0, 4.0]
    assert with_ref._dispatcher is None and without._dispatcher is None  # nothing was compiled


def test_one_serial_or_parallel_threshold_for_conv():
    """``kernel.for_work(n)`` picks the single-thread twin below ``_jit.PARALLEL_MIN_WORK``."""
    k = K.im2col_kernel
    assert k.for_work(_jit.PARALLEL_MIN_WORK) is k
    assert k.for_work(_jit.PARALLEL_MIN_WORK - 1) is k.serial is not k
    assert not k.serial.options["parallel"] and k.serial.reference is k.reference
    assert not hasattr(K, "PARALLEL_MIN_WORK") and not hasattr(K, "pick")  # no second threshold


# ------------------------------------------------- fresh interpreters
def run_python(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "PRUNEKIT_BACKEND"}
    full.update({"PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": "1", **env})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                          text=True, timeout=600)
    return proc


def test_acceptance_lenet5_trains_an_epoch_under_prunekit_backend_numpy_without_importing_numba():
    """Issue 9's acceptance command: one epoch of LeNet-5 on 2,000 Fashion-MNIST images, numba never imported."""
    proc = run_python("""
        import sys
        import numpy as np
        import prunekit as pk
        from prunekit import data, models, optim
        (x, y), _ = data.load_fashion_mnist(flatten=False, download=False)
        x, y = x[:2000], y[:2000]
        model = models.lenet5(seed=0)
        before = pk.evaluate(model, (x, y))["loss"]
        pk.fit(model, data.DataLoader(x, y, batch_size=32, shuffle=True, seed=0),
               optim.SGD(model.parameters(), lr=0.02, momentum=0.9), epochs=1, progress=False)
        after = pk.evaluate(model, (x, y))
        assert pk.get_backend() == "numpy"
        assert "numba" not in sys.modules, "numba was imported"
        print("LOSS", before, after["loss"], after["accuracy"])
    """, PRUNEKIT_BACKEND="numpy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after, accuracy = map(float, proc.stdout.split("LOSS", 1)[1].split())
    # it learned: from about ln 10 = 2.3 (measured with numba, same seed: 1.57 and 41 %; chance is 10 %)
    assert after < before - 0.3 and accuracy > 0.25, (before, after, accuracy)


def test_without_numba_prunekit_falls_back_to_numpy_with_one_warning():
    """``sys.modules["numba"] = None`` makes numba uninstallable for this interpreter (find_spec says None,
    import fails): prunekit must still train, warn exactly once, and refuse set_backend("numba") clearly."""
    proc = run_python("""
        import sys, warnings
        sys.modules["numba"] = None
        import numpy as np
        import prunekit as pk
        import prunekit.functional as F
        from prunekit import models, optim
        from prunekit.tensor import Tensor
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = models.lenet5(seed=0)
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
            for _ in range(2):
                opt.zero_grad()
                F.cross_entropy(model(Tensor(x)), np.arange(4)).backward()
                opt.step()
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "numba is not installed" in msgs[0], msgs
        assert pk.get_backend() == "numpy"
        try:
            pk.set_backend("numba")
        except ModuleNotFoundError as e:
            assert "set_backend()" in str(e) and "pip install numba" in str(e), e
        else:
            raise AssertionError("set_backend('numba') should refuse")
        assert pk.get_backend() == "numpy"
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_a_bad_prunekit_backend_variable_is_named_in_the_error():
    proc = run_python("import prunekit as pk; pk.get_backend()", PRUNEKIT_BACKEND="jax")
    assert proc.returncode != 0
    assert "the environment variable PRUNEKIT_BACKEND must be one of {'numpy', 'numba'}" in proc.stderr
    assert "got 'jax'" in proc.stderr


def test_import_prunekit_reads_no_backend_and_imports_no_numba():
    proc = run_python("""
        import sys
        import prunekit, prunekit.functional, prunekit.optim, prunekit._conv_kernels
        from prunekit import _backend
        assert _backend._current is None and "numba" not in sys.modules
        print("OK")
    """, PRUNEKIT_BACKEND="jax")  # not even read yet, so not yet an error
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
