"""prunekit._threads: NumPy's OpenBLAS runs its parallel jobs on numba's pool, with the same results.

The test suite itself runs with one BLAS and one numba thread (see the Makefile),
where the shared pool is never installed; these tests start fresh interpreters
with two threads of each.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_NUM_THREADS", "PRUNEKIT_SHARED_POOL"))}
    full.update({"OPENBLAS_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2", "PYTHONPATH": ROOT, **env})
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


PRODUCTS = textwrap.dedent("""
    import numpy as np
    def products():
        rng = np.random.default_rng(0)
        out = []
        for dt in (np.float32, np.float64):
            a = rng.standard_normal((257, 300)).astype(dt)
            b = rng.standard_normal((300, 129)).astype(dt)
            big = rng.standard_normal((2048, 1024)).astype(dt)
            v = rng.standard_normal(1024).astype(dt)
            out += [a @ b, b.T @ a.T, big @ v, v[:257] @ rng.standard_normal((257, 999)).astype(dt),
                    np.einsum("ij,jk->ik", a, b)]
        sq = rng.standard_normal((300, 300))  # LAPACK on top of the threaded BLAS
        out += [np.linalg.solve(sq, b[:, :40].astype(np.float64)), np.linalg.inv(sq), np.linalg.eigh(sq + sq.T)[0]]
        return out
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared pool looks up OpenBLAS in /proc/self/maps")
def test_blas_products_run_on_numba_threads_with_identical_results():
    out = _run(PRODUCTS + textwrap.dedent("""
        before = products()
        rng = np.random.default_rng(1)
        from prunekit import _conv_kernels as K, _threads
        x = rng.random((64, 3, 32, 32), dtype=np.float32)
        cols = np.empty((27, 64 * 30 * 30), np.float32)
        K.im2col_kernel(x, 3, 3, 1, 1, 0, 0, 30, 30, cols)      # the first parallel kernel installs the pool
        st = _threads.status()
        print("STATUS", st["installed"], st["reason"])
        if st["installed"]:
            n0 = _threads.calls()
            after = products()
            assert _threads.calls() > n0, "OpenBLAS never called the shared pool"
            for p, q in zip(before, after):
                assert p.dtype == q.dtype and p.shape == q.shape
                np.testing.assert_allclose(q, p, rtol=1e-5 if p.dtype == np.float32 else 1e-12, atol=1e-5)
            np.testing.assert_array_equal(cols, K.im2col_reference(x, 3, 3, 1, 1, 0, 0))
            print("CHECKED", _threads.calls() - n0)
    """))
    if "STATUS False" in out:
        pytest.skip("shared pool not available here: " + out.split("STATUS False", 1)[1].strip())
    assert "CHECKED" in out, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shared pool looks up OpenBLAS in /proc/self/maps")
def test_blas_from_several_python_threads_at_once_neither_deadlocks_nor_mixes_results():
    """Each calling thread gets its own OpenMP team; products running side by side stay exact."""
    out = _run(PRODUCTS + textwrap.dedent("""
        import threading
        ref = products()
        from prunekit import _conv_kernels as K, _threads
        x = np.random.default_rng(1).random((64, 3, 32, 32), dtype=np.float32)
        K.im2col_kernel(x, 3, 3, 1, 1, 0, 0, 30, 30, np.empty((27, 64 * 30 * 30), np.float32))
        if not _threads.status()["installed"]:
            print("STATUS False", _threads.status()["reason"])
            raise SystemExit
        bad = []
        def work():
            for _ in range(5):
                for p, q in zip(ref, products()):
                    if not np.allclose(p, q, rtol=1e-5, atol=1e-5):
                        bad.append(1)
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "deadlock"
        assert not bad
        print("CHECKED")
    """))
    if "STATUS False" in out:
        pytest.skip("shared pool not available here: " + out.split("STATUS False", 1)[1].strip())
    assert "CHECKED" in out, out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_falls_back_to_openblas_threads():
    out = _run(PRODUCTS + textwrap.dedent("""
        import os
        from prunekit import _conv_kernels as K, _threads
        x = np.random.default_rng(1).random((64, 3, 32, 32), dtype=np.float32)
        K.im2col_kernel(x, 3, 3, 1, 1, 0, 0, 30, 30, np.empty((27, 64 * 30 * 30), np.float32))
        ref = products()
        pid = os.fork()
        if pid == 0:  # OpenMP does not survive fork: the child must not use the parent's pool
            ok = all(np.allclose(p, q, rtol=1e-5, atol=1e-5) for p, q in zip(ref, products()))
            os._exit(0 if ok and not _threads.status()["installed"] else 3)
        _, code = os.waitpid(pid, 0)
        print("CHILD", os.waitstatus_to_exitcode(code))
    """))
    assert "CHILD 0" in out, out


def test_can_be_switched_off():
    out = _run(textwrap.dedent("""
        import numpy as np
        from prunekit import _conv_kernels as K, _threads
        x = np.zeros((64, 3, 32, 32), np.float32)
        K.im2col_kernel(x, 3, 3, 1, 1, 0, 0, 30, 30, np.empty((27, 64 * 30 * 30), np.float32))
        print(_threads.status())
    """), PRUNEKIT_SHARED_POOL="0")
    assert "'installed': False" in out and "PRUNEKIT_SHARED_POOL=0" in out, out
