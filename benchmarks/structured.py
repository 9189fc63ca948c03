"""Structured pruning on Fashion-MNIST: is the shrunk model really smaller and faster, and still accurate?

    python benchmarks/structured.py                       # LeNet-5 and VGG-small, quick settings
    python benchmarks/structured.py --models lenet5 vgg resnet --train 60000 --epochs 8 --finetune 3 --reps 30
    python benchmarks/structured.py ... --save runs/s   # keep the trained models (nn.save) ...
    python benchmarks/structured.py ... --load runs/s   # ... and re-time them later without retraining

For each model: train dense, then for 25/50/75% of the channels removed (L1 norm of
the filters, Li et al. 2017; coupled residual channels as one unit) prune a copy,
``shrink`` it, fine-tune it, and report test accuracy, parameters, MACs per image,
file bytes (``serialize.save_model``), and inference time at batch 1 and batch 256
of the dense, the masked (zeros, same shapes) and the shrunk model. Times are
medians of interleaved runs (dense, masked, shrunk taking turns), so a busy machine
slows all three alike; ratios are dense / shrunk. Seeds are fixed.

Anchors: MIT 6.5940 lab 1 (VGG, CIFAR-10): 30% of channels removed gives 2.0x fewer
MACs and 1.6x lower CPU latency; Torch-Pruning's ResNet-50: 3.85x fewer MACs but only
2.2x faster at batch 64. MACs are not latency.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import numpy as np

import prunekit as pk
from prunekit import serialize
from prunekit.models_vgg import vgg_small
from prunekit.pruning.profile import profile
from prunekit.pruning.structured import prune_structured
from prunekit.pruning.surgery import shrink

MODELS = {
    "lenet5": lambda: pk.models.lenet5(seed=0),
    "vgg": lambda: vgg_small(seed=0),
    "resnet": lambda: pk.models.resnet_small(seed=0),
}


def _train(model, x, y, epochs, lr, schedule="constant"):
    """SGD with momentum 0.9, batch 128; ``schedule="cosine"`` anneals lr to 0 over the epochs."""
    opt = pk.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = pk.optim.CosineAnnealingLR(opt, epochs) if schedule == "cosine" else None
    pk.fit(model, pk.data.DataLoader(x, y, 128, shuffle=True, seed=0), opt, epochs, scheduler=sched, progress=False)


def _times(models, x, reps):
    """Median seconds per forward pass of each model on ``x``, the models taking turns."""
    out = {k: [] for k in models}
    with pk.no_grad():
        for m in models.values():
            m.eval()
            m(x)   # warm-up
        for _ in range(reps):
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                out[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in out.items()}


def _file_bytes(model):
    with tempfile.TemporaryDirectory() as d:
        npz, meta = serialize.save_model(model, os.path.join(d, "m"))
        return os.path.getsize(npz) + os.path.getsize(meta)


def run(name, data, args):
    (x, y), (xt, yt) = data
    store = args.save or args.load
    path = (lambda tag: os.path.join(store, f"{name}_{tag}")) if store else None
    t0 = time.perf_counter()
    schedule = getattr(args, "finetune_schedule", "constant")
    settings = {"train": len(x), "finetune_schedule": schedule, **{k: getattr(args, k) for k in ("epochs", "finetune", "lr")}}
    if args.load:
        model, reference = pk.nn.load(path("dense")), pk.nn.load(path("reference"))
        with open(os.path.join(args.load, f"{name}.json")) as f:
            settings = json.load(f)    # what the models were trained with, not this run's flags
        print(f"\n## {name}: models loaded from {args.load}")
    else:
        model = MODELS[name]()
        _train(model, x, y, args.epochs, args.lr)
        # the fair baseline: the dense model fine-tuned exactly as the shrunk ones are
        reference = copy.deepcopy(model)
        _train(reference, x, y, args.finetune, args.lr / 4, schedule)
    trained_acc = pk.evaluate(model, (xt, yt))["accuracy"]
    dense_acc = pk.evaluate(reference, (xt, yt))["accuracy"]
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        pk.nn.save(model, path("dense"))
        pk.nn.save(reference, path("reference"))
        with open(os.path.join(args.save, f"{name}.json"), "w") as f:
            json.dump(settings, f)
    print(f"\n## {name}: dense test accuracy {trained_acc:.4f} after {settings['epochs']} epochs, {dense_acc:.4f} "
          f"after {settings['finetune']} more at lr/4, {settings.get('finetune_schedule', 'constant')} (the baseline below) ({time.perf_counter() - t0:.0f} s)\n")
    dense_prof = profile(model, (1, 1, 28, 28), repeats=3)
    print("| removed | accuracy (fine-tuned) | Δ points | params | MACs/image | MAC ratio | file bytes "
          "| b1 dense / masked / shrunk (ms) | b1 speed-up | b256 dense / masked / shrunk (ms) | b256 speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| 0% | {dense_acc:.4f} | | {model.num_parameters():,} | {dense_prof.macs:,} | 1.00x | "
          f"{_file_bytes(model):,} | | | | |")
    ex = xt[:1]
    for amount in args.amounts:
        masked = copy.deepcopy(model)
        prune_structured(masked, amount, structure="channel", score="l1", example_input=ex)
        if args.load:
            small = pk.nn.load(path(f"shrunk{amount:g}"))
        else:
            small = shrink(masked, ex)
            _train(small, x, y, args.finetune, args.lr / 4, schedule)
            if args.save:
                pk.nn.save(small, path(f"shrunk{amount:g}"))
        acc = pk.evaluate(small, (xt, yt))["accuracy"]
        # the masked model gets the fine-tuned weights back (same outputs), so the timings compare like with like
        prof = profile(small, (1, 1, 28, 28), repeats=3)
        row = [f"{amount:.0%}", f"{acc:.4f}", f"{100 * (acc - dense_acc):+.2f}", f"{small.num_parameters():,}",
               f"{prof.macs:,}", f"{dense_prof.macs / prof.macs:.2f}x", f"{_file_bytes(small):,}"]
        for batch in (1, 256):
            xb = xt[:batch]
            t = _times({"dense": model, "masked": masked, "shrunk": small}, xb, args.reps if batch == 1 else
                       max(3, args.reps // 4))
            row.append(" / ".join(f"{1e3 * t[k]:.2f}" for k in ("dense", "masked", "shrunk")))
            row.append(f"**{t['dense'] / t['shrunk']:.2f}x**")
        print("| " + " | ".join(row) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "vgg"], choices=sorted(MODELS))
    ap.add_argument("--amounts", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--train", type=int, default=10000, help="training images (60000 = all)")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--finetune", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--finetune-schedule", choices=["constant", "cosine"], default="constant",
                    help="lr/4 held, or annealed to 0 (cosine), while fine-tuning the shrunk models and the baseline")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--save", metavar="DIR", help="write the trained dense and shrunk models here (nn.save)")
    ap.add_argument("--load", metavar="DIR", help="time models written by --save instead of training")
    args = ap.parse_args()
    if args.save and args.load:
        ap.error("--save and --load exclude each other")
    (x, y), (xt, yt) = pk.data.load_fashion_mnist(flatten=False)
    x = x.reshape(-1, 1, 28, 28)[:args.train]
    y = y[:args.train]
    xt, yt = xt.reshape(-1, 1, 28, 28)[:args.test], yt[:args.test]
    print(f"# structured pruning, Fashion-MNIST ({len(x)} train / {len(xt)} test images), L1 filter norms, "
          f"{args.epochs} epochs + {args.finetune} fine-tuning")
    for name in args.models:
        run(name, ((x, y), (xt, yt)), args)


if __name__ == "__main__":
    main()
