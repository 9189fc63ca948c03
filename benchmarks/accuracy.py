"""Accuracy acceptance runs: the numbers the README promises, reproduced by one command.

    python benchmarks/accuracy.py            # digits MLP (20 epochs) + LeNet-300-100 on Fashion-MNIST (15 epochs)

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
    args = ap.parse_args()
    digits_mlp()
    fashion_lenet(args.epochs)
