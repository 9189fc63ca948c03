"""Deep Compression on Fashion-MNIST: accuracy, bytes on disk, ratio and batch-1 latency per stage.

    python benchmarks/compression.py                  # LeNet-300-100 and LeNet-5, the default recipe
    python benchmarks/compression.py --model lenet300 # one model (lenet300, lenet5, lenet5_aggressive)
    python benchmarks/compression.py --quick          # a tiny run (seconds) that checks the pipeline

Stages (Han, Mao & Dally 2016): dense float32 -> iterative magnitude pruning with
fine-tuning -> k-means weight sharing with centroid fine-tuning -> Huffman coding.
Every "bytes on disk" figure is the size of a file actually written
(``nn.save`` for the dense model, ``quant.save_compressed`` for the pruned and the
compressed ones), every overhead included (indices, codebooks, code tables,
biases, zip and manifest); the ratio is against the dense file. The compressed
model's accuracy and latency are measured on the model read back from its file
(weights decoded once with ``quant.unshare``); "batch-1 sparse" runs the pruned
layers on prunekit's sparse kernels (``sparse.to_sparse(model, "auto")``). Rows for int8 post-training quantization and 4-bit QAT
are left as hooks (``EXTRA_STAGES``) for the affine-quantization part of issue 12.

Anchors (Han et al. 2016, MNIST): LeNet-300-100 40x (1070 KB -> 27 KB, error
1.64% -> 1.58%), LeNet-5 39x (1720 KB -> 44 KB, error 0.80% -> 0.74%).
Seeds are fixed; a rerun on the same machine gives the same accuracies and bytes.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

import prunekit as pk
from prunekit import quant
from prunekit import pruning as P

# Recipes: per-layer target sparsity (Han et al. 2015 prune the first layers hardest),
# k-means bits per layer, epochs per stage.
RECIPES = {
    "lenet300": {
        "build": pk.models.lenet_300_100, "flatten": True,
        "sparsity": {"0.weight": 0.93, "2.weight": 0.88, "4.weight": 0.6},
        "bits": {"0": 4, "2": 5, "4": 5},
        "train_epochs": 12, "prune_rounds": 4, "prune_epochs": 3, "share_epochs": 2,
    },
    "lenet5": {
        "build": pk.models.lenet5, "flatten": False,
        "sparsity": {"0.weight": 0.4, "3.weight": 0.8, "7.weight": 0.93, "9.weight": 0.88, "11.weight": 0.6},
        "bits": {"0": 8, "3": 8, "7": 4, "9": 5, "11": 5},
        "train_epochs": 8, "prune_rounds": 3, "prune_epochs": 2, "share_epochs": 2,
    },
    "lenet5_aggressive": {
        "build": pk.models.lenet5, "flatten": False,
        "sparsity": {"0.weight": 0.5, "3.weight": 0.85, "7.weight": 0.95, "9.weight": 0.9, "11.weight": 0.7},
        "bits": {"0": 5, "3": 6, "7": 4, "9": 4, "11": 5},
        "train_epochs": 8, "prune_rounds": 3, "prune_epochs": 2, "share_epochs": 2,
    },
}
"""Per-layer target sparsity (the first, largest layers pruned hardest, as Han et al. 2015 do),
k-means bits per layer (the paper: 8 for conv, 5 for fully-connected; 4 for the 784x300
layer here), and epochs: dense training (SGD 0.05, momentum 0.9, cosine), each round of
iterative pruning (SGD 0.01, cosine), centroid fine-tuning (SGD 1e-4, momentum 0.9: a
centroid's gradient sums over every weight that shares it, so its step is that much larger).
"lenet5_aggressive" prunes harder and gives the small conv layers 5-6-bit codebooks
(a 256-entry codebook costs 1 KB, more than the 75 weights of the first conv): smaller,
but it loses more accuracy (see BENCHMARKS_compression.md)."""

EXTRA_STAGES = {}
"""Hooks for more rows: ``name -> fn(dense_model, train, test) -> (model, bytes_on_disk)`` (int8 PTQ, QAT 4-bit)."""


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def accuracy(model, test):
    return pk.evaluate(model, test)["accuracy"]


def latency_batch1(model, x, repeats=200):
    """Median seconds of one forward pass on a single sample (no autograd graph)."""
    model.eval()
    times = []
    with pk.no_grad():
        for i in range(repeats):
            xi = x[i % len(x)][None]
            t = time.perf_counter()
            model(pk.Tensor(xi))
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def file_bytes(write):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.npz")
        write(path)
        return os.path.getsize(path)


def deep_compression(name, recipe, train, test, log=print):
    """Run the recipe; return a list of (stage, model, accuracy, bytes on disk) and the final report."""
    loader = pk.data.DataLoader(*train, 128, shuffle=True, seed=0)
    model = recipe["build"](seed=0)
    sgd = lambda params, lr: pk.optim.SGD(params, lr=lr, momentum=0.9)  # noqa: E731
    opt = sgd(model.parameters(), 0.05)
    sched = pk.optim.CosineAnnealingLR(opt, recipe["train_epochs"])
    t0 = time.perf_counter()
    pk.fit(model, loader, opt, recipe["train_epochs"], scheduler=sched, progress=False)
    rows = [("dense float32", accuracy(model, test), file_bytes(lambda p: pk.nn.save(model, p)), model)]
    dense_state = model.state_dict()
    log(f"{name}: dense {rows[0][1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    dense = recipe["build"](seed=0)
    dense.load_state_dict(dense_state)
    rows[0] = rows[0][:3] + (dense,)

    targets = recipe["sparsity"]
    steps = recipe["prune_rounds"]
    for i in range(1, steps + 1):          # geometric schedule per layer (Han et al. 2015, iterative)
        P.prune_to(model, {k: 1 - (1 - s) ** (i / steps) for k, s in targets.items()})
        opt = sgd(model.parameters(), 0.01)
        pk.fit(model, loader, opt, recipe["prune_epochs"],
               scheduler=pk.optim.CosineAnnealingLR(opt, recipe["prune_epochs"]), progress=False)
        log(f"  prune round {i}: sparsity {P.sparsity(model).total:.3f}, acc {accuracy(model, test):.4f}")
    pruned = recipe["build"](seed=0)
    pruned.load_state_dict(model.state_dict())
    rows.append(("pruned (float32 values + Huffman relative indices)", accuracy(model, test),
                 file_bytes(lambda p: quant.save_compressed(model, p)), pruned))

    quant.share_weights(model, recipe["bits"])
    acc_shared = accuracy(model, test)
    pk.fit(model, loader, sgd(quant.codebooks(model), 1e-4), recipe["share_epochs"], progress=False)
    log(f"  k-means: {acc_shared:.4f} before centroid fine-tuning, {accuracy(model, test):.4f} after")
    report = quant.compression_report(model)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.npz")
        quant.save_compressed(model, path)
        size = os.path.getsize(path)
        loaded = quant.load_compressed(path)          # what a user deploys: the file, read back
    assert size == report.bytes["file"], (size, report.bytes["file"])
    quant.unshare(loaded)                             # decode the weights once, then run plain layers
    rows.append(("pruned + k-means + Huffman (compressed file)", accuracy(loaded, test), size, loaded))
    log(f"  total {time.perf_counter() - t0:.0f} s")
    return rows, report, model


def run(names, quick=False):
    train, test = pk.data.load_fashion_mnist(flatten=True)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); numpy {np.__version__}; prunekit {pk.__version__}")
    for name in names:
        recipe = dict(RECIPES[name])
        tr, te = train, test
        if not recipe["flatten"]:
            tr = (train[0].reshape(-1, 1, 28, 28), train[1])
            te = (test[0].reshape(-1, 1, 28, 28), test[1])
        if quick:
            tr, te = (tr[0][:2000], tr[1][:2000]), (te[0][:500], te[1][:500])
            recipe.update(train_epochs=1, prune_rounds=1, prune_epochs=1, share_epochs=1)
        rows, report, model = deep_compression(name, recipe, tr, te)
        print(report)
        dense_acc, dense_bytes = rows[0][1], rows[0][2]
        print(f"\n{name} on Fashion-MNIST ({len(te[0])} test images)")
        print(f"{'stage':<52} {'accuracy':>9} {'loss (pt)':>9} {'bytes on disk':>14} {'ratio':>7} "
              f"{'batch-1 dense':>14} {'batch-1 sparse':>15}")
        for stage, acc, size, m in rows:
            lat = latency_batch1(m, te[0], repeats=50 if quick else 300)
            sparse = "-"
            if P.is_pruned(m):
                sparse = f"{latency_batch1(pk.sparse.to_sparse(m, 'auto'), te[0], 50 if quick else 300) * 1e6:.0f} us"
            print(f"{stage:<52} {acc:>9.4f} {100 * (dense_acc - acc):>9.2f} {size:>14,d} "
                  f"{dense_bytes / size:>6.1f}x {lat * 1e6:>11.0f} us {sparse:>15}")
        for stage in ("int8 PTQ", "QAT 4-bit"):
            if stage not in EXTRA_STAGES:
                print(f"{stage:<52} (a hook: provided by the affine-quantization part of issue 12)")
        print(f"  (float32 parameters alone: {report.bytes['dense']:,d} bytes; the compressed file is "
              f"{report.ratio('file'):.1f}x smaller than them)")
        sweep = ", ".join(f"{g} bits: {quant.compression_report(model, gap_bits=g).bytes['file']:,d} B"
                          for g in (4, 5, 6, 8, "auto"))
        print(f"  file size by relative-index width ({sweep})\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(RECIPES), action="append")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    run(args.model or ["lenet300", "lenet5"], args.quick)
