"""Train a prunekit model and its PyTorch twin side by side; print how far their weights drift apart.

    python benchmarks/torch_parity.py [--models lenet_300_100 lenet5] [--steps 200] [--optimizer sgd adam adamw]

Both start from the same weights (prunekit's, copied into ``torch.nn``), see the same
Fashion-MNIST batches and take the same optimizer steps (lr 0.05 with momentum 0.9 and
weight decay 5e-4 for SGD, Nesterov too; lr 1e-3 with weight decay 1e-2 for Adam/AdamW).
Every ``--every`` steps it prints both losses and the largest weight difference.
In float32 the two differ by rounding at first (1e-8); training amplifies such
differences, so after enough steps the two runs part ways as two PyTorch runs on
different hardware would; in float64 (``--dtype``) they stay together far longer,
which shows the differences are rounding, not maths. "steps within 1e-4" is the last step at which every
weight still agreed to 1e-4: the evidence that prunekit's ops, gradients and
optimizer updates are PyTorch's, not only its first loss. PyTorch is needed
(``pip install -e '.[bench]'``); prunekit runs on its default backend.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OPTIMIZERS = {  # name -> (prunekit class name, keyword arguments shared by both frameworks)
    "sgd": ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}),
    "nesterov": ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    "adam": ("Adam", {"lr": 1e-3, "weight_decay": 1e-2}),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
}


def run(model_name, optimizer, steps, dtype="float32", batch=128, seed=0):
    """Train both side by side; return [(step, prunekit loss, torch loss, max |weight difference|)]."""
    import torch

    import prunekit as pk
    from prunekit import functional as F
    from train_step import torch_twin

    (x_train, y_train), _ = pk.data.load_fashion_mnist(flatten=model_name != "lenet5")
    x_train = x_train.astype(dtype)
    model = getattr(pk.models, model_name)(seed=seed)
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    twin = torch_twin(model).to(getattr(torch, dtype))
    cls, kwargs = OPTIMIZERS[optimizer]
    opt = getattr(pk.optim, cls)(model.parameters(), **kwargs)
    topt = getattr(torch.optim, cls)(twin.parameters(), **kwargs)
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(steps):
        idx = rng.integers(0, len(x_train), batch)
        x, y = x_train[idx], y_train[idx]
        opt.zero_grad()
        loss = F.cross_entropy(model(pk.Tensor(x)), y)
        loss.backward()
        opt.step()
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        diff = max(float(np.abs(p.data - tp.detach().numpy()).max())
                   for (_, p), tp in zip(model.named_parameters(), twin.parameters()))
        rows.append((step + 1, loss.item(), tloss.item(), diff))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet_300_100", "lenet5"], choices=["lenet_300_100", "lenet5"])
    ap.add_argument("--optimizer", nargs="+", default=["sgd", "adam"], choices=sorted(OPTIMIZERS))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=25, help="print a row every this many steps")
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"],
                    help="float64 shows the maths agree: rounding differences then stay far below 1e-4 for longer")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        ap.error(f"--steps and --every must be >= 1, got {args.steps} and {args.every}")
    import torch

    import prunekit as pk

    print(f"prunekit {pk.__version__} ({pk.get_backend()} backend), torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}")
    for model_name in args.models:
        for optimizer, dtype in [(o, d) for o in args.optimizer for d in args.dtype]:
            rows = run(model_name, optimizer, args.steps, dtype)
            within = 0
            for step, _, _, diff in rows:
                if diff > 1e-4:
                    break
                within = step
            print(f"\n{model_name}, {dtype}, {optimizer} {OPTIMIZERS[optimizer][1]}: "
                  f"steps within 1e-4: {within} of {len(rows)}, max |w diff| at the end {rows[-1][3]:.1e}")
            print(f"{'step':>6} {'prunekit loss':>14} {'torch loss':>11} {'max |w diff|':>13}")
            for step, loss, tloss, diff in rows:
                if step == 1 or step % args.every == 0:
                    print(f"{step:6d} {loss:14.5f} {tloss:11.5f} {diff:13.2e}")


if __name__ == "__main__":
    main()
