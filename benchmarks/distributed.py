"""Distributed training on the simulator: bytes, simulated time and accuracy per compressor.

    python benchmarks/distributed.py                 # 8 simulated workers, LeNet-300-100, Fashion-MNIST, 5 epochs
    python benchmarks/distributed.py --epochs 1 --quick   # a smoke run (fewer configurations, 6,000 samples)
    python benchmarks/distributed.py --only overhead dask  # just the timing parts
    python benchmarks/distributed.py --epochs 15 --only accuracy --runs dense "0.001 +" DGC "rank 2"
    python benchmarks/distributed.py --only accuracy --seeds 3 --encoding gap16+float16 \
        --runs "DGC 0.001 (no" "DGC 0.0008 (no" "rank 2"   # mean, sd and worst loss over 3 seeds

Three parts:

1. ``accuracy``: for no compression, top-k at several ratios with and without error
   feedback, QSGD, DGC and PowerSGD rank 1/2/4: test accuracy, gradient compression
   (dense float32 bytes over each worker's own messages, DGC's measure), traffic reduction
   (a dense ring all-reduce's bytes over the bytes a worker put on the wire, forwarding
   included) and simulated time. Same model seed, same batches, same epochs for every row.
   ``--encoding`` says how top-k and DGC messages become bytes (``gap16+float16``: 4 bytes
   an entry instead of 8). ``--seeds N`` runs every row (dense always included) with seeds
   0 .. N-1 (model initialisation, batch order, compressor randomness) and reports the mean
   and sd of the accuracy and the mean and worst difference to dense at the same seed.
2. ``overhead``: real time of simulating 8 workers vs single-process training on the same
   global batch; interleaved rounds, medians.
3. ``dask``: steps per second of a 2-worker Dask LocalCluster vs the simulator with 2 workers.

Seeds are fixed (``--seeds``); timings depend on the machine and its load (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Run as a script, this file's folder is first on sys.path, and this file's name would hide
# the ``distributed`` package that Dask needs: take the folder off the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import distributed as dist  # noqa: E402

WORKERS = 8
BATCH = 256


def model_fn(seed=0):
    return pk.models.lenet_300_100(seed=seed)


def momentum_sgd(ps):
    return pk.optim.SGD(ps, lr=0.05, momentum=0.9)


def plain_sgd(ps):   # DGC keeps the momentum itself
    return pk.optim.SGD(ps, lr=0.05)


def configurations(steps_per_epoch, quick, encoding="int32+float32", seed=0):
    """(label, compressor, error feedback, optimizer) per accuracy row; fresh compressors each call."""
    enc = "" if encoding == "int32+float32" else f", {encoding}"
    rows = [("dense (ring all-reduce)", None, False, momentum_sgd)]
    ratios = (0.01, 0.001) if quick else (0.01, 0.001, 0.0003)
    for r in ratios:
        rows.append((f"top-k {r:g}, no EF{enc}", dist.TopK(r, encoding=encoding), False, momentum_sgd))
        rows.append((f"top-k {r:g} + EF{enc}", dist.TopK(r, encoding=encoding), True, momentum_sgd))
    # QSGD is unbiased but not a contraction (its error can exceed the gradient), so error
    # feedback makes it diverge here; it is used as the paper does, without.
    rows.append(("QSGD 4 levels, buckets of 512", dist.QSGD(4, seed=seed), False, momentum_sgd))
    for r in ((0.001,) if quick else (0.001, 0.0008, 0.0003)):
        for label, warm in (("warm-up 1 epoch", steps_per_epoch), ("warm-up 1/4 epoch", steps_per_epoch // 4),
                            ("no warm-up", 0)):
            rows.append((f"DGC {r:g} ({label}){enc}", dist.DGC(r, momentum=0.9, warmup_steps=warm,
                                                                 encoding=encoding), False, plain_sgd))
    for rank in ((2,) if quick else (1, 2, 4)):
        rows.append((f"PowerSGD rank {rank}", dist.PowerSGD(rank, seed=seed), False, momentum_sgd))
    return rows


def seed_summary(accs, dense_accs):
    """Mean and sd (n - 1) of ``accs``, and the mean and worst (lowest) of ``accs - dense_accs``
    seed by seed, the differences in points. One seed: sd 0, worst = mean."""
    a, d = np.asarray(accs, dtype=np.float64), np.asarray(dense_accs, dtype=np.float64)
    if a.ndim != 1 or a.shape != d.shape or a.size == 0:
        raise ValueError(f"seed_summary(): accs and dense_accs must be equally long 1-d lists, got {a.shape} "
                         f"and {d.shape}.")
    diff = 100 * (a - d)
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return float(a.mean()), sd, float(diff.mean()), float(diff.min())


def accuracy_part(data, test, epochs, quick, runs=None, seeds=1, encoding="int32+float32"):
    x, y = data
    steps = -(-len(x) // BATCH)
    print(f"\n{WORKERS} simulated workers, LeNet-300-100, global batch {BATCH}, {epochs} epochs, "
          f"{len(x):,} training images, seeds 0..{seeds - 1}, sparse messages {encoding}")
    print("| run | test accuracy (mean ± sd) | vs dense (mean) | vs dense (worst seed) | gradient compression "
          "| traffic vs dense ring | simulated time (s) | real time (s) | vs dense, seed by seed (pt) |")
    print("|---|---|---|---|---|---|---|---|---|")
    labels = [label for label, *_ in configurations(steps, quick, encoding)]
    dense_accs = None
    for i, label in enumerate(labels):
        if i > 0 and runs and not any(r in label for r in runs):    # dense always runs: the reference
            continue
        accs, runs_ = [], []
        for seed in range(seeds):
            _, comp, ef, opt = configurations(steps, quick, encoding, seed)[i]
            trainer = dist.DataParallelTrainer(lambda: model_fn(seed), opt, dist.Cluster(WORKERS), compressor=comp,
                                               error_feedback=ef)
            runs_.append(trainer.fit(pk.data.DataLoader(x, y, BATCH, shuffle=True, seed=seed), epochs=epochs))
            accs.append(pk.evaluate(trainer.model, test)["accuracy"])
        dense_accs = accs if dense_accs is None else dense_accs
        mean, sd, diff, worst = seed_summary(accs, dense_accs)
        comp = statistics.mean(r.compression for r in runs_)
        traffic = statistics.mean(r.traffic_reduction for r in runs_)
        print(f"| {label} | {mean:.4f} ± {sd:.4f} | {diff:+.2f} pt | {worst:+.2f} pt | {comp:,.0f}x | {traffic:,.0f}x "
              f"| {statistics.mean(r.wall_time_s for r in runs_):.3f} "
              f"| {statistics.mean(r.real_time_s for r in runs_):.1f} "
              f"| {' '.join(f'{100 * (a - d):+.2f}' for a, d in zip(accs, dense_accs))} |", flush=True)


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def overhead_part(data, rounds, steps, encoding="int32+float32"):
    x, y = data[0][:steps * BATCH], data[1][:steps * BATCH]

    def single():
        m = model_fn()
        pk.fit(m, pk.data.DataLoader(x, y, BATCH), momentum_sgd(m.parameters()), epochs=1, progress=False)

    def sim(fuse, comp=None, ef=False, opt=momentum_sgd, group="auto"):
        def run():
            t = dist.DataParallelTrainer(model_fn, opt, dist.Cluster(WORKERS), fuse_shards=fuse, group_shards=group,
                                         compressor=comp() if comp else None, error_feedback=ef)
            t.fit((x, y), epochs=1, batch_size=BATCH)
        return run

    def topk():
        return dist.TopK(0.001, encoding=encoding)

    def dgc():
        return dist.DGC(0.001, encoding=encoding)

    enc = "" if encoding == "int32+float32" else f", {encoding}"
    candidates = {"single process": single, "8 workers (fused shards)": sim("auto"),
                  "8 workers (shard by shard)": sim(False, group=False),
                  "8 workers (grouped)": sim(False)}
    for path, group in (("shard by shard", False), ("grouped", "auto")):
        candidates[f"8 workers, top-k 0.001 + EF{enc} ({path})"] = sim(False, topk, True, group=group)
        candidates[f"8 workers, DGC 0.001{enc} ({path})"] = sim(False, dgc, opt=plain_sgd, group=group)
        candidates[f"8 workers, PowerSGD rank 2 ({path})"] = sim(False, lambda: dist.PowerSGD(2), group=group)
    times = {k: [] for k in candidates}
    for fn in candidates.values():
        fn()   # warm-up (numba compilation, caches)
    order = list(candidates)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            times[k].append(_time(candidates[k]))
    base = statistics.median(times["single process"])
    print(f"\nsimulator overhead: {steps} steps of global batch {BATCH}, {rounds} interleaved rounds, medians")
    print("| run | time per step | vs single process |")
    print("|---|---|---|")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"| {k} | {1e3 * med / steps:.2f} ms | {med / base:.2f}x |")


def dask_part(data, steps):
    x, y = data[0][:steps * 64], data[1][:steps * 64]
    sim = dist.DataParallelTrainer(model_fn, momentum_sgd, dist.Cluster(2), fuse_shards=False, group_shards=False)
    t_sim = _time(lambda: sim.fit((x, y), batch_size=64))
    with dist.DaskBackend(n_workers=2) as backend:
        print(f"\nDask dashboard: {backend.dashboard_link}")
        warm = dist.DataParallelTrainer(model_fn, momentum_sgd, dist.Cluster(2), backend=backend)
        warm.fit((x[:128], y[:128]), batch_size=64)
        real = dist.DataParallelTrainer(model_fn, momentum_sgd, dist.Cluster(2), backend=backend)
        t_dask = _time(lambda: real.fit((x, y), batch_size=64))
    same = all(np.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(sim.model.state_dict().values(), real.model.state_dict().values()))
    print(f"| 2 workers, batch 64, {steps} steps | steps per second | |")
    print("|---|---|---|")
    print(f"| simulator (shard by shard) | {steps / t_sim:.1f} | |")
    print(f"| Dask LocalCluster (2 processes) | {steps / t_dask:.1f} | weights equal to the simulator's: {same} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="fewer configurations on 6,000 training images")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the overhead timing")
    p.add_argument("--runs", nargs="*", help="only the accuracy rows whose label contains one of these")
    p.add_argument("--only", nargs="*", choices=("accuracy", "overhead", "dask"),
                   default=("accuracy", "overhead", "dask"))
    p.add_argument("--seeds", type=int, default=1, help="accuracy rows over seeds 0 .. N-1 (mean, sd, worst)")
    p.add_argument("--encoding", default="int32+float32", choices=dist.available_encodings(),
                   help="how top-k and DGC messages become bytes")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1 or args.seeds < 1:
        p.error("--epochs, --rounds and --seeds must be at least 1")
    (x, y), (xt, yt) = pk.data.load_fashion_mnist()
    if args.quick:
        x, y, xt, yt = x[:6000], y[:6000], xt[:2000], yt[:2000]
    if "accuracy" in args.only:
        accuracy_part((x, y), (xt, yt), args.epochs, args.quick, args.runs, args.seeds, args.encoding)
    if "overhead" in args.only:
        overhead_part((x, y), args.rounds, steps=20 if args.quick else 40, encoding=args.encoding)
    if "dask" in args.only:
        dask_part((x, y), steps=10 if args.quick else 40)


if __name__ == "__main__":
    main()
