"""Distributed training on the simulator: bytes, simulated time and accuracy per compressor.

    python benchmarks/distributed.py                 # 8 simulated workers, LeNet-300-100, Fashion-MNIST, 5 epochs
    python benchmarks/distributed.py --epochs 1 --quick   # a smoke run (fewer configurations, 6,000 samples)
    python benchmarks/distributed.py --only overhead dask  # just the timing parts
    python benchmarks/distributed.py --epochs 15 --only accuracy --runs dense "0.001 +" DGC "rank 2"
    python benchmarks/distributed.py --only accuracy --seeds 3 --encoding gap16+float16 \
        --runs "DGC 0.001 (no" "DGC 0.0008 (no" "rank 2"   # mean, sd and worst loss over 3 seeds
    python benchmarks/distributed.py --only accuracy --val --seeds 5 --encoding gap16+float16 \
        --dgc ratio=0.0008 ratio=0.0008,scope=tensor   # tuning: held-out validation images, seeds 0-4
    python benchmarks/distributed.py --only accuracy --seeds 10 --seed-offset 100 --encoding gap16+float16 \
        --dgc ratio=0.0008,scope=tensor               # the report: test set, fresh seeds 100-109
    python benchmarks/distributed.py --only accuracy --val --seeds 5 --encoding gap16+float16 --schedule cosine \
        --runs "rank 2" --dgc ratio=0.0008 ratio=0.0008,nesterov=true   # lr decayed to 0 (cosine, per step)
    python benchmarks/distributed.py --only accuracy --seeds 10 --seed-offset 500 --epochs 10 --schedule cosine \
        --encoding gap16+float16 --dgc ratio=0.002,momentum_masking=false,scale_by_lr=true   # #11's DGC report

Three parts:

1. ``accuracy``: for no compression, top-k at several ratios with and without error
   feedback, QSGD, DGC and PowerSGD rank 1/2/4: test accuracy, gradient compression
   (dense float32 bytes over each worker's own messages, DGC's measure), traffic reduction
   (a dense ring all-reduce's bytes over the bytes a worker put on the wire, forwarding
   included) and simulated time. Same model seed, same batches, same epochs for every row.
   ``--encoding`` says how top-k and DGC messages become bytes (``gap16+float16``: 4 bytes
   an entry instead of 8). ``--seeds N`` runs every row (dense always included) with seeds
   0 .. N-1 (model initialisation, batch order, compressor randomness) and reports the mean
   and sd of the accuracy and the mean (± standard error), worst and count below dense of the
   difference to dense at the same seed; ``--seed-offset S`` starts the seeds at S (fresh seeds
   for a report after tuning). ``--val`` trains on the first 50,000 training images and scores
   on the last 10,000, so settings can be tuned without looking at the test set. ``--dgc SPEC``
   adds DGC rows built from ``key=value`` lists (see :func:`parse_dgc`). The traffic column is the
   worst (lowest) over the seeds. ``--schedule cosine`` decays the learning rate from 0.05 to 0
   over the run, step by step, for every row alike (default ``constant``: 0.05 throughout).
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


SCHEDULES = ("constant", "cosine")


class PerStepLR(pk.train.Callback):
    """Steps a :class:`prunekit.optim.LRScheduler` after every optimizer step (batch), not every epoch.

    ``make``: ``optimizer -> LRScheduler``, called at the start of training with the trainer's optimizer.
    """

    def __init__(self, make):
        self.make = make
        self.scheduler = None

    def on_train_begin(self, state):
        self.scheduler = self.make(state.optimizer)

    def on_batch_end(self, state):
        self.scheduler.step()


def lr_callbacks(schedule, total_steps):
    """Callbacks that apply ``schedule`` over a run of ``total_steps`` optimizer steps.

    ``"constant"``: none (lr 0.05 throughout). ``"cosine"``: per step, lr = 0.05 (1 + cos(pi t / T)) / 2
    at step t = 0 .. T - 1 with T = ``total_steps`` (:class:`prunekit.optim.CosineAnnealingLR`), reaching 0
    after the last step. The rate scales what the optimizer applies, so for DGC (plain SGD on the summed
    sparse messages) it multiplies the sent update exactly as it multiplies the dense one.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_callbacks(): schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"lr_callbacks(): total_steps must be an int >= 1, got {total_steps!r}.")
    if schedule == "constant":
        return []
    return [PerStepLR(lambda opt: pk.optim.CosineAnnealingLR(opt, T_max=total_steps))]


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


def _bool(v):
    return {"1": True, "true": True, "0": False, "false": False}[v.lower()]


DGC_KEYS = {"ratio": float, "momentum": float, "clip_norm": float, "warmup_epochs": float, "scope": str,
            "nesterov": _bool, "momentum_masking": _bool, "scale_by_lr": _bool, "opt_momentum": float}


def parse_dgc(spec, steps_per_epoch, encoding="int32+float32"):
    """A ``--dgc`` row from ``"key=value,..."``: (label, compressor, optimizer).

    Keys: ratio, momentum (DGC's own), clip_norm, warmup_epochs (converted to steps),
    scope ("global" or "tensor"), nesterov, momentum_masking and scale_by_lr (true/false) and opt_momentum
    (the optimizer's, default 0: DGC keeps the momentum itself). E.g. ``ratio=0.0008,scope=tensor,clip_norm=1``.
    """
    args = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in DGC_KEYS:
            raise ValueError(f"--dgc: expected key=value items with keys {sorted(DGC_KEYS)}, got {item!r} in {spec!r}.")
        try:
            args[key] = DGC_KEYS[key](value)
        except (KeyError, ValueError):
            raise ValueError(f"--dgc: {key}={value!r} in {spec!r} is not a valid {key}.") from None
    opt_m = args.pop("opt_momentum", 0.0)
    warm = args.pop("warmup_epochs", 0.0)
    comp = dist.DGC(**{"ratio": 0.001, **args}, warmup_steps=int(round(warm * steps_per_epoch)), encoding=encoding)
    label = f"DGC {spec}" + ("" if encoding == "int32+float32" else f", {encoding}")
    return label, comp, (lambda ps: pk.optim.SGD(ps, lr=0.05, momentum=opt_m)) if opt_m else plain_sgd


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


def standard_error(accs, dense_accs):
    """Standard error (points) of the mean seed-by-seed difference ``accs - dense_accs``; 0 for one seed."""
    diff = 100 * (np.asarray(accs, dtype=np.float64) - np.asarray(dense_accs, dtype=np.float64))
    return float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0


def accuracy_part(data, test, epochs, quick, runs=None, seeds=1, encoding="int32+float32", seed_offset=0,
                  dgc_specs=(), scored_on="test", schedule="constant"):
    x, y = data
    steps = -(-len(x) // BATCH)
    seed_list = range(seed_offset, seed_offset + seeds)
    print(f"\n{WORKERS} simulated workers, LeNet-300-100, global batch {BATCH}, {epochs} epochs, "
          f"{len(x):,} training images, {len(test[0]):,} {scored_on} images, seeds {seed_list[0]}..{seed_list[-1]}, "
          f"sparse messages {encoding}, lr 0.05 {'constant' if schedule == 'constant' else schedule + ' to 0 per step'}")
    print(f"| run | {scored_on} accuracy (mean ± sd) | vs dense (mean ± s.e.) | vs dense (worst seed) | below dense "
          "| gradient compression | traffic vs dense ring | simulated time (s) | real time (s) "
          "| vs dense, seed by seed (pt) |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def rows(seed):
        fixed = configurations(steps, quick, encoding, seed)
        extra = [(label, comp, False, opt) for label, comp, opt in (parse_dgc(s, steps, encoding) for s in dgc_specs)]
        return fixed + extra

    labels = [label for label, *_ in rows(0)]
    n_fixed = len(labels) - len(dgc_specs)
    dense_accs = None
    for i, label in enumerate(labels):
        chosen = any(r in label for r in runs) if runs else not dgc_specs
        if i > 0 and i < n_fixed and not chosen:    # dense always runs: the reference; --dgc rows always
            continue
        accs, runs_ = [], []
        for seed in seed_list:
            _, comp, ef, opt = rows(seed)[i]
            trainer = dist.DataParallelTrainer(lambda: model_fn(seed), opt, dist.Cluster(WORKERS), compressor=comp,
                                               error_feedback=ef)
            runs_.append(trainer.fit(pk.data.DataLoader(x, y, BATCH, shuffle=True, seed=seed), epochs=epochs,
                                     callbacks=lr_callbacks(schedule, epochs * steps)))
            accs.append(pk.evaluate(trainer.model, test)["accuracy"])
        dense_accs = accs if dense_accs is None else dense_accs
        mean, sd, diff, worst = seed_summary(accs, dense_accs)
        se = standard_error(accs, dense_accs)
        below = sum(a < d for a, d in zip(accs, dense_accs))
        comp = statistics.mean(r.compression for r in runs_)
        traffic = min(r.traffic_reduction for r in runs_)
        print(f"| {label} | {mean:.4f} ± {sd:.4f} | {diff:+.2f} ± {se:.2f} pt | {worst:+.2f} pt | {below} of {len(accs)} "
              f"| {comp:,.0f}x | {traffic:,.1f}x "
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
    p.add_argument("--seeds", type=int, default=1,
                   help="accuracy rows over N seeds, --seed-offset .. --seed-offset + N - 1 (mean, sd, worst)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="first seed (default 0); report runs use fresh seeds, e.g. --seed-offset 100")
    p.add_argument("--val", action="store_true",
                   help="tune without the test set: train on the first 50,000 training images and score on the "
                        "last 10,000 (held out); the test images are not used")
    p.add_argument("--dgc", nargs="*", default=(), metavar="SPEC",
                   help="extra DGC rows, each 'key=value,...' with keys ratio, momentum, clip_norm, "
                        "warmup_epochs, scope (global|tensor), nesterov, momentum_masking, scale_by_lr (true|false), "
                        "opt_momentum; e.g. 'ratio=0.0008,scope=tensor'. "
                        "With --dgc only dense and these rows run, unless --runs names more")
    p.add_argument("--schedule", default="constant", choices=SCHEDULES,
                   help="learning rate of the accuracy rows, the same for every row: constant 0.05 (default), or "
                        "cosine from 0.05 to 0 over the whole run, updated after every step (batch)")
    p.add_argument("--encoding", default="int32+float32", choices=dist.available_encodings(),
                   help="how top-k and DGC messages become bytes")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1 or args.seeds < 1:
        p.error("--epochs, --rounds and --seeds must be at least 1")
    if args.seed_offset < 0:
        p.error("--seed-offset must be at least 0")
    for spec in args.dgc:
        try:
            parse_dgc(spec, 1)
        except (ValueError, TypeError) as e:
            p.error(str(e))
    (x, y), (xt, yt) = pk.data.load_fashion_mnist()
    scored_on = "test"
    if args.val:     # the last 10,000 training images stand in for the test set
        x, y, xt, yt = x[:50_000], y[:50_000], x[50_000:], y[50_000:]
        scored_on = "validation"
    if args.quick:
        x, y, xt, yt = x[:6000], y[:6000], xt[:2000], yt[:2000]
    if "accuracy" in args.only:
        accuracy_part((x, y), (xt, yt), args.epochs, args.quick, args.runs, args.seeds, args.encoding,
                      args.seed_offset, args.dgc, scored_on, args.schedule)
    if "overhead" in args.only:
        overhead_part((x, y), args.rounds, steps=20 if args.quick else 40, encoding=args.encoding)
    if "dask" in args.only:
        dask_part((x, y), steps=10 if args.quick else 40)


if __name__ == "__main__":
    main()
