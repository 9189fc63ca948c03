"""Structured pruning: dependency groups, unit masks, counting rules, group scores, N:M, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import prunekit as pk
from prunekit import nn
from prunekit.models_vgg import vgg_small
from prunekit.pruning._testmodels import ConcatNet, cat
from prunekit.pruning.graph import dependency_groups, plot_dependency_graph
from prunekit.pruning.structured import nm_mask, parse_structure, prune_structured
from structhelpers import randomise_bn

X28 = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
X8 = X28[:, :, :8, :8].copy()


def _linear(w, b=None):
    w = np.asarray(w, np.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], seed=0)
    layer.weight.data[...] = w
    layer.bias.data[...] = 0.1 if b is None else b
    return layer


# ------------------------------------------------------------------ dependency graph
def test_residual_groups_couple_the_shortcut_with_the_block_output():
    graph = dependency_groups(pk.models.resnet_small(seed=0), X28)
    # block 3 has an identity shortcut: the stem's channels are added to conv2's
    g = graph.group_of("0")
    assert list(g.producers) == ["0", "3.conv2"] and g.coupled
    assert np.array_equal(g.producers["0"], g.producers["3.conv2"])    # channel j with channel j
    assert set(g.norms) == {"1", "3.bn2"}
    assert set(g.consumers) == {"3.conv1", "4.conv1", "4.shortcut.0"}
    # block 4 has a 1x1 conv shortcut: it is coupled with the block's conv2
    assert list(graph.group_of("4.conv2").producers) == ["4.conv2", "4.shortcut.0"]
    # inner convolutions are on their own
    assert list(graph.group_of("3.conv1").producers) == ["3.conv1"]
    # the classifier's units reach the output: frozen
    assert graph.group_of("7").frozen.all()
    assert not graph.group_of("0").frozen.any()


def test_concat_groups_map_each_branch_to_its_slice_of_the_merge_input():
    graph = dependency_groups(ConcatNet(channels=(8, 4, 6, 8), seed=0), X8)
    a, b = graph.group_of("branch_a"), graph.group_of("branch_b")
    pos, units = a.consumers["merge"]
    assert pos.tolist() == [0, 1, 2, 3] and units.tolist() == [0, 1, 2, 3]
    pos, units = b.consumers["merge"]
    assert pos.tolist() == [4, 5, 6, 7, 8, 9] and units.tolist() == [0, 1, 2, 3, 4, 5]
    assert list(a.norms) == ["bn_a"] and list(b.norms) == ["bn_b"]
    stem = graph.group_of("stem")
    assert set(stem.consumers) == {"branch_a", "branch_b"}


def test_flatten_maps_each_channel_to_its_hw_columns():
    graph = dependency_groups(pk.models.lenet5(seed=0), X28)
    pos, units = graph.group_of("3").consumers["7"]       # 16 channels of 5x5 into Linear(400, 120)
    assert pos.tolist() == list(range(400))
    assert units.tolist() == np.repeat(np.arange(16), 25).tolist()


def test_untraceable_ops_freeze_their_channels():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6, seed=0)
            self.b = nn.Linear(6, 3, seed=1)
            self.c = nn.Linear(6, 3, seed=2)

        def forward(self, x):
            h = self.a(x).sigmoid()          # sigmoid(0) = 0.5: a removed neuron would not vanish
            return self.b(h) + self.c(self.a(x).relu() if False else h)
    graph = dependency_groups(Odd(), np.ones((2, 4), np.float32))
    assert graph.group_of("a").frozen.all()
    assert graph.group_of("b").frozen.all()   # reaches the output


def test_plot_dependency_graph_draws_one_node_per_layer_and_colours_coupled_layers_alike():
    import matplotlib.pyplot as plt

    model = pk.models.resnet_small(seed=0)
    ax = plot_dependency_graph(model, X28)
    graph = dependency_groups(model, X28)
    assert len(ax.collections) == len(graph.layers)
    colour = {t.get_text().split()[0]: c.get_facecolor()[0].tolist() for t, c in zip([t for t in ax.texts if t.get_text()], ax.collections)}
    assert colour["0"] == colour["3.conv2"] == colour["1"]           # coupled by the residual
    assert colour["0"] != colour["3.conv1"]
    assert "groups" in ax.get_title()
    assert "<table>" in graph._repr_html_() and "DependencyGroup" in repr(graph)
    plt.close("all")


# ------------------------------------------------------------------ masks and counting
def test_neuron_pruning_removes_the_smallest_l1_rows_with_torch_counting():
    # 5 hidden neurons with row L1 norms 6, 1, 4, 2, 8 -> amount 0.5 removes round(2.5) = 2: rows 1 and 3
    w1 = [[3, 3], [0.5, -0.5], [-2, 2], [1, 1], [4, -4]]
    model = nn.Sequential(_linear(w1), nn.ReLU(), _linear(np.ones((3, 5))))
    report = prune_structured(model, 0.5, structure="neuron")
    mask = model[0].weight.mask
    assert mask.sum(axis=1).tolist() == [2, 0, 2, 0, 2]
    assert model[0].bias.mask.tolist() == [1, 0, 1, 0, 1]
    assert model[0].bias.data[1] == 0 and model[0].bias.data[3] == 0
    assert model[2].weight.mask is None                   # the output layer keeps all its units
    assert report.kept("0") == 3 and report.kept("2") == 3
    # again: round(0.5 * 3) = 2 of the 3 left (norms 6, 4, 8): rows 2 and 0
    prune_structured(model, 0.5, structure="neuron")
    assert model[0].weight.mask.sum(axis=1).tolist() == [0, 0, 0, 0, 2]


def test_l2_and_l1_rank_differently():
    # row L1: [4, 3.2]; row L2: [2, 3.2] -> L1 removes row 1, L2 removes row 0
    w1 = [[1, 1, 1, 1], [3.2, 0, 0, 0]]
    for score, removed in (("l1", 1), ("l2", 0)):
        model = nn.Sequential(_linear(w1), nn.ReLU(), _linear(np.ones((2, 2))))
        prune_structured(model, 1, structure="neuron", score=score)
        assert model[0].weight.mask.sum(axis=1).tolist()[removed] == 0, score


def test_fpgm_removes_the_filter_nearest_the_geometric_median_lowest_index_on_ties():
    # filters 0, 1, 2, 10: summed distances 13, 11, 11, 27 -> filter 1 (tie with 2, lowest index first)
    w1 = np.array([[0.0], [1.0], [2.0], [10.0]])
    model = nn.Sequential(_linear(w1), nn.ReLU(), _linear(np.ones((2, 4))))
    prune_structured(model, 1, structure="neuron", score="fpgm")
    assert model[0].weight.mask[:, 0].tolist() == [1, 0, 1, 1]


def test_channel_pruning_masks_filters_bias_and_the_following_batchnorm():
    model = randomise_bn(vgg_small(seed=0, width=4))
    conv, bn = model[0], model[1]
    norms = np.abs(conv.weight.data).reshape(4, -1).sum(axis=1)
    prune_structured(model, 0.5, example_input=X28)
    removed = np.flatnonzero(conv.weight.mask.reshape(4, -1).sum(axis=1) == 0)
    assert sorted(removed.tolist()) == sorted(np.argsort(norms, kind="stable")[:2].tolist())
    assert (conv.weight.data[removed] == 0).all()
    assert (bn.weight.data[removed] == 0).all() and (bn.bias.data[removed] == 0).all()
    assert bn.weight.mask[removed].sum() == 0 and bn.weight.mask.sum() == 2
    # the masked channels output exactly 0 after the BatchNorm
    model.eval()
    h = model[1](model[0](pk.Tensor(X28))).data
    assert (h[:, removed] == 0).all() and (h[:, np.setdiff1d(np.arange(4), removed)] != 0).any()


def test_bn_scale_removes_the_smallest_gammas_and_global_scope_ranks_across_layers():
    model = vgg_small(seed=0, width=2)
    model[1].weight.data[:] = [0.9, 0.05]     # layer 0's channels
    model[4].weight.data[:] = [0.01, 0.02]    # layer 3's channels: both smaller
    for i in (8, 11, 15):
        model[i].weight.data[:] = 1.0 + np.arange(model[i].num_features)
    report = prune_structured(model, 2, structure="channel", score="bn_scale", scope="global", example_input=X28)
    # the two smallest gammas overall are both in layer 3, but every group keeps a unit: 0.01 goes,
    # then the best removed one is given back and nothing else of that group goes
    assert model[4].weight.mask.tolist() == [0, 1]
    assert report.new == 1
    model2 = vgg_small(seed=0, width=2)
    model2[1].weight.data[:] = [0.9, 0.05]
    prune_structured(model2, 1, structure="channel", score="bn_scale", example_input=X28, ignored_layers=["3"])
    assert model2[1].weight.mask.tolist() == [1, 0] and model2[4].weight.mask is None


def test_taylor_needs_data_and_random_is_seeded():
    data = (X28, np.array([1, 2]))
    with pytest.raises(ValueError, match="prune_structured\\(\\): data must be"):
        prune_structured(pk.models.lenet5(seed=0), 0.5, score="taylor", example_input=X28)
    model = pk.models.lenet5(seed=0)
    report = prune_structured(model, 0.5, score="taylor", data=data, example_input=X28)
    assert report.kept("0") == 3
    masks = []
    for _ in range(2):
        model = pk.models.lenet5(seed=0)
        prune_structured(model, 0.5, score="random", seed=3, example_input=X28)
        masks.append(model[0].weight.mask.copy())
    assert np.array_equal(*masks)


def test_residual_units_are_removed_from_every_coupled_layer():
    model = pk.models.resnet_small(seed=0)
    prune_structured(model, 0.25, example_input=X28)
    gone = lambda p: np.flatnonzero(p.mask.reshape(p.shape[0], -1).sum(axis=1) == 0).tolist()  # noqa: E731
    assert gone(model[0].weight) == gone(model[3].conv2.weight) == gone(model[1].weight) == \
        gone(model[3].bn2.bias)
    assert len(gone(model[0].weight)) == 4                # round(0.25 * 16)


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9, 1.0])
def test_output_layer_keeps_its_units_and_every_group_keeps_one(amount):
    model = pk.models.lenet5(seed=0)
    report = prune_structured(model, amount, example_input=X28)
    assert model[11].weight.mask is None and model[11].weight.shape == (10, 84)
    assert all(r["kept"] >= 1 for r in report.rows)
    if amount == 1.0:
        assert report.kept("0") == 1 and report.kept("7") == 1


@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5, 0.7])
def test_round_to_keeps_multiples(amount):
    model = pk.models.resnet_small(seed=0)
    report = prune_structured(model, amount, example_input=X28, round_to=8)
    for r in report.rows:
        if not r["frozen"]:
            assert r["kept"] % 8 == 0, r
    assert (report.new > 0) == (amount > 0.1)   # 10% of 16 leaves 14, rounded up to 16: nothing goes
    assert "<table>" in report._repr_html_() and "total" in repr(report)


def test_report_table_clips_long_producer_lists_and_totals_the_units():
    from prunekit.pruning.structured import StructuredReport

    rep = StructuredReport([
        dict(group=0, producers=["0"], kind="neuron", units=20, frozen=0, removed=5, new=5, kept=15),
        dict(group=1, producers=["a.very.long.layer", "another.long.layer", "x<y"], kind="channel", units=64,
             frozen=3, removed=12, new=2, kept=52)])
    lines = repr(rep).splitlines()
    assert lines[0] == "group kind     producers                       units frozen  removed   new  kept"
    assert lines[1] == "-" * 80 == lines[4]
    # 30 characters at most: 27 of "a.very.long.layer, another.long.layer, x<y" and "..."
    assert lines[3] == "    1 channel  a.very.long.layer, another....     64      3       12     2    52"
    assert lines[5] == "total                                             84              17     7    67"
    html = rep._repr_html_()
    assert "<td>a.very.long.layer, another.long.layer, x&lt;y</td>" in html    # whole, escaped
    # the total row: sums as header cells, blanks where a sum means nothing (kind, frozen)
    assert html.endswith("<tr><th>total</th><td></td><td></td><th>84</th><td></td><th>17</th><th>7</th>"
                         "<th>67</th></tr></table>")


def test_report_plot():
    import matplotlib.pyplot as plt

    report = prune_structured(pk.models.lenet_300_100(seed=0), 0.5, structure="neuron")
    ax = report.plot()
    assert ax.get_xlabel().startswith("units") and len(ax.patches) == 2 * len(report.rows)
    plt.close("all")


def test_neuron_structure_leaves_convolutions_alone():
    model = pk.models.lenet5(seed=0)
    prune_structured(model, 0.5, structure="neuron", example_input=X28)
    assert model[0].weight.mask is None and model[3].weight.mask is None
    assert model[7].weight.mask.sum(axis=1).astype(bool).sum() == 60


# ------------------------------------------------------------------ N:M
def test_nm_mask_keeps_the_n_largest_of_every_m_lowest_index_dropped_on_ties():
    s = np.array([[4, 1, 3, 2, 1, 1, 1, 1]])
    assert nm_mask(s, 2, 4).astype(int).tolist() == [[1, 0, 1, 0, 0, 0, 1, 1]]


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_nm_pruning_keeps_exactly_n_of_every_m_in_every_layer_output_layer_included(pattern):
    n, m = map(int, pattern.split(":"))
    model = pk.models.mlp([16, 24, 8], seed=0)
    prune_structured(model, None, structure=pattern)
    for layer in (model[0], model[2]):
        w, mask = layer.weight.data, layer.weight.mask
        groups = mask.reshape(mask.shape[0], -1, m)
        assert (groups.sum(axis=-1) == n).all()
        # the kept ones are the largest magnitudes of their group
        mags = np.abs(w).reshape(groups.shape)
        kept_min = np.where(groups == 1, mags, np.inf).min(axis=-1)
        dropped_max = np.where(groups == 0, mags, -np.inf).max(axis=-1)
        assert (kept_min >= dropped_max).all()


def test_nm_on_conv_groups_input_channels_at_each_kernel_position():
    model = vgg_small(seed=0, width=4)
    prune_structured(model, None, structure="2:4", ignored_layers=[model[0]])
    mask = model[3].weight.mask                            # (4, 4, 3, 3)
    assert (mask.sum(axis=1) == 2).all()
    assert model[0].weight.mask is None


def test_nm_refuses_widths_not_divisible_by_m():
    model = pk.models.mlp([10, 8, 3], seed=0)
    with pytest.raises(ValueError, match=r"prune_structured\(\): structure must be 'N:M' with M dividing.*'0' has 10"):
        prune_structured(model, None, structure="2:4")
    assert model[0].weight.mask is None and model[2].weight.mask is None   # nothing half-done
    with pytest.raises(ValueError, match="not a multiple of 4"):
        prune_structured(pk.models.lenet5(seed=0), None, structure="2:4")   # first conv has 1 channel


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("structure, match", [
    ("filter", "structure must be 'neuron', 'channel' or 'N:M'"),
    ("4:4", "1 <= N < M"), ("5:4", "1 <= N < M"), ("0:4", "1 <= N < M"), ("a:b", "integers"),
])
def test_bad_structures(structure, match):
    with pytest.raises(ValueError, match=match):
        prune_structured(pk.models.mlp([8, 8, 2], seed=0), 0.5, structure=structure)
    with pytest.raises(TypeError, match="structure must be"):
        parse_structure(24)


def test_other_bad_input():
    model = pk.models.mlp([8, 8, 2], seed=0)
    with pytest.raises(ValueError, match=r"prune_structured\(\): amount must be"):
        prune_structured(model, 1.5)
    with pytest.raises(ValueError, match="round_to must be"):
        prune_structured(model, 0.5, round_to=0)
    with pytest.raises(ValueError, match="ignored_layers must be names of layers"):
        prune_structured(model, 0.5, ignored_layers=["nope"])
    with pytest.raises(ValueError, match="score must be one of"):
        prune_structured(model, 0.5, score="nope")
    with pytest.raises(ValueError, match="score must be a score other than 'bn_scale'"):
        prune_structured(model, 0.5, score="bn_scale")
    with pytest.raises(ValueError, match="score must be an element score for N:M"):
        prune_structured(model, 0.5, structure="2:4", score="fpgm")
    with pytest.raises(ValueError, match="example_input must be an input batch"):
        prune_structured(pk.models.lenet5(seed=0), 0.5)
    with pytest.raises(ValueError, match="amount must be at most"):
        prune_structured(model, 9)


def test_cat_backward_splits_the_gradient():
    a = pk.Tensor(np.ones((2, 2, 1, 1)), requires_grad=True)
    b = pk.Tensor(np.ones((2, 3, 1, 1)), requires_grad=True)
    weights = np.arange(10, dtype=np.float32).reshape(2, 5, 1, 1)
    (cat([a, b]) * weights).sum().backward()
    assert np.array_equal(a.grad, weights[:, :2]) and np.array_equal(b.grad, weights[:, 2:])
    p, q = (pk.Tensor(np.random.default_rng(i).normal(size=(2, c, 1, 1)), requires_grad=True)
            for i, c in ((0, 2), (1, 1)))
    assert pk.gradcheck(lambda p, q: cat([p, q]) ** 2, [p, q])


def test_group_of_an_unknown_layer_names_the_valid_ones():
    graph = dependency_groups(pk.models.mlp([4, 3, 2], seed=0))
    with pytest.raises(KeyError, match=r"group_of\(\): layer must be the name of a Linear or Conv2d .*'0', '2'"):
        graph.group_of("1")


def test_trace_leaves_the_model_as_it_was_and_refuses_shared_layers():
    model = vgg_small(seed=0, width=2).train()
    stats = [m.running_mean.copy() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    dependency_groups(model, X28)
    assert model.training and all(m.training for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(np.array_equal(a, m.running_mean) for a, m in
               zip(stats, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, seed=0)

        def forward(self, x):
            return self.a(self.a(x))
    with pytest.raises(ValueError, match="layer 'a' called twice"):
        dependency_groups(Twice())


@settings(max_examples=15, deadline=None)
@given(m=st.integers(2, 8), data=st.data())
def test_nm_mask_property(m, data):
    n = data.draw(st.integers(1, m - 1))
    rows, groups = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    scores = np.array(data.draw(st.lists(st.integers(0, 3), min_size=rows * groups * m, max_size=rows * groups * m)),
                      dtype=float).reshape(rows, groups * m)       # small ints: many ties
    keep = nm_mask(scores, n, m).reshape(rows, groups, m)
    s = scores.reshape(rows, groups, m)
    assert (keep.sum(axis=-1) == n).all()
    assert (np.where(keep, s, np.inf).min(axis=-1) >= np.where(keep, -np.inf, s).max(axis=-1)).all()
    # ties: among equal scores at the cut, the dropped ones have the lower indices
    for r, g in np.ndindex(rows, groups):
        cut = np.where(keep[r, g], s[r, g], np.inf).min()
        tied = np.flatnonzero(s[r, g] == cut)
        dropped = [i for i in tied if not keep[r, g, i]]
        kept = [i for i in tied if keep[r, g, i]]
        assert not dropped or not kept or max(dropped) < min(kept)
