"""Issue 12 acceptance: int8 PTQ (per-channel weights, integer-only forward) of LeNet-300-100 and
LeNet-5 trained on Fashion-MNIST loses <= 0.5 point of test accuracy.

    python benchmarks/quant_ptq.py [--epochs-mlp 8] [--epochs-lenet5 4] [--lr 0.05] [--cache DIR]

Trains each model (SGD with learning rate --lr, momentum 0.9, batch 64, seed 0) unless its weights are in
``--cache``, quantizes it with 256 calibration images from the training set, and
prints float and int8 accuracy on the 10,000 test images, for each calibrator.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import prunekit as pk
from prunekit import quant


def trained(name, make, flatten, epochs, cache, lr):
    (x, y), (xt, yt) = pk.data.load_fashion_mnist(flatten=flatten)
    model = make(seed=0)
    path = os.path.join(cache, f"{name}_e{epochs}_lr{lr:g}.npz")
    if os.path.exists(path):
        pk.nn.load_state(model, path)
    else:
        opt = pk.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        pk.fit(model, pk.data.DataLoader(x, y, 64, shuffle=True, seed=0), opt, epochs=epochs, progress=False)
        pk.nn.save(model, path)
    return model, (x, y), (xt, yt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs-mlp", type=int, default=8)
    ap.add_argument("--epochs-lenet5", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/prunekit/quant_ptq"))
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    results = []
    for name, make, flatten, epochs, lr in [("lenet_300_100", pk.models.lenet_300_100, True, args.epochs_mlp, args.lr),
                                            ("lenet5", pk.models.lenet5, False, args.epochs_lenet5, args.lr)]:
        t = time.perf_counter()
        model, (x, y), (xt, yt) = trained(name, make, flatten, epochs, args.cache, lr)
        train_s = time.perf_counter() - t
        float_acc = pk.evaluate(model, (xt, yt))["accuracy"]
        for calibration in ("minmax", "percentile", "mse"):
            t = time.perf_counter()
            q = quant.quantize_model(model, (x, y), calibration=calibration, n_samples=256)
            int8_acc = pk.evaluate(q, (xt, yt))["accuracy"]
            row = dict(model=name, epochs=epochs, lr=lr, calibration=calibration, float_acc=float_acc, int8_acc=int8_acc,
                       loss_points=100 * (float_acc - int8_acc), seconds=time.perf_counter() - t, train_s=train_s)
            results.append(row)
            print(f"{name:14s} {calibration:10s} float {float_acc:.2%}  int8 {int8_acc:.2%}  "
                  f"loss {row['loss_points']:+.2f} points  ({row['seconds']:.1f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
