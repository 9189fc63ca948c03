"""Accuracy acceptance runs: the numbers the README promises, reproduced by one command.

    python benchmarks/accuracy.py            # digits MLP (20 epochs) + LeNet-300-100 on Fashion-MNIST (15 epochs)
    python benchmarks/accuracy.py --digits-splits   # the digits recipe on 8 splits x 3 inits, prunekit and PyTorch

Prints test accuracy per epoch and the final figures. Seeds are fixed, so a rerun
on the same machine gives the same numbers.
"""
from __future__ import annotations

import argparse
import time

import prunekit as pk


def digits_mlp():
    (x, y), (xt, yt) = pk.data.load_digits()
    model = pk.models.mlp([64, 128, 10], seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t = time.perf_counter()
    pk.fit(model, pk.data.DataLoader(x, y, 64, shuffle=True, seed=0), opt, epochs=20, progress=False)
    acc = pk.evaluate(model, (xt, yt))["accuracy"]
    print(f"digits  mlp([64,128,10]) SGD(0.05, momentum 0.9) 20 epochs: test accuracy {acc:.4f} "
          f"({time.perf_counter() - t:.1f} s)")
    return acc


def _digits_run(split, init, torch=None):
    """The issue-2 digits recipe on split ``split`` from init ``init``; with ``torch``, the same run in PyTorch.

    PyTorch gets prunekit's initial weights and exactly the same batches, so the two
    test accuracies differ only by floating-point round-off.
    """
    (x, y), (xt, yt) = pk.data.load_digits(seed=split)
    model = pk.models.mlp([64, 128, 10], seed=init)
    loader = pk.data.DataLoader(x, y, 64, shuffle=True, seed=init)
    batches = [[(xb.copy(), yb.copy()) for xb, yb in loader] for _ in range(20)]  # the 20 epochs' batches
    if torch is not None:
        tm = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        with torch.no_grad():
            for tl, pl in zip((tm[0], tm[2]), (model[0], model[2])):
                tl.weight.copy_(torch.from_numpy(pl.weight.data))
                tl.bias.copy_(torch.from_numpy(pl.bias.data))
        topt = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9)
        for epoch in batches:
            for xb, yb in epoch:
                topt.zero_grad()
                torch.nn.functional.cross_entropy(tm(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
                topt.step()
        with torch.no_grad():
            t_acc = float((tm(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pk.fit(model, [b for epoch in batches for b in epoch], opt, epochs=1, progress=False)
    p_acc = pk.evaluate(model, (xt, yt))["accuracy"]
    return p_acc, (t_acc if torch is not None else None)


def digits_splits(splits=8, inits=3):
    """How much the digits figure depends on the split: prunekit (and PyTorch, if installed) per split."""
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
        print("(PyTorch not installed: prunekit only; `pip install -e .[bench]` adds the cross-check)")
    print(f"digits recipe, {inits} inits per split; test accuracy mean (min-max)")
    means = []
    for split in range(splits):
        runs = [_digits_run(split, init, torch) for init in range(inits)]
        p = [r[0] for r in runs]
        line = f"  split seed {split}: prunekit {sum(p) / inits:.4f} ({min(p):.4f}-{max(p):.4f})"
        if torch is not None:
            t = [r[1] for r in runs]
            line += f" | PyTorch, same init and batches {sum(t) / inits:.4f} ({min(t):.4f}-{max(t):.4f})"
        means.append(sum(p) / inits)
        print(line, flush=True)
    print(f"  mean over {splits} splits: prunekit {sum(means) / splits:.4f}")


def fashion_lenet(epochs):
    (x, y), (xt, yt) = pk.data.load_fashion_mnist()
    model = pk.models.lenet_300_100(seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = pk.optim.CosineAnnealingLR(opt, T_max=epochs)
    t = time.perf_counter()
    hist = pk.fit(model, pk.data.DataLoader(x, y, 128, shuffle=True, seed=0), opt, epochs=epochs,
                  val_loader=(xt, yt), scheduler=sched, progress=False)
    for e, a in zip(hist.epochs, hist["val_accuracy"]):
        print(f"  epoch {e:2d}: test accuracy {a:.4f}")
    acc = hist.last("val_accuracy")
    print(f"fashion lenet_300_100 SGD(0.05, momentum 0.9, cosine) {epochs} epochs, batch 128: "
          f"test accuracy {acc:.4f} ({time.perf_counter() - t:.1f} s)")
    return acc


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--digits-splits", action="store_true", help="only the digits split study")
    args = ap.parse_args()
    if args.digits_splits:
        digits_splits()
        raise SystemExit
    digits_mlp()
    fashion_lenet(args.epochs)
