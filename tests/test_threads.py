"""prunekit._threads: once prunekit's parallel kernels run, OpenBLAS's idle workers sleep instead of
spinning, and BLAS and LAPACK still give the same results, from one thread or several at once.

The test suite itself runs with one BLAS and one numba thread (see the Makefile);
these tests start fresh interpreters with two threads of each.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="looks up OpenBLAS in /proc/self/maps")


def _run(code, **env):
    # PRUNEKIT_BACKEND=numba: these tests are about what the numba kernels do to OpenBLAS's threads,
    # also in `make test`'s second pass under PRUNEKIT_BACKEND=numpy
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_NUM_THREADS", "PRUNEKIT_QUIET_BLAS"))}
    full.update({"OPENBLAS_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2", "PYTHONPATH": ROOT,
                 "PRUNEKIT_BACKEND": "numba", **env})
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


PRODUCTS = textwrap.dedent("""
    import os, time
    import numpy as np
    def products():
        rng = np.random.default_rng(0)
        out = []
        for dt in (np.float32, np.float64):
            a = rng.standard_normal((257, 300)).astype(dt)
            b = rng.standard_normal((300, 129)).astype(dt)
            big = rng.standard_normal((2048, 1024)).astype(dt)
            v = rng.standard_normal(1024).astype(dt)
            out += [a @ b, b.T @ a.T, big @ v, v[:257] @ rng.standard_normal((257, 999)).astype(dt)]
        sq = rng.standard_normal((300, 300))  # LAPACK on top of the threaded BLAS
        out += [np.linalg.solve(sq, b[:, :40].astype(np.float64)), np.linalg.inv(sq), np.linalg.eigh(sq + sq.T)[0]]
        return out
    def idle_cpu_ms():
        '''CPU time the process burns in 50 ms of sleep right after a product: spinning BLAS workers.'''
        m = np.ones((400, 400), np.float32)
        m @ m
        t = time.process_time()
        time.sleep(0.05)
        return (time.process_time() - t) * 1e3
    def first_parallel_kernel():
        from prunekit import _conv_kernels as K
        x = np.random.default_rng(1).random((64, 3, 32, 32), dtype=np.float32)
        K.im2col_kernel(x, 3, 3, 1, 1, 0, 0, 30, 30, np.empty((27, 64 * 30 * 30), np.float32))
        from prunekit import _threads
        return _threads.status()
""")


@pytest.mark.numba
@linux
def test_blas_workers_sleep_after_the_first_parallel_kernel_and_results_stay_the_same():
    out = _run(PRODUCTS + textwrap.dedent("""
        before, spin_before = products(), max(idle_cpu_ms() for _ in range(5))
        st = first_parallel_kernel()
        print("STATUS", st["installed"], st["reason"])
        if st["installed"]:
            after, spin_after = products(), min(idle_cpu_ms() for _ in range(3))
            for p, q in zip(before, after):
                assert p.dtype == q.dtype and p.shape == q.shape
                np.testing.assert_allclose(q, p, rtol=1e-5 if p.dtype == np.float32 else 1e-12, atol=1e-5)
            print("SPIN", spin_before, spin_after)
    """))
    if "STATUS False" in out:
        pytest.skip("not available here: " + out.split("STATUS False", 1)[1].strip())
    spin_before, spin_after = map(float, out.split("SPIN", 1)[1].split())
    if spin_before <= 20:  # other processes hold the cores, so spinning workers get no CPU to burn
        pytest.skip(f"machine too busy to see OpenBLAS's workers spin ({spin_before:.1f} ms of CPU in 50 ms "
                    f"idle, at best of 5); nothing to compare the quiet workers with")
    assert spin_after < 10, f"after install they should sleep ({spin_after:.1f} ms of CPU in 50 ms idle)"


@pytest.mark.numba
@linux
def test_blas_and_lapack_from_several_python_threads_at_once_stay_exact():
    """Three threads doing products and LU solves side by side: no deadlock, no mixed-up results."""
    out = _run(PRODUCTS + textwrap.dedent("""
        import threading
        ref = products()
        first_parallel_kernel()
        bad = []
        def work():
            for _ in range(5):
                for p, q in zip(ref, products()):
                    if not np.allclose(p, q, rtol=1e-5, atol=1e-5):
                        bad.append(p.shape)
        threads = [threading.Thread(target=work, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        alive = sum(t.is_alive() for t in threads)
        print("ALIVE", alive, "BAD", bad, flush=True)
        os._exit(0)   # a hung daemon thread must not hang the interpreter's exit
    """))
    assert "ALIVE 0 BAD []" in out, out


@pytest.mark.numba
def test_can_be_switched_off_and_respects_a_users_setting():
    code = PRODUCTS + "print(first_parallel_kernel())\n"
    off = _run(code, PRUNEKIT_QUIET_BLAS="0")
    assert "'installed': False" in off and "PRUNEKIT_QUIET_BLAS=0" in off, off
    mine = _run(code, OPENBLAS_THREAD_TIMEOUT="20")
    assert "'installed': False" in mine and "set by you" in mine, mine


@pytest.mark.numba
@linux
def test_small_products_run_on_one_thread_and_leave_the_setting_as_it_was():
    """_threads.matmul: the numbers of ``@`` (to float32 rounding: one thread may block the sum differently),
    and the calling thread's BLAS thread count is back afterwards."""
    out = _run(textwrap.dedent("""
        import ctypes
        import numpy as np
        from prunekit import _threads
        rng = np.random.default_rng(0)
        set_local = _threads._set_local_threads()
        if set_local is None:
            print("NOLOCAL"); raise SystemExit
        for m, k, n in [(64, 576, 49), (32, 288, 196), (128, 256, 120), (300, 784, 1), (1, 10, 10), (512, 512, 512)]:
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            np.testing.assert_allclose(_threads.matmul(a, b), a @ b, rtol=1e-5, atol=1e-4, err_msg=str((m, k, n)))
            assert set_local(0) == 2, "the calling thread was left with another BLAS thread count"
        try:
            _threads.matmul(np.ones((64, 576), np.float32), np.ones((575, 49), np.float32))
        except ValueError:
            pass
        assert set_local(0) == 2, "not reset after a failed product"
        set_local(1)                                   # a product on one thread really is what happens inside:
        assert set_local(0) == 1                       # the setter reports the count it replaces
        print("OK")
    """))
    if "NOLOCAL" in out:
        pytest.skip("this OpenBLAS has no openblas_set_num_threads_local (older than 0.3.27)")
    assert "OK" in out, out
