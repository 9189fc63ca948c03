"""Time one SGD training step (forward, backward, update) of prunekit against PyTorch CPU.

    python benchmarks/train_step.py [--reps 200] [--batch 128] [--threads N]

Both frameworks get the same model, the same initial weights, the same batch and
the same number of threads. Steps are interleaved in short blocks (prunekit, torch, prunekit, ...)
so that both see the same machine load, and the medians are compared. Prints one
line per model with the ratio prunekit / torch (below 1 means prunekit is faster).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def _threads_from_argv(default=None):
    """--threads must be known before NumPy starts its BLAS thread pool."""
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return default


_T = _threads_from_argv()
if _T:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = _T

import numpy as np  # noqa: E402

import prunekit as pk
from prunekit import functional as F

try:
    import torch
except ImportError:  # torch is only in the `bench` extra
    torch = None


def torch_model(pk_model):
    """The same architecture in PyTorch, with prunekit's weights copied in."""
    tnn = torch.nn
    layers = []
    for m in pk_model:
        if isinstance(m, pk.nn.Linear):
            layers.append(tnn.Linear(m.in_features, m.out_features))
        elif isinstance(m, pk.nn.Conv2d):
            layers.append(tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
        elif isinstance(m, pk.nn.ReLU):
            layers.append(tnn.ReLU())
        elif isinstance(m, pk.nn.MaxPool2d):
            layers.append(tnn.MaxPool2d(m.kernel_size, m.stride))
        elif isinstance(m, pk.nn.Flatten):
            layers.append(tnn.Flatten())
        else:
            raise TypeError(f"no torch twin for {type(m).__name__}")
    tm = tnn.Sequential(*layers)
    with torch.no_grad():
        for (_, p), tp in zip(pk_model.named_parameters(), tm.parameters()):
            tp.copy_(torch.from_numpy(p.data.copy()))
    return tm


def bench(name, model, x, y, reps, lr=0.01, momentum=0.9):
    opt = pk.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    tmodel = torch_model(model)
    topt = torch.optim.SGD(tmodel.parameters(), lr=lr, momentum=momentum)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    tloss = torch.nn.CrossEntropyLoss()

    def pk_step():
        opt.zero_grad()
        loss = F.cross_entropy(model(pk.Tensor(x)), y)
        loss.backward()
        opt.step()
        return loss.item()

    def torch_step():
        topt.zero_grad()
        loss = tloss(tmodel(tx), ty)
        loss.backward()
        topt.step()
        return loss.item()

    # same starting loss: the two models really are the same
    first_pk, first_t = pk_step(), torch_step()
    assert abs(first_pk - first_t) < 1e-3 * max(1.0, abs(first_t)), (first_pk, first_t)
    for _ in range(10):  # warm up (numba compilation, allocator, caches)
        pk_step(), torch_step()
    # Interleave in short blocks: a few steps of one framework, then of the other. Step-by-step
    # alternation would make each pay for the other's idle worker threads still spinning on
    # the two cores; the first step of each block absorbs that hand-over and is not counted.
    tp, tt = [], []
    block = 8
    for _ in range(max(1, reps // (block - 1))):
        for step, times in ((pk_step, tp), (torch_step, tt)):
            for i in range(block):
                t0 = time.perf_counter()
                step()
                if i:
                    times.append(time.perf_counter() - t0)
    mp, mt = np.median(tp) * 1e3, np.median(tt) * 1e3
    print(f"{name:<16} prunekit {mp:8.3f} ms   torch {mt:8.3f} ms   ratio {mp / mt:5.2f}x")
    return mp, mt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS, numba and torch alike (default: all cores)")
    args = ap.parse_args()
    if torch is None:
        print("train_step.py: PyTorch is not installed (pip install -e '.[bench]'); skipping.")
        return
    import numba

    threads = numba.config.NUMBA_NUM_THREADS
    torch.set_num_threads(threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; threads: numba {threads}, "
          f"torch {torch.get_num_threads()}; numpy {np.__version__}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    b = args.batch
    y = rng.integers(0, 10, b).astype(np.int64)
    bench("lenet_300_100", pk.models.lenet_300_100(seed=0), rng.random((b, 784), dtype=np.float32), y, args.reps)
    bench("lenet5", pk.models.lenet5(seed=0), rng.random((b, 1, 28, 28), dtype=np.float32), y, args.reps)


if __name__ == "__main__":
    main()
