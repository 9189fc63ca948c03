"""Writes export_v1.npz (a format-version-1 file) and export_v1_expected.npz (its input and outputs).

Run once with the prunekit of commit e1d1ffa, the last one before sparse weights (format version 2):

    git archive e1d1ffa prunekit | tar -x -C /tmp/pk_v1
    PYTHONPATH=/tmp/pk_v1 python tests/data/make_export_v1.py

tests/test_quant_export.py checks that today's reader loads the file and gives the recorded outputs.
The model: a pruned conv layer (36 int8 weights, half zero) and a pruned linear layer (360 4-bit weights,
bit-packed, 3/4 zero).
"""
import os

import numpy as np

import prunekit as pk
from prunekit import pruning as P
from prunekit import quant

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
model = pk.nn.Sequential(pk.nn.Conv2d(1, 4, 3, rng=rng), pk.nn.ReLU(), pk.nn.MaxPool2d(2), pk.nn.Flatten(),
                         pk.nn.Linear(36, 10, rng=rng)).eval()
P.prune_to(model, {"0.weight": 0.5, "4.weight": 0.75})
x = rng.random((16, 1, 8, 8)).astype(np.float32)
q = quant.quantize_model(model, (x, np.zeros(len(x))), weight_bits={"0": 8, "4": 4})
assert quant.exporter.VERSION == 1, "run with the prunekit of commit e1d1ffa"
quant.export(q, os.path.join(here, "export_v1.npz"))
np.savez(os.path.join(here, "export_v1_expected.npz"), x=x, out=q(x), out_int=q.run_integer(q.quantize_input(x)))
