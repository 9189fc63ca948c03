"""The pruning explorer (prunekit.widgets.PruningExplorer), headless.

Its update thresholds precomputed score orders instead of calling prune(); these
tests hold every update against an independent prune() + evaluate() on a fresh
model, check that the user's model is never touched, drive the ipywidgets
controls as a reader would, and check that the fast (blitted) redraw paints the
same pixels as a full redraw. The update time for LeNet-300-100 is printed
(run with -s to see it), not asserted: the machine may be shared.
"""
import io
import time

import numpy as np
import pytest

import prunekit as pk
from prunekit import pruning
from prunekit.data import DataLoader, load_diabetes, load_digits
from prunekit.widgets import EXPLORER_GRID, PruningExplorer, pruning_explorer

SCORES = ("magnitude", "gradient", "taylor", "random")
SPARSITIES = (0.0, 0.3, 0.5, 0.9, 0.99, 1.0)


def clone(model, sizes):
    """A fresh model with the same weights (and masks), made without copy.deepcopy."""
    other = pk.models.mlp(sizes)
    other.load_state_dict(model.state_dict())
    return other


@pytest.fixture(scope="module")
def digits():
    (x, y), (xt, yt) = load_digits()
    model = pk.models.mlp([64, 32, 10], seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pk.fit(model, DataLoader(x, y, 64, shuffle=True, seed=0), opt, epochs=8, progress=False)
    return model, (x[:300], y[:300]), (xt, yt)


@pytest.fixture(scope="module")
def explorer(digits):
    model, score_data, test = digits
    return PruningExplorer(model, test, score_data=score_data, n_eval=len(test[0]))


def independent(model, sparsity, score, scope, score_data, test, seed=0):
    """What the explorer must reproduce: prune a fresh copy with prune(), evaluate it."""
    m = clone(model, [64, 32, 10])
    report = pruning.prune(m, sparsity, score=score, scope=scope, data=score_data, seed=seed)
    return m, report, pk.evaluate(m, test)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("score", SCORES)
def test_update_equals_an_independent_prune_and_evaluate(digits, explorer, score, scope):
    model, score_data, test = digits
    for s in SPARSITIES:
        result = explorer.update(s, score=score, scope=scope)
        m, report, metrics = independent(model, s, score, scope, score_data, test)
        ref_masks = pruning.masks(m)
        for name, mask in explorer.masks.items():
            np.testing.assert_array_equal(mask, ref_masks[name] != 0, err_msg=f"{score}/{scope}/{s}: {name}")
        for (name, p), (_, q) in zip(explorer.model.named_parameters(), m.named_parameters()):
            np.testing.assert_array_equal(p.data, q.data, err_msg=f"{score}/{scope}/{s}: {name}")
        assert result["accuracy"] == metrics["accuracy"], (score, scope, s)
        assert result["loss"] == metrics["loss"], (score, scope, s)
        assert result["reached"] == pytest.approx(report.total, abs=1e-12)
        for name, v in result["layers"].items():
            assert v == pytest.approx(report[name], abs=1e-12)
        if scope == "layer":  # round(s * n) per layer, as torch counts
            for name, p in explorer.params.items():
                assert int((~explorer.masks[name]).sum()) == int(round(s * p.size))


def test_sparsity_reached_and_endpoints(digits, explorer):
    model, _, test = digits
    dense = pk.evaluate(model, test)
    r0 = explorer.update(0.0, score="magnitude", scope="global")
    assert r0["reached"] == 0.0 and r0["accuracy"] == dense["accuracy"] == explorer.dense_metrics["accuracy"]
    r1 = explorer.update(1.0)
    assert r1["reached"] == 1.0 and all(v == 1.0 for v in r1["layers"].values())
    n = sum(p.size for p in explorer.params.values())
    for s in (0.25, 0.8, 0.95):
        r = explorer.update(s)
        assert r["reached"] == round(s * n) / n


def test_curve_points_equal_independent_runs(digits, explorer):
    model, score_data, test = digits
    grid, values = explorer.curve("taylor", "global")
    assert list(grid) == list(EXPLORER_GRID) and len(values) == len(grid)
    for i in (0, 5, len(grid) - 1):
        _, _, metrics = independent(model, float(grid[i]), "taylor", "global", score_data, test)
        assert values[i]["accuracy"] == metrics["accuracy"]
    # pruning more never helps much on this trained model: the curve ends far below where it starts
    assert values[-1]["accuracy"] < values[0]["accuracy"] - 0.2


def test_the_users_model_is_not_touched():
    (x, y), (xt, yt) = load_digits()
    model = pk.models.mlp([64, 16, 10], seed=1)
    pruning.prune(model, 0.3)                      # an already pruned model keeps its masks
    before = model.state_dict()
    ex = pruning_explorer(model, (xt, yt), score_data=(x[:100], y[:100]), sparsity=0.9, score="taylor")
    for s in (0.1, 0.5, 0.99):
        ex.update(s, scope="global")
    try:
        import ipywidgets  # noqa: F401
    except ImportError:   # pragma: no cover - the widget part needs ipywidgets
        pass
    else:
        ex.widget
        ex.set(sparsity=0.7, score="random")
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert all(p.grad is None for p in model.parameters())
    # the explorer starts from the user's (pruned) weights: at sparsity 0.3 it removes the same zeros
    r = ex.update(0.3, score="magnitude", scope="layer")
    for name, mask in ex.masks.items():
        np.testing.assert_array_equal(mask, before[name + "_mask"] != 0)
    assert r["accuracy"] == pk.evaluate(model, (xt, yt))["accuracy"]


def test_regression_model_reports_the_loss():
    (x, y), (xt, yt) = load_diabetes()
    mu, sd = y.mean(), y.std()
    y, yt = (y - mu) / sd, (yt - mu) / sd
    model = pk.models.mlp([10, 100, 10, 1], seed=0)
    pk.fit(model, DataLoader(x, y, 32, shuffle=True, seed=0), pk.optim.Adam(model.parameters(), lr=1e-3), 10,
           loss="mse", progress=False)
    ex = PruningExplorer(model, (xt, yt), score_data=(x, y), loss="mse", score="gradient")
    r = ex.update(0.6, scope="global")
    assert "accuracy" not in r
    ref = clone(model, [10, 100, 10, 1])
    pruning.prune(ref, 0.6, score="gradient", scope="global", data=(x, y), loss="mse")
    assert r["loss"] == pk.evaluate(ref, (xt, yt), loss="mse")["loss"]


def _pixels(png):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def test_widget_controls_drive_the_update_and_the_blit_matches_a_full_redraw(digits):
    pytest.importorskip("ipywidgets")
    model, score_data, test = digits
    ex = PruningExplorer(model, test, score_data=score_data, sparsity=0.5)
    box = ex.widget
    ui = ex._ui
    assert box.children and ui["image"].value[:8] == b"\x89PNG\r\n\x1a\n"
    ui["sparsity"].value = 0.8                       # as if the reader moved the slider
    assert ex.state["sparsity"] == 0.8 and ex.result["reached"] == pytest.approx(0.8, abs=0.002)
    assert f"{ex.result['accuracy']:.4f}" in ui["status"].value
    ui["score"].value = "taylor"
    ui["scope"].value = "global"
    assert (ex.state["score"], ex.state["scope"]) == ("taylor", "global")
    _, _, metrics = independent(model, 0.8, "taylor", "global", score_data, test)
    assert ex.result["accuracy"] == metrics["accuracy"]
    # set() moves several controls and updates once; update() moves the controls too
    calls = []
    original = ex.update
    ex.update = lambda **kw: calls.append(kw) or original(**kw)
    ex.set(sparsity=0.6, score="magnitude", scope="layer")
    ex.update = original
    assert len(calls) == 1
    ex.update(0.3, score="random")
    assert (ui["sparsity"].value, ui["score"].value) == (0.3, "random")
    # a slider move redraws by blitting over a saved background: same pixels as a full redraw
    ex.update(0.9, score="magnitude", scope="global")     # score change: full redraw
    ui["sparsity"].value = 0.95                            # slider move: blit
    assert ex.last_timing["draw"] > 0
    blitted = _pixels(ui["image"].value)
    ex._built_for = None                                   # force a full redraw of the same state
    full = _pixels(ex._render_png())
    assert blitted.shape == full.shape
    np.testing.assert_array_equal(blitted, full)
    # and the static figure shows the same state
    fig = ex.figure()
    assert "95.0% sparsity" in fig.axes[0].get_title()


def test_bad_input_is_refused(digits):
    model, score_data, test = digits
    with pytest.raises(TypeError, match="model must be"):
        PruningExplorer("model", test)
    with pytest.raises(TypeError, match="PruningExplorer\\(\\): data must be a DataLoader.*got an array"):
        PruningExplorer(model, test[0])
    with pytest.raises(ValueError, match="PruningExplorer\\(\\): score_data must be an \\(x, y\\) pair with as many"):
        PruningExplorer(model, test, score_data=(test[0], test[1][:3]))
    with pytest.raises(ValueError, match="score must be"):
        PruningExplorer(model, test, score="oracle2")
    with pytest.raises(ValueError, match="scores must be"):
        PruningExplorer(model, test, scores=("magnitude", "nope"))
    with pytest.raises(ValueError, match="sparsity must be"):
        PruningExplorer(model, test, sparsity=1.5)
    with pytest.raises(ValueError, match="layer must be"):
        PruningExplorer(model, test, layer="7")
    ex = PruningExplorer(model, test, n_eval=50)
    with pytest.raises(ValueError, match="sparsity must be"):
        ex.update(-0.1)
    with pytest.raises(ValueError, match="scope must be"):
        ex.update(0.5, scope="local")
    with pytest.raises(ValueError, match="values must be"):
        ex.set(amount=0.5)
    assert ex.state["sparsity"] == 0.5   # a refused update changes nothing


def test_lenet_update_time_is_printed():
    """LeNet-300-100 on 2000 Fashion-MNIST test images: how long one slider move takes."""
    (x, y), (xt, yt) = pk.data.load_fashion_mnist()
    model = pk.models.lenet_300_100(seed=0)
    pk.fit(model, DataLoader(x[:2000], y[:2000], 64, shuffle=True, seed=0),
           pk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 1, progress=False)
    t = time.perf_counter()
    ex = pruning_explorer(model, (xt, yt), score_data=(x[:500], y[:500]), n_eval=2000)
    setup = time.perf_counter() - t
    compute = []
    for s in (0.5, 0.8, 0.9, 0.95, 0.98):
        ex.update(s)
        compute.append(ex.last_update_seconds)
    lines = [f"LeNet-300-100 explorer: setup {setup * 1000:.0f} ms, "
             f"update without drawing: median {np.median(compute) * 1000:.1f} ms"]
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        ipywidgets = None
    if ipywidgets is not None:
        ex.widget
        ex.set(score="taylor", scope="global")
        first = ex.last_update_seconds
        drawn = []
        for s in (0.5, 0.8, 0.9, 0.95, 0.98):
            ex.set(sparsity=s)
            drawn.append(ex.last_update_seconds)
        lines.append(f"slider move with redraw: median {np.median(drawn) * 1000:.1f} ms, max {max(drawn) * 1000:.1f} ms; "
                     f"new score/scope (scores, sort, curves, full redraw): {first * 1000:.0f} ms")
    print("\n" + "\n".join(lines))
    assert ex.result["reached"] == pytest.approx(0.98, abs=1e-3)


# ------------------------------------------------------------------ the pruning plots in prunekit.viz
def test_weight_histogram_splits_kept_and_pruned_counts():
    from prunekit import viz

    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 50))
    mask = np.abs(w) > 0.5
    ax = viz.plot_weight_histogram(w, mask, bins=30, threshold=0.5)
    total, kept = ax.patches[0], ax.patches[1]          # stacked: kept + pruned, then kept on top
    edges = np.histogram_bin_edges(w, bins=30)
    np.testing.assert_array_equal(kept.get_data().values, np.histogram(w[mask], bins=edges)[0])
    np.testing.assert_array_equal(total.get_data().values, np.histogram(w, bins=edges)[0])
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [-0.5, 0.5]
    with pytest.raises(ValueError, match="mask must be"):
        viz.plot_weight_histogram(w, mask[:10])


def test_score_scatter_title_and_left_out_points():
    from prunekit import viz

    score = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    oracle = np.array([0.5, 0.0, 2.0, 3.0, 5.0])
    ax = viz.plot_score_vs_oracle(score, oracle, name="s")
    assert f"{pruning.spearman(score, oracle):.2f}" in ax.get_title()
    assert ax.collections[0].get_offsets().shape == (3, 2)          # two points have a zero
    assert "2 at 0, not shown" in ax.get_legend().get_texts()[0].get_text()
    ax = viz.plot_score_vs_oracle(score - 2, oracle - 1, log="symlog")   # signs kept, every point drawn
    assert ax.collections[0].get_offsets().shape == (5, 2) and ax.get_xscale() == "symlog"
    with pytest.raises(ValueError, match="oracle must be"):
        viz.plot_score_vs_oracle(score, oracle[:3])
    with pytest.raises(ValueError, match="log must be"):
        viz.plot_score_vs_oracle(score, oracle, log="ln")


def test_sparsity_curves_mask_image_and_layer_bars():
    from prunekit import viz

    ax = viz.plot_sparsity_curves({"a": ([0.5, 0.9], [0.8, 0.4])}, baseline=0.85)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [50, 90])
    assert ax.lines[1].get_ydata()[0] == 0.85
    with pytest.raises(ValueError, match="fractions"):
        viz.plot_sparsity_curves({"a": ([50, 90], [0.8, 0.4])})
    mask = np.zeros((3, 4))
    mask[:, 1] = 1
    mask[0, 3] = 1
    ax = viz.plot_mask(mask, image_shape=(2, 2))
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0, 3], [0, 1]])   # kept connections per input
    with pytest.raises(ValueError, match="image_shape must be"):
        viz.plot_mask(mask, image_shape=(3, 3))
    ax = viz.plot_layer_sparsity({"x": {"a": 0.5, "b": 0.25}, "y": {"a": 0.1, "b": 0.9}})
    assert sorted(round(p.get_height()) for p in ax.patches) == [10, 25, 50, 90]
