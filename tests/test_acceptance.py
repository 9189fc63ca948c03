"""Issue 2 acceptance, as settled by issue 13: the first-run recipe on the shipped UCI digits.

    mlp([64, 128, 10]) trained 20 epochs with SGD(lr=0.05, momentum=0.9), batch 64.

The target is the recipe's MEAN test accuracy over 8 stratified split seeds x 3
initialisations >= 96.5% (PyTorch from the same weights and batches gives 97.05%:
`python benchmarks/accuracy.py --digits-splits`). A single split has only 359 test
images, so one split's figure moves by a point with the split alone: the default
split (seed 0) gives about 95.5%, which is what the README says.
"""
import contextlib

import numpy as np
import pytest

import prunekit as pk

data = pytest.importorskip("prunekit.data")

try:  # optional: one BLAS thread; on a shared 2-core machine OpenBLAS's spinning threads cost ~10x here
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


@pytest.fixture(scope="module")
def first_run():
    """Train once; both tests below read the result."""
    (x, y), (xt, yt) = data.load_digits()
    model = pk.models.mlp([64, 128, 10], seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext():
        hist = pk.fit(model, data.DataLoader(x, y, 64, shuffle=True, seed=0), opt, epochs=20, progress=False)
        return hist, pk.evaluate(model, (xt, yt))


def _recipe(split, init):
    """Test accuracy of the recipe on split seed ``split`` from init seed ``init``."""
    (x, y), (xt, yt) = data.load_digits(seed=split)
    model = pk.models.mlp([64, 128, 10], seed=init)
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pk.fit(model, data.DataLoader(x, y, 64, shuffle=True, seed=init), opt, epochs=20, progress=False)
    return pk.evaluate(model, (xt, yt))["accuracy"]


@pytest.mark.slow
def test_digits_recipe_mean_over_splits_and_inits_reaches_96_5_percent():
    with threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext():
        acc = np.array([[_recipe(split, init) for init in range(3)] for split in range(8)])
    assert acc.mean() >= 0.965, (acc.mean(), acc.mean(axis=1))
    assert acc.min() >= 0.93, acc  # no split/init pair collapses


def test_digits_mlp_learns(first_run):
    """What the first run does reach today; guards against regressions while the 97% target is open."""
    hist, result = first_run
    assert hist["loss"][-1] < hist["loss"][0] / 5
    assert hist["accuracy"][-1] >= 0.98                 # training accuracy
    assert result["accuracy"] >= 0.95 and np.isfinite(result["loss"])
