"""Masks from prune(): hand-computed layer and global masks, ties, int amounts, repeated pruning.

The expected masks below were worked out by hand with torch.nn.utils.prune's rules
(count = round(amount * n_unpruned), remove the k smallest |w|); they were also
checked once against torch 2.13 (l1_unstructured / global_unstructured) in a
throw-away script -- these tests do not need torch.
"""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from prunekit import nn
from prunekit import pruning as P
from prunekit.pruning import ranking


def linear(w):
    w = np.asarray(w, dtype=np.float32)
    layer = nn.Linear(w.shape[1], w.shape[0])
    layer.weight.data[...] = w
    return layer


def model_of(*weights):
    return nn.Sequential(*[linear(w) for w in weights])


# ------------------------------------------------------------------ layer scope
def test_layer_mask_hand_computed():
    m = model_of([[0.5, -0.1, 0.3], [-0.7, 0.2, 0.05]])
    report = P.prune(m, 0.5)
    # round(0.5 * 6) = 3 smallest |w|: 0.05, 0.1, 0.2
    expected = np.array([[1, 0, 1], [1, 0, 0]], np.float32)
    np.testing.assert_array_equal(m[0].weight.mask, expected)
    np.testing.assert_array_equal(m[0].weight.data, np.array([[0.5, 0, 0.3], [-0.7, 0, 0]], np.float32))
    assert m[0].weight.mask.dtype == m[0].weight.data.dtype
    assert report["0.weight"] == 0.5 and report.total == 0.5
    assert report.rows[0]["new"] == 3


@pytest.mark.parametrize("n, amount, k", [(5, 0.5, 2), (7, 0.5, 4), (9, 0.5, 4), (3, 0.5, 2), (10, 0.25, 2),
                                         (10, 0.35, 4), (4, 1.0, 4), (4, 0.0, 0), (4, 0.1, 0)])
def test_count_is_round_half_even(n, amount, k):
    # Python round: 2.5 -> 2, 3.5 -> 4, 4.5 -> 4, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    assert P.n_to_prune(amount, n) == k
    m = model_of([np.arange(1, n + 1)])
    P.prune(m, amount)
    assert int((m[0].weight.mask == 0).sum()) == k
    # the k smallest are the first k (weights are 1..n)
    np.testing.assert_array_equal(m[0].weight.mask[0], (np.arange(n) >= k).astype(np.float32))


def _torch_count(amount, n):
    """torch's ``round(amount * n)`` restated exactly: the product of the amount's value and
    ``n`` is rounded once to the amount's own precision (IEEE multiplication), then to the
    nearest integer, halves to even (Python's round). With ``n`` < 2**29 the exact product of a
    float32 (24-bit) or float16 (11-bit) significand and ``n`` fits a float64, so ``float(exact)``
    is exact and the cast to the amount's type is the one rounding."""
    exact = Fraction(float(amount)) * n
    product = type(amount)(float(exact)) if isinstance(amount, np.floating) else float(exact)
    return round(Fraction(float(product)))


def test_float32_amount_rounds_in_float32_as_torch():
    # float32(0.7) = 0.699999988; times 5 in float32 = 3.5 exactly -> round half even -> 4 (torch: 4).
    # The same value as a float64 gives 3.49999994 -> 3 (what prunekit did before).
    a = np.float32(0.7)
    assert a * 5 == np.float32(3.5) and round(float(a) * 5) == 3
    assert P.n_to_prune(a, 5) == 4
    assert P.n_to_prune(a, np.int64(5)) == 4      # a NumPy count must not promote the product to float64
    assert P.n_to_prune(float(a), 5) == 3         # a Python float keeps float64 arithmetic, as in torch
    assert P.n_to_prune(0.7, 5) == 4              # 0.7 * 5 == 3.5 in float64 too
    m = model_of([np.arange(1, 6)])
    P.prune(m, a)
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 0, 0, 0, 1]])


def test_amount_rounding_matches_torch_over_a_grid():
    differ = 0
    for k in range(101):
        for n in range(1, 101):
            for amount in (np.float32(k / 100), np.float16(k / 100), k / 100, np.float64(k / 100)):
                assert P.n_to_prune(amount, n) == _torch_count(amount, n), (amount, n)
            differ += _torch_count(np.float32(k / 100), n) != round(float(np.float32(k / 100)) * n)
    assert differ == 77                           # the pairs where float32 arithmetic changes the count


@given(amount=st.floats(0, 1, width=32), n=st.integers(1, 10**6))
def test_float32_amount_rounding_property(amount, n):
    assert P.n_to_prune(np.float32(amount), n) == _torch_count(np.float32(amount), n)


def test_amount_keeps_its_type_and_float16_overflow_is_refused():
    assert type(ranking.check_amount(np.float32(0.25))) is np.float32
    assert type(ranking.check_amount(np.int64(3))) is int
    with pytest.raises(ValueError, match=r"n_to_prune\(\): amount must be a fraction whose product with 70000"):
        P.n_to_prune(np.float16(0.5), 70000)     # float16 * 70000 overflows to inf (torch: OverflowError)


def test_ties_lowest_flat_index_first():
    m = model_of([[1.0, -1.0, 2.0], [1.0, 0.5, -1.0]])
    P.prune(m, 2)  # 0.5, then the first of the four |w| = 1 (flat index 0)
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 1, 1], [1, 0, 1]])
    P.prune(m, 2)  # the remaining ties at flat indices 1 and 3
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 0, 1], [0, 0, 1]])


def test_int_amounts_and_repeated_pruning():
    w = np.array([[8, 1, 6, 3], [5, 2, 7, 4]], np.float32)
    m = model_of(w)
    P.prune(m, 3)                       # 1, 2, 3
    np.testing.assert_array_equal(m[0].weight.mask, [[1, 0, 1, 0], [1, 0, 1, 1]])
    P.prune(m, 0.5)                     # round(0.5 * 5 remaining) = 2: 4, 5
    np.testing.assert_array_equal(m[0].weight.mask, [[1, 0, 1, 0], [0, 0, 1, 0]])
    P.prune(m, 0.5)                     # round(0.5 * 3) = 2: 6, 7
    np.testing.assert_array_equal(m[0].weight.mask, [[1, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="amount.*unpruned weights \\(1\\)"):
        P.prune(m, 2)
    P.prune(m, 1)
    assert P.sparsity(m).total == 1.0


def test_repeated_pruning_keeps_pruned_even_if_weights_regrow():
    m = model_of([[0.1, 0.2, 0.3, 0.4]])
    P.prune(m, 0.5)
    m[0].weight.data[...] = [[9.0, 9.0, 0.05, 0.4]]  # someone writes into pruned slots
    P.prune(m, 0.5)   # ranks only the 2 unpruned entries: 0.05 goes
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 0, 0, 1]])
    np.testing.assert_array_equal(m[0].weight.data, np.float32([[0, 0, 0, 0.4]]))


def test_conv_weights_rank_in_c_order():
    m = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False))
    w = np.array([4, 3, 7, 1, 8, 2, 6, 5], np.float32).reshape(2, 1, 2, 2)
    m[0].weight.data[...] = w
    P.prune(m, 0.5)
    np.testing.assert_array_equal(m[0].weight.mask.reshape(-1), [0, 0, 1, 0, 1, 0, 1, 1])


# ------------------------------------------------------------------ global scope
def test_global_mask_hand_computed_and_repeated():
    m = model_of([[0.1, 0.9], [0.5, 0.3]], [[0.2, 0.4, -0.05]])
    P.prune(m, 0.5, scope="global")  # round(3.5) = 4: 0.05, 0.1, 0.2, 0.3
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(m[1].weight.mask, [[0, 1, 0]])
    r = P.prune(m, 0.5, scope="global")  # round(1.5) = 2 of {0.9, 0.5, 0.4}: 0.4, 0.5
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 1], [0, 0]])
    np.testing.assert_array_equal(m[1].weight.mask, [[0, 0, 0]])
    assert r["1.weight"] == 1.0 and r.total == pytest.approx(6 / 7)


def test_global_ties_earlier_layer_first_and_int_amount():
    m = model_of([[2.0, 1.0]], [[1.0, 1.0]])
    P.prune(m, 2, scope="global")
    np.testing.assert_array_equal(m[0].weight.mask, [[1, 0]])
    np.testing.assert_array_equal(m[1].weight.mask, [[0, 1]])


def test_layers_argument_names_and_modules():
    m = model_of([[1.0, 2.0]], [[1.0, 2.0]], [[1.0, 2.0]])
    P.prune(m, 0.5, layers=["1"])
    assert m[0].weight.mask is None and m[2].weight.mask is None
    np.testing.assert_array_equal(m[1].weight.mask, [[0, 1]])
    P.prune(m, 0.5, layers=[m[2], "0.weight"])
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 1]])
    np.testing.assert_array_equal(m[2].weight.mask, [[0, 1]])
    assert m[0].bias.mask is None


def test_dict_amounts_per_layer():
    m = model_of([[1.0, 2.0, 3.0, 4.0]], [[4.0, 3.0, 2.0, 1.0]])
    P.prune(m, {"0.weight": 0.25, "1.weight": 3})
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 1, 1, 1]])
    np.testing.assert_array_equal(m[1].weight.mask, [[1, 0, 0, 0]])


def test_prune_to_counts_already_pruned():
    m = model_of(np.arange(1, 21, dtype=np.float32).reshape(2, 10), np.arange(1, 11, dtype=np.float32)[None])
    P.prune(m, 0.5)
    P.prune_to(m, 0.75)
    assert P.sparsity(m)["0.weight"] == 0.75 and P.sparsity(m)["1.weight"] == 0.8  # round(7.5) = 8
    P.prune_to(m, 0.5)  # never un-prunes
    assert P.sparsity(m)["0.weight"] == 0.75
    P.prune_to(m, 0.9, scope="global")
    assert P.sparsity(m).pruned == 27
    P.prune_to(m, {"1.weight": 1.0})
    assert P.sparsity(m)["1.weight"] == 1.0


# ------------------------------------------------------------------ property: independent reference
def reference_mask(scores, mask, amount):
    alive = [i for i in range(len(scores)) if mask[i]]
    k = amount if isinstance(amount, int) else round(amount * len(alive))
    gone = sorted(alive, key=lambda i: (scores[i], i))[:k]
    out = list(mask)
    for i in gone:
        out[i] = False
    return out


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40), st.data())
def test_bottom_k_matches_reference_with_ties(values, data):
    n = len(values)
    mask = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    alive = sum(mask)
    amount = data.draw(st.one_of(st.floats(0, 1), st.integers(0, alive)))
    scores = np.abs(np.array(values, dtype=np.float64))
    k = P.n_to_prune(amount, alive)
    got = P.bottom_k_mask(scores, k, np.array(mask))
    assert got.tolist() == reference_mask(scores.tolist(), mask, amount)


@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=8), min_size=1, max_size=4),
       st.floats(0, 1))
def test_global_masks_match_reference(layers, amount):
    scores = {f"{i}.weight": np.array(v, float) for i, v in enumerate(layers)}
    got = P.global_masks(scores, amount)
    flat = [s for v in layers for s in v]
    ref = reference_mask(flat, [True] * len(flat), amount)
    assert np.concatenate([got[k] for k in scores]).tolist() == ref


# ------------------------------------------------------------------ masks(), remove(), reports
def test_masks_remove_is_pruned_and_report():
    m = model_of([[0.1, 0.2], [0.3, 0.4]], [[1.0, 2.0]])
    assert not P.is_pruned(m) and P.masks(m) == {}
    P.prune(m, 0.5)
    ms = P.masks(m)
    assert list(ms) == ["0.weight", "1.weight"] and ms["0.weight"] is m[0].weight.mask
    text = repr(P.sparsity(m))
    assert "0.weight" in text and "total" in text and "50.0%" in text
    assert "<table>" in P.sparsity(m)._repr_html_()
    P.remove(m)
    assert not P.is_pruned(m)
    np.testing.assert_array_equal(m[0].weight.data, np.float32([[0, 0], [0.3, 0.4]]))
    assert P.sparsity(m).total == pytest.approx(3 / 6)  # counted from the zeros now
    assert P.sparsity(m).as_dict()["1.weight"] == 0.5


def test_set_mask_and_apply_masks():
    m = model_of([[1.0, 2.0, 3.0]])
    P.set_mask(m[0].weight, [[1, 0, 1]])
    np.testing.assert_array_equal(m[0].weight.data, [[1, 0, 3]])
    m[0].weight.data[0, 1] = 5.0
    P.apply_masks(m)
    assert m[0].weight.data[0, 1] == 0
    with pytest.raises(ValueError, match="mask must be"):
        P.set_mask(m[0].weight, [[1, 0.5, 1]])


def test_precomputed_score_dict():
    m = model_of([[1.0, 2.0, 3.0]])
    P.prune(m, 1, score={"0.weight": np.array([[3.0, 1.0, 2.0]])})
    np.testing.assert_array_equal(m[0].weight.mask, [[1, 0, 1]])
