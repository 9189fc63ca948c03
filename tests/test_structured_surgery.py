"""shrink() surgery, save/load with architecture, profile, network slimming, hybrid pruning."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import prunekit as pk
from prunekit import nn, serialize
from prunekit.models_vgg import vgg_small
from prunekit.pruning._testmodels import ConcatNet
from prunekit.pruning.profile import profile
from prunekit.pruning.slimming import BNL1Penalty, bn_l1_penalty, slim
from prunekit.pruning.structured import prune_structured
from prunekit.pruning.surgery import shrink
from structhelpers import randomise_bn

X28 = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
X8 = X28[:, :, :8, :8].copy()


def _out(model, x):
    model.eval()
    with pk.no_grad():
        return model(x).data


MODELS = {
    "mlp": (lambda s: pk.models.mlp([12, 20, 16, 5], seed=s), lambda: X28[:, 0, 0, :12].copy(), "neuron"),
    "cnn_bn": (lambda s: vgg_small(seed=s, width=4), lambda: X28, "channel"),
    "lenet5": (lambda s: pk.models.lenet5(seed=s), lambda: X28, "channel"),
    "resnet": (lambda s: pk.models.resnet_small(channels=(8, 12, 16), seed=s), lambda: X28, "channel"),
    "concat": (lambda s: ConcatNet(seed=s), lambda: X8, "channel"),
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("score", ["l1", "fpgm"])
def test_shrink_equals_the_masked_model(kind, score):
    make, x, structure = MODELS[kind]
    model = randomise_bn(make(0))
    x = x()
    before = _out(model, x)
    prune_structured(model, 0.4, structure=structure, score=score, example_input=x)
    masked = _out(model, x)
    assert not np.allclose(before, masked)                # pruning did something
    small = shrink(model, x)
    assert small.num_parameters() < model.num_parameters()
    np.testing.assert_allclose(_out(small, x), masked, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(_out(model, x), masked)   # the original is untouched


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 1000), amount=st.floats(0.05, 0.95),
       scope=st.sampled_from(["layer", "global"]))
def test_shrink_is_exact_on_random_models_and_amounts(kind, seed, amount, scope):
    make, x, structure = MODELS[kind]
    model = randomise_bn(make(seed), seed)
    x = x()
    report = prune_structured(model, amount, structure=structure, score="random", seed=seed, scope=scope,
                              example_input=x)
    if report.removed == 0:
        with pytest.raises(ValueError, match="no removed neuron or filter"):
            shrink(model, x)
        return
    small = shrink(model, x)
    np.testing.assert_allclose(_out(small, x), _out(model, x), rtol=1e-4, atol=1e-5)
    # every kept unit is a real row of the new layers
    for r in report.rows:
        for name in r["producers"]:
            assert dict(small.named_modules())[name].weight.shape[0] == r["kept"]


def test_shrunk_lenet5_has_the_expected_shapes_and_parameter_count():
    model = pk.models.lenet5(seed=0)
    prune_structured(model, 0.5, example_input=X28)
    small = shrink(model, X28)
    # conv 6 -> 3, conv 16 -> 8, linear 120 -> 60, 84 -> 42, output 10 (round(0.5 n))
    assert small[0].weight.shape == (3, 1, 5, 5) and small[0].bias.shape == (3,)
    assert small[3].weight.shape == (8, 3, 5, 5)
    assert small[7].weight.shape == (60, 200)             # 8 channels x 5 x 5 inputs
    assert small[9].weight.shape == (42, 60)
    assert small[11].weight.shape == (10, 42)
    expected = (3 * 25 + 3) + (8 * 3 * 25 + 8) + (60 * 200 + 60) + (42 * 60 + 42) + (10 * 42 + 10)
    assert small.num_parameters() == expected
    assert (small[0].in_channels, small[0].out_channels, small[7].in_features, small[7].out_features) == (1, 3, 200, 60)
    assert all(p.mask is None for p in small.parameters())  # nothing left to mask
    assert small(X28).shape == (4, 10)


def test_shrunk_resnet_cuts_coupled_channels_and_batchnorm_entries():
    model = randomise_bn(pk.models.resnet_small(seed=0))
    prune_structured(model, 0.5, example_input=X28)
    small = shrink(model, X28)
    assert small[0].out_channels == small[3].conv2.out_channels == small[1].num_features == 8
    assert small[1].running_mean.shape == (8,) and small[3].bn2.weight.shape == (8,)
    assert small[4].shortcut[0].weight.shape == (16, 8, 1, 1)
    assert small[7].weight.shape == (10, 32)


def test_shrink_keeps_unstructured_masks_inside_kept_rows():
    model = pk.models.mlp([12, 20, 5], seed=0)
    prune_structured(model, 0.5, structure="neuron")
    pk.pruning.prune(model, 0.5)                           # half of what is left, element-wise
    small = shrink(model)
    assert small[0].weight.shape == (10, 12) and small[0].weight.mask is not None
    assert small[0].weight.mask.mean() == pytest.approx(0.5, abs=0.01)
    x = X28[:, 0, 0, :12].copy()
    np.testing.assert_allclose(_out(small, x), _out(model, x), rtol=1e-5, atol=1e-6)


def test_shrink_refuses_a_model_without_structured_masks():
    model = pk.models.mlp([12, 20, 5], seed=0)
    with pytest.raises(ValueError, match=r"shrink\(\): model must be a model with structured masks"):
        shrink(model)
    pk.pruning.prune(model, 0.9)                           # unstructured: no whole row is masked
    with pytest.raises(ValueError, match="no removed neuron or filter"):
        shrink(model)
    with pytest.raises(TypeError, match=r"shrink\(\): model must be a prunekit.nn.Module"):
        shrink("model")
    with pytest.raises(ValueError, match="example_input"):
        shrink(pk.models.lenet5(seed=0))


# ------------------------------------------------------------------ save / load
def test_save_load_round_trip_of_a_shrunk_model(tmp_path):
    for make, x in ((lambda: randomise_bn(pk.models.resnet_small(seed=0)), X28),
                    (lambda: randomise_bn(ConcatNet(seed=0)), X8),
                    (lambda: randomise_bn(vgg_small(seed=0, width=4)), X28)):
        model = make()
        prune_structured(model, 0.5, example_input=x)
        small = shrink(model, x)
        npz, meta = serialize.save_model(small, tmp_path / "m")
        assert npz.endswith("m.npz") and meta.endswith("m.json")
        assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
        loaded = serialize.load_model(tmp_path / "m.npz")
        assert type(loaded) is type(small) and repr(loaded) == repr(small)
        np.testing.assert_array_equal(_out(loaded, x), _out(small, x))
        # the .npz is still a plain nn.save file: load_state into the shrunk model works
        target = shrink(model, x)
        nn.load_state(target, npz)


def test_save_load_keeps_masks_and_the_training_flag(tmp_path):
    model = pk.models.mlp([8, 6, 3], seed=0)
    pk.pruning.prune(model, 0.5)
    serialize.save_model(model.eval(), tmp_path / "m")
    loaded = serialize.load_model(tmp_path / "m")
    assert not loaded.training
    assert np.array_equal(loaded[0].weight.mask, model[0].weight.mask)


def test_custom_module_types_are_refused_by_name(tmp_path):
    class Mine(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"save_model\(\): model must be made of prunekit's built-in.*Mine"):
        serialize.save_model(nn.Sequential(nn.Linear(2, 2), Mine()), tmp_path / "m")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "json_arch", "json_garbage", "missing"])
def test_tampered_or_truncated_files_are_refused(tmp_path, damage):
    model = pk.models.mlp([8, 6, 3], seed=0)
    npz, meta = serialize.save_model(model, tmp_path / "m")
    if damage == "flip":
        data = bytearray(open(npz, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(npz, "wb").write(bytes(data))
    elif damage == "truncate":
        data = open(npz, "rb").read()
        open(npz, "wb").write(data[: len(data) // 2])
    elif damage == "json_arch":
        doc = json.load(open(meta))
        doc["architecture"]["children"][0][1]["config"]["out_features"] = 7
        json.dump(doc, open(meta, "w"))
    elif damage == "json_garbage":
        open(meta, "w").write("{not json")
    else:
        os.remove(meta)
    with pytest.raises(ValueError, match=r"load_model\(\): path must be"):
        serialize.load_model(tmp_path / "m")


def test_custom_types_recorded_by_name_are_refused_at_load(tmp_path):
    class Mine(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(2, 2, seed=0), Mine())
    npz, _ = serialize.save_model(model, tmp_path / "m", allow_custom=True)
    with pytest.raises(TypeError, match=r"load_model\(\): model must be made of prunekit's built-in.*Mine"):
        serialize.load_model(npz)
    target = nn.Sequential(nn.Linear(2, 2, seed=1), Mine())
    nn.load_state(target, npz)                              # the weights are still readable
    assert np.array_equal(target[0].weight.data, model[0].weight.data)
    with pytest.raises(TypeError, match=r"build\(\): model must be made of .*'os.system'"):
        serialize.build({"type": "os.system", "config": {}})


# ------------------------------------------------------------------ hybrid
def test_structured_then_unstructured_then_sparse_kernels():
    model = pk.models.lenet_300_100(seed=0)
    prune_structured(model, 0.5, structure="neuron")
    small = shrink(model)
    report = pk.pruning.prune(small, 0.8)                  # unstructured on what remains
    assert report.total == pytest.approx(0.8, abs=0.01)
    sparse = pk.sparse.to_sparse(small, "csr")
    x = np.random.default_rng(0).standard_normal((3, 784)).astype(np.float32)
    out = sparse(x)
    np.testing.assert_allclose(getattr(out, "data", out), _out(small, x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ profile
def test_profile_counts_params_macs_and_bytes_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5, seed=0))
    rep = profile(model, (2, 1, 6, 6), repeats=2)
    assert rep["0"]["macs"] == 2 * 4 * 6 * 6 * (1 * 3 * 3)
    assert rep["3"]["macs"] == 2 * 5 * 144
    assert rep["0"]["params"] == 4 * 9 + 4 and rep["3"]["bytes"] == (5 * 144 + 5) * 4
    assert rep.params == model.num_parameters() and rep.bytes == 4 * model.num_parameters()
    assert rep.macs == 2 * 4 * 36 * 9 + 2 * 5 * 144
    assert rep.ms > 0 and all(r["ms"] >= 0 for r in rep.rows)
    assert "MACs" in repr(rep) and "<table>" in rep._repr_html_()
    import matplotlib.pyplot as plt
    ax = rep.plot()
    assert "%" in ax.get_xlabel()
    plt.close("all")
    with pytest.raises(ValueError, match=r"profile\(\): input_shape must be"):
        profile(model, (6, 6, 0))


def test_profile_report_table_and_lookup():
    from prunekit.pruning.profile import ProfileReport

    rows = [dict(name="0", type="Linear", output_shape=(1, 20), params=12345, macs=1234567, bytes=49380, ms=0.01234),
            dict(name="1", type="ReLU", output_shape=(1, 20), params=0, macs=0, bytes=0, ms=1.5)]
    rep = ProfileReport(rows, (1, 784), 2.345, 12345, 49380)
    assert repr(rep).splitlines() == [
        "profile for input (1, 784)",
        "layer              type         output                params         MACs      bytes       ms",
        "-" * 93,
        "0                  Linear       (1, 20)               12,345    1,234,567     49,380    0.012",
        "1                  ReLU         (1, 20)                    0            0          0    1.500",
        "-" * 93,
        "total                                                 12,345    1,234,567     49,380    2.345"]
    assert ("<tr><td>0</td><td>Linear</td><td>(1, 20)</td><td>12,345</td><td>1,234,567</td><td>49,380</td>"
            "<td>0.012</td></tr>") in rep._repr_html_()
    assert rep["1"] is rows[1]
    with pytest.raises(KeyError, match=r"name must be one of \['0', '1'\], got 2"):
        rep["2"]


def test_profile_of_a_shrunk_model_counts_fewer_macs():
    model = vgg_small(seed=0, width=8)
    dense = profile(model, (1, 1, 28, 28), repeats=1)
    prune_structured(model, 0.5, example_input=X28)
    masked = profile(model, (1, 1, 28, 28), repeats=1)
    small = profile(shrink(model, X28), (1, 1, 28, 28), repeats=1)
    assert masked.macs == dense.macs                      # zeros still cost their multiply-adds
    assert small.macs < 0.4 * dense.macs                   # half the channels: about a quarter of the MACs


# ------------------------------------------------------------------ network slimming
class _State:
    def __init__(self, model, lr):
        self.model = model
        self.optimizer = pk.optim.SGD(model.parameters(), lr=lr)


def test_bn_l1_penalty_soft_thresholds_gammas():
    model = nn.Sequential(nn.Linear(3, 4, seed=0), nn.BatchNorm1d(4))
    model[1].weight.data[:] = [0.5, -0.02, 0.01, -0.3]
    BNL1Penalty(0.5).on_batch_end(_State(model, lr=0.1))  # lr * strength = 0.05
    np.testing.assert_allclose(model[1].weight.data, [0.45, 0.0, 0.0, -0.25], atol=1e-7)
    term = bn_l1_penalty(model, 2.0)
    assert term.item() == pytest.approx(2.0 * 0.7, rel=1e-6)
    term.backward()
    np.testing.assert_array_equal(model[1].weight.grad, [2.0, 0.0, 0.0, -2.0])


def test_slimming_trains_then_prunes_by_gamma():
    model = vgg_small(seed=0, width=4)
    y = np.arange(4) % 10
    pk.fit(model, pk.data.DataLoader(X28, y, 4), pk.optim.SGD(model.parameters(), lr=0.1), 3,
           callbacks=[BNL1Penalty(2.0)], progress=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    gammas = [np.abs(bn.weight.data.copy()) for bn in bns]
    report = slim(model, 0.5, example_input=X28)
    assert report.new == round(0.5 * sum(len(g) for g in gammas))    # one global ranking
    removed = np.concatenate([g[bn.weight.mask == 0] for g, bn in zip(gammas, bns)])
    # kept channels of layers that lost some are all larger than every removed one (global threshold)
    kept = np.concatenate([g[bn.weight.mask != 0] for g, bn in zip(gammas, bns) if (bn.weight.mask != 0).sum() > 1])
    assert removed.max() <= kept.min()
    small = shrink(model, X28)
    np.testing.assert_allclose(_out(small, X28), _out(model, X28), rtol=1e-4, atol=1e-5)


def test_vgg_small_shapes_and_bad_width():
    model = vgg_small(seed=0)
    assert model(X28).shape == (4, 10) and model.num_parameters() == (
        9 * (1 * 16 + 16 * 16 + 16 * 32 + 32 * 32 + 32 * 64)     # 3x3 convolutions, no bias
        + 2 * (16 + 16 + 32 + 32 + 64)                          # BatchNorm gamma and beta
        + 64 * 9 * 64 + 64 + 64 * 10 + 10)                      # classifier
    assert vgg_small(seed=0, width=8).num_parameters() < model.num_parameters()
    a, b = vgg_small(seed=3, width=4), vgg_small(seed=3, width=4)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match=r"vgg_small\(\): width must be"):
        vgg_small(width=0)


# Notebook 05's exercises are checked by the course's registry now (prunekit/_exercise_checks_05_06.py):
# see tests/test_exercises_05_06.py and tests/test_structured_notebook_05_06.py.


def test_rows_masked_without_their_batchnorm_are_not_cut():
    # whole filters masked by hand, but the BatchNorm after them still adds beta: not removable
    model = randomise_bn(vgg_small(seed=0, width=4))
    mask = np.ones(model[0].weight.shape, np.float32)
    mask[:2] = 0
    pk.pruning.set_mask(model[0].weight, mask)
    with pytest.raises(ValueError, match="no removed neuron or filter"):
        shrink(model, X28)
    for p in (model[1].weight, model[1].bias):
        pk.pruning.set_mask(p, np.array([0, 0, 1, 1], np.float32))
    small = shrink(model, X28)
    assert small[0].out_channels == 2 and small[1].num_features == 2
    np.testing.assert_allclose(_out(small, X28), _out(model, X28), rtol=1e-4, atol=1e-5)
