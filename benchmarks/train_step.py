"""Time one SGD training step (forward, backward, update) of prunekit against PyTorch CPU.

    python benchmarks/train_step.py [--reps 200] [--batch 128] [--threads N] [--block 32] [--settle 0.25]

Both frameworks get the same model, the same initial weights, the same batch and
the same number of threads. Each framework runs in its own worker process (two
OpenMP runtimes in one process share, and fight over, one thread pool); the parent
makes them take turns in short blocks, so both see the same machine load, and
compares the medians. Between blocks the parent waits ``--settle`` seconds: thread
pools keep spinning after their last job (OpenBLAS for about 0.1 s), and without the
pause the next block would share the cores with the other framework's spinning
threads. The first step of each block, which pays for the hand-over, is not
counted. Prints one line per model with the ratio prunekit / torch (below 1 means
prunekit is faster), after checking that both start from the same loss.
prunekit runs on its default (numba) backend; ``PRUNEKIT_BACKEND=numpy`` times its
NumPy references instead (the backend is printed with the versions).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

MODELS = ("lenet_300_100", "lenet5")


def _inputs(model_name, batch):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (batch, 784) if model_name == "lenet_300_100" else (batch, 1, 28, 28)
    return rng.random(shape, dtype=np.float32), rng.integers(0, 10, batch).astype(np.int64)


def _prunekit_step(model_name, batch, lr=0.01, momentum=0.9):
    import prunekit as pk
    from prunekit import functional as F

    model = getattr(pk.models, model_name)(seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x, y = _inputs(model_name, batch)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(pk.Tensor(x)), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def torch_twin(pk_model):
    """The same architecture in PyTorch (a ``torch.nn.Sequential``), with ``pk_model``'s weights copied in."""
    import prunekit as pk
    import torch

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
    model = tnn.Sequential(*layers)
    with torch.no_grad():
        for (_, p), tp in zip(pk_model.named_parameters(), model.parameters()):
            tp.copy_(torch.from_numpy(p.data.copy()))
    return model


def _torch_step(model_name, batch, lr=0.01, momentum=0.9):
    """The same architecture in PyTorch, with prunekit's initial weights copied in."""
    import prunekit as pk
    import torch

    tnn = torch.nn
    model = torch_twin(getattr(pk.models, model_name)(seed=0))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x, y = (torch.from_numpy(a) for a in _inputs(model_name, batch))
    loss_fn = tnn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def worker(framework, model_name, batch, threads):
    """Read 'N' lines on stdin, run N steps, answer with their times (JSON); 'info' describes the worker."""
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        step = _torch_step(model_name, batch)
        info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    else:
        import numpy as np
        import prunekit as pk

        step = _prunekit_step(model_name, batch)
        info = {"numpy": np.__version__, "backend": pk.get_backend(), "threads": threads}
        if pk.get_backend() == "numba":  # under PRUNEKIT_BACKEND=numpy, numba stays unimported
            import numba

            info.update(numba=numba.__version__, threads=numba.config.NUMBA_NUM_THREADS)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "info":
            out = info
        elif cmd == "loss":
            out = step()
        else:
            times = []
            for _ in range(int(cmd)):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            out = times
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self, framework, model_name, batch, threads):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", framework, "--model", model_name,
             "--batch", str(batch), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, cmd):
        self.proc.stdin.write(f"{cmd}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker died; see its error above")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def timed_steps(reps, block):
    """Steps actually timed for ``reps`` asked: whole turns of ``block`` steps, the first of each dropped."""
    return max(1, -(-reps // (block - 1))) * (block - 1)


def bench(model_name, batch, threads, reps, block=32, settle=0.25):
    import numpy as np

    pk_w, t_w = Worker("prunekit", model_name, batch, threads), Worker("torch", model_name, batch, threads)
    try:
        info = {**t_w.ask("info"), **{k: v for k, v in pk_w.ask("info").items() if k != "threads"}}
        first_pk, first_t = pk_w.ask("loss"), t_w.ask("loss")
        if abs(first_pk - first_t) > 1e-3 * max(1.0, abs(first_t)):
            raise AssertionError(f"{model_name}: the two models differ (first loss {first_pk} vs {first_t})")
        pk_w.ask(10), t_w.ask(10)  # warm up: numba compilation, allocators, caches
        tp, tt = [], []
        for _ in range(timed_steps(reps, block) // (block - 1)):
            time.sleep(settle)  # the other worker's threads stop spinning
            tp += pk_w.ask(block)[1:]
            time.sleep(settle)
            tt += t_w.ask(block)[1:]
    finally:
        pk_w.close(), t_w.close()
    mp, mt = np.median(tp) * 1e3, np.median(tt) * 1e3
    return info, mp, mt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="timed steps per framework and model")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for BLAS, numba and torch alike (default: all cores)")
    ap.add_argument("--block", type=int, default=32,
                    help="steps per turn (the first is not counted; short turns never reach the steady state)")
    ap.add_argument("--settle", type=float, default=0.25,
                    help="seconds to wait between blocks, so that no thread pool still spins (default 0.25)")
    ap.add_argument("--worker", choices=("prunekit", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.block < 2:
        ap.error(f"--block must be at least 2 (the first step of each turn is not counted), got {args.block}")
    if args.settle < 0 or args.reps < 1:
        ap.error("--settle must be >= 0 and --reps >= 1")
    if args.worker:
        return worker(args.worker, args.model, args.batch, args.threads)
    try:
        import torch  # noqa: F401
    except ImportError:  # torch is only in the `bench` extra
        print("train_step.py: PyTorch is not installed (pip install -e '.[bench]'); skipping.")
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; batch {args.batch}; "
          f"{args.threads} thread(s) per framework; medians of {timed_steps(args.reps, args.block)} steps; "
          f"turns of {args.block} steps, {args.settle} s apart")
    for name in MODELS:
        info, mp, mt = bench(name, args.batch, args.threads, args.reps, block=args.block, settle=args.settle)
        print(f"{name:<16} prunekit {mp:8.3f} ms   torch {mt:8.3f} ms   ratio {mp / mt:5.2f}x")
    print(f"versions: {info}")


if __name__ == "__main__":
    main()
