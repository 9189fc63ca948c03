"""Sparse and int8 kernels vs dense BLAS and scipy.sparse, and a pruned LeNet-300-100 end to end.

    python benchmarks/kernels.py            # full run (a few minutes), writes benchmarks/BENCHMARKS_kernels.md
    python benchmarks/kernels.py --quick    # fewer repetitions, nothing written unless --out is given
    python benchmarks/kernels.py --lenet5   # only the LeNet-5 rows: default to_sparse vs dense, quiet and busy core

Every number is a *ratio*: time of dense NumPy (BLAS) / time of the candidate, so
2.0 means twice as fast as dense. Candidates are timed interleaved (every round
runs each once, in a shuffled order) and each ratio is a ratio of medians over
many rounds, so a burst of background load hits all of them alike. Next to each
ratio is its limit: at batch 1 the kernels are memory-bound, so the limit is
dense bytes / format bytes; at batch 64 they are compute-bound, so the limit is
dense multiply-adds / format multiply-adds.

scipy is optional (``pip install scipy``); without it its column is skipped.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prunekit as pk  # noqa: E402
from prunekit import Tensor, no_grad  # noqa: E402
from prunekit.sparse import BSR, CSR, NM, Int8Weight, kernels  # noqa: E402
from prunekit.sparse.modules import to_sparse  # noqa: E402

try:
    import scipy.sparse as scipy_sparse
except ImportError:  # pragma: no cover - depends on the environment
    scipy_sparse = None

N = 4096
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
BATCHES = (1, 64)


# ----------------------------------------------------------------------------- machine


def blas_info():
    try:
        from threadpoolctl import threadpool_info

        rows = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, {d.get('num_threads')} threads)"
                for d in threadpool_info() if d.get("user_api") == "blas"]
        if rows:
            return "; ".join(rows)
    except ImportError:
        pass
    buf = io.StringIO()
    with redirect_stdout(buf):
        np.show_config()
    lines = [ln.strip() for ln in buf.getvalue().splitlines() if "name" in ln.lower() or "blas" in ln.lower()]
    return " / ".join(lines[:4]) or "unknown (np.show_config printed nothing useful)"


def cpu_busy():
    """(busy, total) jiffies of the whole machine, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def wait_quiet(limit, window=2.0, idle_needed=0.8):
    """Poll /proc/stat until the machine is at least ``idle_needed`` idle over ``window`` seconds."""
    t_end = time.time() + limit
    while time.time() < t_end:
        a = cpu_busy()
        time.sleep(window)
        b = cpu_busy()
        if a is None or b is None:
            return
        idle = 1 - (b[0] - a[0]) / max(b[1] - a[1], 1)
        print(f"machine idle {idle:.0%}", flush=True)
        if idle >= idle_needed:
            return
    print("machine did not get quiet; measuring anyway", flush=True)


def background_since(mark):
    """Fraction of the machine used by *other* processes since ``mark`` (from ``load_mark()``)."""
    busy0, own0, t0 = mark
    busy1 = cpu_busy()
    if busy0 is None or busy1 is None:
        return 0.0
    elapsed = time.perf_counter() - t0
    other = (busy1[0] - busy0[0]) / os.sysconf("SC_CLK_TCK") - (sum(os.times()[:2]) - own0)
    return max(other, 0.0) / (elapsed * (os.cpu_count() or 1))


def load_mark():
    return cpu_busy(), sum(os.times()[:2]), time.perf_counter()


MAX_LOAD = None  # set from --max-load
ATTEMPTS = 4


def quiet_run(fn, label):
    """Run ``fn``; if other processes used more than MAX_LOAD of the machine meanwhile, wait and redo."""
    for attempt in range(ATTEMPTS):
        mark = load_mark()
        res = fn()
        load = background_since(mark)
        if MAX_LOAD is None or load <= MAX_LOAD or attempt == ATTEMPTS - 1:
            return res, load
        print(f"  ({label}: background load {load:.0%} > {MAX_LOAD:.0%}, waiting for quiet and repeating)",
              flush=True)
        wait_quiet(600)
    return res, load


def machine_report():
    import numba

    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                           "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                           "NUMBA_NUM_THREADS")}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": f"{numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads)",
        "scipy": "not installed (column skipped)" if scipy_sparse is None else __import__("scipy").__version__,
        "blas": blas_info(),
        "int8 kernel": {"vnni": "AVX-512 VNNI (vpdpbusd)", "avx2": "AVX2 (vpmaddubsw, sign trick)",
                        "portable": "portable (no AVX2)"}[kernels.int8_kernels()[0]],
        "env": ", ".join(f"{k}={v}" for k, v in env.items() if v is not None) or "none of OPENBLAS_*/OMP_*/NUMBA_* set",
        "note": "OMP_WAIT_POLICY=PASSIVE comes from prunekit._jit (set on the first kernel compile) unless set by you",
        "BLAS threads": _blas_threads_status(),
    }


def _blas_threads_status():
    """Whether OpenBLAS's idle workers sleep at once (prunekit._threads), as they do after warm-up."""
    pk.sparse.warmup()
    from prunekit import _threads

    st = _threads.status()
    return ("sleep after each job: " if st["installed"] else "OpenBLAS default (spin ~0.1 s): ") + st["reason"]


# ----------------------------------------------------------------------------- timing


class Timing(float):
    """Median seconds, with the 10th percentile as ``.p10`` (the machine at its quietest)."""

    def __new__(cls, samples):
        self = super().__new__(cls, float(np.median(samples)))
        self.p10 = float(np.percentile(samples, 10))
        return self


def ratio(a, b):
    """(median ratio, p10 ratio) of two Timings: how many times faster b is than a."""
    return a / b, a.p10 / b.p10


SETTLE = 0.15  # seconds each candidate runs untimed before its timed block (see interleaved)


def interleaved(cands, rounds, block=4, seed=0, settle=None):
    """Timing per candidate over ``rounds`` rounds; each round visits every candidate in a shuffled
    order, runs it untimed for ``settle`` seconds, then times ``block`` runs in a row.

    Why settle: these products are memory-bound, so their speed depends on where their arrays
    are. Right after another candidate streamed its own (up to 64 MB) weights, ours are out of
    cache, and the first calls measure DRAM, not the steady state every candidate gets here
    (bench_cache shows both). Worker threads of OpenBLAS and OpenMP also keep spinning briefly
    after a call. Interleaving still spreads any background load over all candidates alike.
    """
    settle = SETTLE if settle is None else settle
    rng = np.random.default_rng(seed)
    names = list(cands)
    for f in cands.values():  # warm up: compile, fill caches, allocate workspaces
        f()
        f()
    times = {k: [] for k in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            k = names[i]
            t_end = time.perf_counter() + settle
            while time.perf_counter() < t_end:
                cands[k]()
            for _ in range(block):
                t0 = time.perf_counter()
                cands[k]()
                times[k].append(time.perf_counter() - t0)
    return {k: Timing(v) for k, v in times.items()}


def warm_and_cold(fn, flush, repeats=7):
    """(warm, cold) seconds: ``fn`` repeated (its data in cache) vs right after ``flush`` evicted the caches."""
    for _ in range(20):
        fn()
    warm = float(np.median([_timed(fn) for _ in range(50)]))
    cold = []
    for _ in range(repeats):
        flush()
        cold.append(_timed(fn))
    return warm, float(np.median(cold))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- layers


def layer_cases(sparsity, rng):
    """Dense weight, an unstructured mask at ``sparsity``, and a 16x16 block mask at the same sparsity."""
    w = rng.standard_normal((N, N)).astype(np.float32)
    w_csr = w * (rng.random((N, N)) >= sparsity)
    tiles = rng.random((N // 16, N // 16)) >= sparsity
    w_bsr = w * np.kron(tiles, np.ones((16, 16), dtype=bool))
    return w, w_csr, w_bsr


def bench_layers(rounds1, rounds64, seed=0):
    rng = np.random.default_rng(seed)
    dense_bytes = 4 * N * N
    results = []
    for sp in SPARSITIES:
        w, w_csr, w_bsr = layer_cases(sp, rng)
        csr = CSR.from_dense(w_csr)
        bsr = BSR.from_dense(w_bsr, 16)
        nm = None
        if sp == 0.5:
            w_nm = w.copy()
            w_nm.reshape(N, N // 4, 4)[:, :, 2:] = 0  # 2:4 (a learned pattern would pick by magnitude)
            nm = NM.from_dense(w_nm, 2, 4)
        s_csr = scipy_sparse.csr_matrix(w_csr) if scipy_sparse is not None else None
        for batch in BATCHES:
            x = rng.standard_normal((batch, N)).astype(np.float32)
            xin = x[0] if batch == 1 else x
            out = np.empty(xin.shape[:-1] + (N,), dtype=np.float32)
            cands = {"dense": lambda: xin @ w.T,
                     "csr": lambda: kernels.linear(csr, xin, out=out),
                     "bsr16": lambda: kernels.linear(bsr, xin, out=out)}
            if nm is not None:
                cands["nm24"] = lambda: kernels.linear(nm, xin, out=out)
            if s_csr is not None:
                cands["scipy"] = (lambda: s_csr @ xin) if batch == 1 else (lambda: (s_csr @ x.T).T)
            t, load = quiet_run(lambda: interleaved(cands, rounds1 if batch == 1 else rounds64,
                                                    block=8 if batch == 1 else 3), f"{sp:.0%} batch {batch}")
            # correctness of what we timed
            np.testing.assert_allclose(kernels.linear(csr, xin), xin @ w_csr.T, rtol=1e-3, atol=1e-2)
            np.testing.assert_allclose(kernels.linear(bsr, xin), xin @ w_bsr.T, rtol=1e-3, atol=1e-2)
            row = {"sparsity": sp, "batch": batch, "dense_us": t["dense"] * 1e6, "dense_p10_us": t["dense"].p10 * 1e6,
                   "load": load}
            for k in t:
                row[k] = ratio(t["dense"], t[k])
            if "scipy" in t:
                row["csr_vs_scipy"] = ratio(t["scipy"], t["csr"])
            if batch == 1:
                row["csr_limit"] = dense_bytes / csr.nbytes
                row["bsr16_limit"] = dense_bytes / bsr.nbytes
                if nm is not None:
                    row["nm24_limit"] = dense_bytes / nm.nbytes
            else:
                row["csr_limit"] = N * N / max(csr.nnz, 1)
                row["bsr16_limit"] = N * N / max(bsr.nnz, 1)
                if nm is not None:
                    row["nm24_limit"] = 2.0
            row["csr_density"] = csr.density
            row["bsr_density"] = bsr.density
            results.append(row)
            print(format_layer_row(row), flush=True)
    return results


def _stream_kernel():
    """A numba kernel that only reads the packed int8 weights (same 64-byte loads, no quantize/dequantize):
    the memory ceiling the int8 GEMV can reach on this machine."""
    import numba
    from prunekit.sparse._int8_simd import vadd, vload, vstore, vzero

    @numba.njit(parallel=True)
    def stream(wp, n_tasks, acc):
        step = wp.shape[0] // n_tasks
        for t in numba.prange(n_tasks):
            s0, s1, s2, s3 = vzero(), vzero(), vzero(), vzero()
            for i in range(t * step, (t + 1) * step, 256):
                s0 = vadd(s0, vload(wp, i))
                s1 = vadd(s1, vload(wp, i + 64))
                s2 = vadd(s2, vload(wp, i + 128))
                s3 = vadd(s3, vload(wp, i + 192))
            vstore(acc, 64 * t, s0)
            vstore(acc, 64 * t + 16, s1)
            vstore(acc, 64 * t + 32, s2)
            vstore(acc, 64 * t + 48, s3)
    return stream


def bench_int8(rounds1, rounds64, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, N)).astype(np.float32)
    q = Int8Weight.from_dense(w)
    rows = []
    for batch in BATCHES:
        x = rng.standard_normal((batch, N)).astype(np.float32)
        xin = x[0] if batch == 1 else x
        out = np.empty(xin.shape[:-1] + (N,), dtype=np.float32)
        cands = {"dense": lambda: xin @ w.T, "int8": lambda: kernels.int8_linear(q, xin, out=out)}
        if kernels.int8_kernels()[0] != "portable":
            cands["int8_portable"] = lambda: kernels.int8_linear(q, xin, out=out, kernel="portable")
            if batch == 1:
                wp = kernels._int8_packed(q)[0]
                stream, acc = _stream_kernel(), np.empty(64 * 64, np.int32)
                cands["stream"] = lambda: stream(wp, 64, acc)
        t, load = quiet_run(lambda: interleaved(cands, rounds1 if batch == 1 else rounds64,
                                                block=8 if batch == 1 else 3), f"int8 batch {batch}")
        ref = kernels.int8_linear_reference(q, xin)
        np.testing.assert_allclose(kernels.int8_linear(q, xin), ref, rtol=1e-4, atol=1e-3)
        row = {"batch": batch, "dense_us": t["dense"] * 1e6, "dense_p10_us": t["dense"].p10 * 1e6,
               "int8": ratio(t["dense"], t["int8"]), "limit": (4 * N * N) / q.nbytes if batch == 1 else None,
               "load": load}
        if "int8_portable" in t:
            row["int8_portable"] = ratio(t["dense"], t["int8_portable"])
        if "stream" in t:
            row["stream"] = ratio(t["dense"], t["stream"])
        rows.append(row)
        print(format_int8_row(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- LeNet


def bench_cache(sparsity=0.9, seed=3):
    """Batch-1 dense vs CSR and int8 with the weights in cache (repeated calls) and cold (after streaming 256 MB)."""
    rng = np.random.default_rng(seed)
    w, w_csr, _ = layer_cases(sparsity, rng)
    csr = CSR.from_dense(w_csr)
    q = Int8Weight.from_dense(w)
    x = rng.standard_normal(N).astype(np.float32)
    out = np.empty(N, dtype=np.float32)
    junk = np.ones(64 * 2**20, dtype=np.float32)  # 256 MB, more than any cache

    def flush():
        junk.sum()

    (dense, sparse, int8), _ = quiet_run(lambda: (
        warm_and_cold(lambda: w @ x, flush), warm_and_cold(lambda: kernels.linear(csr, x, out=out), flush),
        warm_and_cold(lambda: kernels.int8_linear(q, x, out=out), flush)), "cache")
    row = {"dense": [t * 1e6 for t in dense], "csr": [t * 1e6 for t in sparse], "int8": [t * 1e6 for t in int8],
           "sparsity": sparsity, "ratio": [dense[0] / sparse[0], dense[1] / sparse[1]],
           "int8_ratio": [dense[0] / int8[0], dense[1] / int8[1]]}
    print(f"cache: dense warm {row['dense'][0]:.0f} us cold {row['dense'][1]:.0f} us | CSR {sparsity:.0%} warm "
          f"{row['csr'][0]:.0f} us cold {row['csr'][1]:.0f} us | ratio warm {row['ratio'][0]:.2f}x "
          f"cold {row['ratio'][1]:.2f}x | int8 warm {row['int8'][0]:.0f} us cold {row['int8'][1]:.0f} us | "
          f"ratio warm {row['int8_ratio'][0]:.2f}x cold {row['int8_ratio'][1]:.2f}x", flush=True)
    return row


def numpy_forward(model):
    """The dense forward written directly in NumPy (no Tensor/Module overhead): the strictest baseline."""
    lin = [m for m in model if isinstance(m, pk.nn.Linear)]
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.data, m.bias.data) for m in lin]

    def f(x):
        h = x @ w1.T
        h += b1
        np.maximum(h, 0, out=h)
        h = h @ w2.T
        h += b2
        np.maximum(h, 0, out=h)
        h = h @ w3.T
        h += b3
        return h
    return f


def bench_lenet(rounds, sparsity=0.95, seed=0):
    from prunekit import pruning

    model = pk.models.lenet_300_100(seed=seed)
    pruning.prune(model, sparsity)  # magnitude, per layer
    model.eval()
    fast = to_sparse(model, format="csr")
    unfused = to_sparse(model, format="csr", fuse=False)
    npf = numpy_forward(model)
    rng = np.random.default_rng(seed)
    rows = []
    for batch in (1, 64):
        x = rng.standard_normal((batch, 784)).astype(np.float32)
        xt = Tensor(x)
        with no_grad():
            np.testing.assert_allclose(fast(xt).data, model(xt).data, rtol=1e-4, atol=1e-5)
            cands = {"dense": lambda: model(xt), "numpy": lambda: npf(x), "to_sparse": lambda: fast(xt),
                     "to_sparse_unfused": lambda: unfused(xt)}
            # batch 1: many short rounds, so that every candidate samples the machine's slow and fast spells
            # alike (a shared VM's speed can change by a third for seconds at a time)
            t, load = quiet_run(lambda: interleaved(cands, 3 * rounds if batch == 1 else max(rounds // 10, 10),
                                                    block=60 if batch == 1 else 20, settle=0.02),
                                f"LeNet batch {batch}")
        row = {"batch": batch, **{f"{k}_us": v * 1e6 for k, v in t.items()},
               **{f"{k}_p10_us": v.p10 * 1e6 for k, v in t.items()},
               "vs_dense": ratio(t["dense"], t["to_sparse"]), "vs_numpy": ratio(t["numpy"], t["to_sparse"]),
               "unfused_vs_dense": ratio(t["dense"], t["to_sparse_unfused"]), "load": load}
        rows.append(row)
        print(format_lenet_row(row), flush=True)
    return rows


@contextmanager
def busy_core():
    """Another process holding one core: a busy loop pinned to the last core we may use (Linux; else nothing).

    Yields the core's number, or None where there is no second core to take.
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2:
        yield None
        return
    code = f"import os\nos.sched_setaffinity(0, {{{cores[-1]}}})\nwhile True:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)  # let it start spinning
        yield cores[-1]
    finally:
        proc.kill()
        proc.wait()


def bench_lenet5_default(rounds, sparsity=0.9, seed=0):
    """LeNet-5 pruned to ``sparsity``, the default ``to_sparse(model)`` vs the dense model at batch 1,
    on the machine as it is and with one core held by a busy loop (the issue-9 acceptance row)."""
    from prunekit import pruning

    model = pk.models.lenet5(seed=seed)
    pruning.prune(model, sparsity)  # magnitude, per layer
    model.eval()
    fast = to_sparse(model)
    csr = to_sparse(model, format="csr")
    x = Tensor(np.random.default_rng(seed).standard_normal((1, 1, 28, 28)).astype(np.float32))
    rows = []
    with no_grad():
        np.testing.assert_allclose(fast(x).data, model(x).data, rtol=1e-4, atol=1e-5)
        cands = {"dense": lambda: model(x), "to_sparse": lambda: fast(x), "csr": lambda: csr(x)}
        for busy in (False, True):
            ctx = busy_core() if busy else contextmanager(lambda: (yield None))()
            with ctx as core:
                if busy and core is None:
                    continue
                t = interleaved(cands, 3 * rounds, block=60, settle=0.02)
            row = {"busy_core": core, "dense_us": t["dense"] * 1e6, "to_sparse_us": t["to_sparse"] * 1e6,
                   "csr_us": t["csr"] * 1e6, "vs_dense": ratio(t["dense"], t["to_sparse"]),
                   "csr_vs_dense": ratio(t["dense"], t["csr"])}
            rows.append(row)
            print(format_lenet5_row(row), flush=True)
    return rows


def format_lenet5_row(r):
    where = "machine as it is" if r["busy_core"] is None else f"core {r['busy_core']} busy"
    return (f"LeNet-5 90% pruned, default to_sparse vs dense, batch 1 ({where}): dense {r['dense_us']:.1f} us, "
            f"to_sparse {r['to_sparse_us']:.1f} us -> {_r(r['vs_dense'])}; format='csr' {r['csr_us']:.1f} us -> "
            f"{_r(r['csr_vs_dense'])}")


# ----------------------------------------------------------------------------- output


def _r(v, limit=None):
    """'median (p10) [limit]' for a (median ratio, p10 ratio) pair."""
    if v is None:
        return "-"
    s = f"{v[0]:.2f}x ({v[1]:.2f}x)"
    if limit is not None:
        s += f" [{limit:.1f}x]"
    return s


def format_layer_row(r):
    return (f"sparsity {r['sparsity']:.0%} batch {r['batch']:>2}: dense {r['dense_us']:7.0f} us (p10 "
            f"{r['dense_p10_us']:6.0f}) | scipy {_r(r.get('scipy'))} | CSR {_r(r['csr'], r['csr_limit'])} | "
            f"BSR16 {_r(r['bsr16'], r['bsr16_limit'])} | N:M 2:4 {_r(r.get('nm24'), r.get('nm24_limit'))} | "
            f"CSR vs scipy {_r(r.get('csr_vs_scipy'))}")


def format_int8_row(r):
    return (f"int8 batch {r['batch']:>2}: dense fp32 {r['dense_us']:7.0f} us (p10 {r['dense_p10_us']:6.0f}) | "
            f"int8 {_r(r['int8'], r['limit'])}"
            + (f" | portable int8 {_r(r['int8_portable'])}" if "int8_portable" in r else "")
            + (f" | read-only stream of the int8 weights {_r(r['stream'])}" if "stream" in r else ""))


def format_lenet_row(r):
    return (f"LeNet-300-100 95% batch {r['batch']:>2}: prunekit dense {r['dense_us']:8.1f} us, NumPy dense "
            f"{r['numpy_us']:8.1f} us, to_sparse {r['to_sparse_us']:8.1f} us -> {_r(r['vs_dense'])} vs prunekit "
            f"dense, {_r(r['vs_numpy'])} vs NumPy; unfused {r['to_sparse_unfused_us']:.1f} us")


def markdown(info, layers, int8, lenet, command, load, switch=None, lenet5=()):
    out = ["# Kernel benchmarks (prunekit.sparse)", "",
           f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}.", "",
           "| machine | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    if load is not None:
        out.append(f"| background load | {load:.0%} of the machine was busy with other processes during the run |")
    out += ["", "Ratios are dense-NumPy time / candidate time (higher is faster; 1.00x = as fast as dense),",
            "written `median (p10) [limit]`: the ratio of the medians over interleaved rounds (each round runs every",
            "candidate in a shuffled order, untimed for 0.15 s and then a few timed runs in a row), in parentheses the",
            "ratio of the 10th percentiles (the machine at its quietest; use it when the background load is high),",
            "in brackets the limit: bytes moved (batch 1, memory-bound) or multiply-adds (batch 64, compute-bound),",
            "dense / format. CSR is an unstructured random mask; BSR16 a 16x16 block mask at the same sparsity;",
            "N:M is 2:4 (50% by construction).", ""]
    for batch in BATCHES:
        out += [f"## 4096 x 4096 layer, batch {batch}", "",
                "| sparsity | dense us (p10) | scipy.sparse | CSR | BSR 16x16 | N:M 2:4 | CSR vs scipy | other load |",
                "|---|---|---|---|---|---|---|---|"]
        for r in layers:
            if r["batch"] != batch:
                continue
            out.append(f"| {r['sparsity']:.0%} | {r['dense_us']:.0f} ({r['dense_p10_us']:.0f}) | {_r(r.get('scipy'))} | "
                       f"{_r(r['csr'], r['csr_limit'])} | {_r(r['bsr16'], r['bsr16_limit'])} | "
                       f"{_r(r.get('nm24'), r.get('nm24_limit'))} | {_r(r.get('csr_vs_scipy'))} | {r['load']:.0%} |")
        out.append("")
    out += ["## int8 weights (dense 4096 x 4096, per-row scales, activations quantized per row)", "",
            "| batch | fp32 BLAS us (p10) | int8 | portable int8 (no SIMD) | read-only stream of the int8 weights "
            "| other load |", "|---|---|---|---|---|---|"]
    for r in int8:
        out.append(f"| {r['batch']} | {r['dense_us']:.0f} ({r['dense_p10_us']:.0f}) | {_r(r['int8'], r['limit'])} | "
                   f"{_r(r.get('int8_portable'))} | {_r(r.get('stream'))} | {r['load']:.0%} |")
    out += ["", "The read-only stream touches the same 16 MB with the same vector loads and does nothing else: "
            "the fastest any int8 GEMV can be on this machine. Against it, the [limit] of 4.0x assumes that "
            "dense BLAS and the int8 kernel draw the same bandwidth from memory."]
    out += ["", "## LeNet-300-100 pruned to 95% (magnitude, per layer), through `to_sparse`", "",
            "| batch | prunekit dense us (p10) | NumPy dense us (p10) | to_sparse us (p10) | vs prunekit dense | vs NumPy dense "
            "| unfused to_sparse (us) | other load |", "|---|---|---|---|---|---|---|---|"]
    for r in lenet:
        out.append(f"| {r['batch']} | {r['dense_us']:.1f} ({r['dense_p10_us']:.1f}) | {r['numpy_us']:.1f} "
                   f"({r['numpy_p10_us']:.1f}) | {r['to_sparse_us']:.1f} ({r['to_sparse_p10_us']:.1f}) | "
                   f"{_r(r['vs_dense'])} | {_r(r['vs_numpy'])} | {r['to_sparse_unfused_us']:.1f} | {r['load']:.0%} |")
    out.append("")
    if lenet5:
        out += ["## LeNet-5 pruned to 90%, the default `to_sparse(model)` vs dense, batch 1", "",
                "Format \"auto\" keeps a layer dense where its sparse kernel does not pay; \"busy\": a busy loop",
                "held one core meanwhile (another process on a 2-core machine).", "",
                "| machine | dense us | to_sparse us | to_sparse vs dense | format=\"csr\" us | csr vs dense |",
                "|---|---|---|---|---|---|"]
        for r in lenet5:
            where = "as it was" if r["busy_core"] is None else f"core {r['busy_core']} busy"
            out.append(f"| {where} | {r['dense_us']:.1f} | {r['to_sparse_us']:.1f} | {_r(r['vs_dense'])} | "
                       f"{r['csr_us']:.1f} | {_r(r['csr_vs_dense'])} |")
        out.append("")
    if switch is not None:
        out += [f"## Where the weights live: batch 1, CSR {switch['sparsity']:.0%} and int8 vs dense", "",
                "Warm: the same product repeated, its arrays in cache (as in the tables above). Cold: right after",
                "streaming 256 MB, so the weights come from DRAM. Memory-bound kernels run at the speed of",
                "wherever their bytes are; the ratio moves with it. A 16 MB int8 or CSR weight can stay in a large",
                "last-level cache (32 MB on AMD EPYC Zen 3) where the 64 MB float32 one cannot, so the warm ratio",
                "can beat the bytes ratio.", "",
                "| | dense (us) | CSR (us) | CSR speed-up | int8 (us) | int8 speed-up |", "|---|---|---|---|---|---|",
                *[f"| {name} | {switch['dense'][i]:.0f} | {switch['csr'][i]:.0f} | {switch['ratio'][i]:.2f}x | "
                  f"{switch['int8'][i]:.0f} | {switch['int8_ratio'][i]:.2f}x |" for i, name in enumerate(("warm", "cold"))],
                ""]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (noisier); writes nothing unless --out")
    p.add_argument("--rounds", type=int, default=None, help="rounds at batch 1 (batch 64 uses a third)")
    p.add_argument("--out", default=None, help="markdown file to write (default benchmarks/BENCHMARKS_kernels.md)")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting")
    p.add_argument("--lenet5", action="store_true", help="only the LeNet-5 rows (default to_sparse vs dense, "
                                                          "quiet and with a busy core); writes nothing")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for the machine to be mostly idle (shared machines)")
    p.add_argument("--max-load", type=float, default=None, metavar="FRACTION",
                   help="redo a measurement (up to 4 times) if other processes used more than FRACTION of the "
                        "machine meanwhile, e.g. 0.1")
    args = p.parse_args(argv)
    rounds1 = args.rounds or (4 if args.quick else 15)
    rounds64 = max(rounds1 // 2, 3)
    out_path = args.out or (None if args.quick else str(Path(__file__).with_name("BENCHMARKS_kernels.md")))

    global MAX_LOAD
    MAX_LOAD = args.max_load
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    pk.sparse.warmup()  # compiles (and lets prunekit._jit set its OpenMP policy) before we look at the environment
    info = machine_report()
    for k, v in info.items():
        print(f"{k:12s} {v}")
    if args.lenet5:
        bench_lenet5_default(rounds1)
        return
    if scipy_sparse is None:
        print("scipy is not installed: the scipy.sparse column is skipped (pip install scipy).")
    t0, busy0 = time.perf_counter(), cpu_busy()
    own0 = sum(os.times()[:2])
    layers = bench_layers(rounds1, rounds64)
    int8 = bench_int8(rounds1, rounds64)
    lenet = bench_lenet(rounds1)
    lenet5 = bench_lenet5_default(rounds1)
    switch = bench_cache()
    load = None
    busy1 = cpu_busy()
    if busy0 and busy1:
        elapsed = time.perf_counter() - t0
        ticks = os.sysconf("SC_CLK_TCK")
        other = (busy1[0] - busy0[0]) / ticks - (sum(os.times()[:2]) - own0)
        load = max(other, 0.0) / (elapsed * (os.cpu_count() or 1))
        print(f"background load from other processes: {load:.0%} of the machine")
    if out_path:
        command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
        env_prefix = " ".join(f"{k}={v}" for k, v in os.environ.items()
                              if k.startswith(("OPENBLAS_", "OMP_", "GOMP_", "NUMBA_NUM")))
        text = markdown(info, layers, int8, lenet, (env_prefix + " " + command).strip(), load, switch, lenet5)
        mode = "a" if args.append else "w"
        with open(out_path, mode) as f:
            f.write(("\n\n" if args.append else "") + text)
        print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
