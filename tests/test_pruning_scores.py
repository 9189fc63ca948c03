"""Importance scores against independent references.

The reference is a small MLP written again here in plain NumPy, with gradients from
central finite differences (float64). Each score must equal its formula evaluated
with those gradients; the oracle must equal brute-force loss differences; and the
gradients the scores rely on are gradchecked through the model.
"""
import numpy as np
import pytest

from prunekit import models, nn, optim
from prunekit import pruning as P
from prunekit.data import DataLoader
from prunekit.pruning.scores import ScoreContext
from prunekit.tensor import gradcheck
from prunekit.train import fit

RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 3))
Y_CLS = RNG.integers(0, 3, 10)
Y_REG = RNG.standard_normal(10)
NAMES = ["0.weight", "2.weight"]


def make_model(out=3, dtype=np.float64, seed=1):
    m = models.mlp([3, 4, out], seed=seed)
    for p in m.parameters():
        p.data = p.data.astype(dtype)
    return m


def weights_of(m):
    return {n: p.data.astype(np.float64).copy() for n, p in m.named_parameters()}


def ref_loss(W, x, y, kind):
    h = np.maximum(x @ W["0.weight"].T + W["0.bias"], 0)
    out = h @ W["2.weight"].T + W["2.bias"]
    if kind == "mse":
        return float(np.mean((out[:, 0] - y) ** 2))
    z = out - out.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fd_grad(W, x, y, kind, eps=1e-6):
    g = {}
    for n in NAMES:
        g[n] = np.zeros_like(W[n])
        for j in np.ndindex(W[n].shape):
            old = W[n][j]
            W[n][j] = old + eps
            up = ref_loss(W, x, y, kind)
            W[n][j] = old - eps
            down = ref_loss(W, x, y, kind)
            W[n][j] = old
            g[n][j] = (up - down) / (2 * eps)
    return g


BATCHES = [(0, 4), (4, 8), (8, 10)]


@pytest.fixture(scope="module", params=["cross_entropy", "mse"])
def setup(request):
    kind = request.param
    y = Y_CLS if kind == "cross_entropy" else Y_REG
    m = make_model(out=3 if kind == "cross_entropy" else 1)
    W = weights_of(m)
    full = fd_grad(W, X, y, kind)
    per_batch = [(b - a, fd_grad(W, X[a:b], y[a:b], kind)) for a, b in BATCHES]
    per_sample = [fd_grad(W, X[i:i + 1], y[i:i + 1], kind) for i in range(len(X))]
    return kind, y, m, W, full, per_batch, per_sample


def scores(m, name, y, kind, **kw):
    return P.compute_scores(m, name, data=(X, y), loss=kind, batch_size=4, **kw)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_gradcheck_loss_through_model(setup):
    kind, y, m, *_ = setup
    ctx = ScoreContext(m, {n: p for n, p in m.named_parameters()}, (X, y), kind)
    params = [p for _, p in m.named_parameters()]
    assert gradcheck(lambda *ps: ctx.batch_loss(X, y), params)
    assert gradcheck(lambda *ps: ctx.batch_loss(X[:1], y[:1]), params)   # per-sample pieces (OBD)


def test_gradient_pieces_equal_finite_differences(setup):
    kind, y, m, W, full, per_batch, per_sample = setup
    ctx = ScoreContext(m, {n: p for n, p in m.named_parameters() if n in NAMES}, (X, y), kind,
                       options={"batch_size": 4})
    for n in NAMES:
        close(ctx.mean_gradient()[n], full[n])
        close(ctx.fisher_diagonal()[n], np.mean([g[n] ** 2 for g in per_sample], axis=0))
    got = list(ctx.batch_gradients())
    assert [b for b, _ in got] == [4, 4, 2]
    for (_, g), (_, ref) in zip(got, per_batch):
        close(g["2.weight"], ref["2.weight"])


def test_each_score_equals_its_formula(setup):
    kind, y, m, W, full, per_batch, per_sample = setup
    n_total = len(X)
    ref = {
        "magnitude": {n: np.abs(W[n]) for n in NAMES},
        "l2": {n: np.abs(W[n]) for n in NAMES},
        "gradient": {n: sum(b * np.abs(g[n]) for b, g in per_batch) / n_total for n in NAMES},
        "taylor": {n: np.abs(W[n] * full[n]) for n in NAMES},
        "obd": {n: 0.5 * W[n] ** 2 * np.mean([g[n] ** 2 for g in per_sample], axis=0) for n in NAMES},
        "movement": {n: -W[n] * sum(g[n] for _, g in per_batch) for n in NAMES},
    }
    total = sum(np.abs(W[n] * full[n]).sum() for n in NAMES)
    ref["snip"] = {n: np.abs(W[n] * full[n]) / total for n in NAMES}
    for name, expected in ref.items():
        got = scores(m, name, y, kind)
        for n in NAMES:
            close(got[n], expected[n])
    assert sum(v.sum() for v in scores(m, "snip", y, kind).values()) == pytest.approx(1.0)


def test_oracle_equals_brute_force(setup):
    kind, y, m, W, *_ = setup
    base = ref_loss(W, X, y, kind)
    got = scores(m, "oracle", y, kind)
    for n in NAMES:
        expected = np.zeros_like(W[n])
        for j in np.ndindex(W[n].shape):
            V = {k: v.copy() for k, v in W.items()}
            V[n][j] = 0.0
            expected[j] = ref_loss(V, X, y, kind) - base
        np.testing.assert_allclose(got[n], expected, rtol=1e-9, atol=1e-12)


def test_oracle_on_float32_model_uses_float64_and_restores_weights():
    m = make_model(dtype=np.float32)
    arrays = [p.data for p in m.parameters()]
    W = weights_of(m)
    got = P.compute_scores(m, "oracle", data=(X.astype(np.float32), Y_CLS))
    assert all(p.data is a and a.dtype == np.float32 for p, a in zip(m.parameters(), arrays))
    j = (1, 2)
    V = {k: v.copy() for k, v in W.items()}
    V["0.weight"][j] = 0
    assert got["0.weight"][j] == pytest.approx(ref_loss(V, X.astype(np.float32).astype(np.float64), Y_CLS,
                                                        "cross_entropy") - ref_loss(W, X.astype(np.float32).astype(np.float64), Y_CLS, "cross_entropy"), rel=1e-9, abs=1e-13)


def test_oracle_skips_pruned_and_refuses_big_layers():
    m = make_model()
    P.prune(m, 0.5)
    s = P.compute_scores(m, "oracle", data=(X, Y_CLS))
    for i in (0, 2):
        pruned = m[i].weight.mask == 0
        assert np.all(s[f"{i}.weight"][pruned] == 0)
        assert np.count_nonzero(s[f"{i}.weight"][~pruned]) >= 4  # (a weight into a dead ReLU scores 0 too)
    big = models.mlp([100, 120, 10], seed=0)
    with pytest.raises(ValueError, match="score.*oracle.*13200 weights"):
        P.prune(big, 0.5, score="oracle", data=(np.zeros((2, 100), np.float32), np.zeros(2, int)))
    # the limit can be raised explicitly
    small = make_model()
    P.compute_scores(small, "oracle", data=(X, Y_CLS), max_weights=24)
    with pytest.raises(ValueError, match="max_weights=23"):
        P.compute_scores(small, "oracle", data=(X, Y_CLS), max_weights=23)


def test_scoring_restores_grads_and_training_mode():
    m = make_model()
    m.train()
    sentinel = np.full(m[0].weight.shape, 7.0)
    m[0].weight.grad = sentinel
    scores(m, "taylor", Y_CLS, "cross_entropy")
    assert m.training and m[0].training
    assert m[0].weight.grad is sentinel and m[2].weight.grad is None


def test_dataloader_data_equals_pair_data():
    m = make_model()
    a = P.compute_scores(m, "gradient", data=DataLoader(X, Y_CLS, 4))
    b = P.compute_scores(m, "gradient", data=(X, Y_CLS), batch_size=4)
    for n in NAMES:
        close(a[n], b[n])


def test_random_score_is_seeded():
    m = make_model()
    a = P.compute_scores(m, "random", seed=3)
    b = P.compute_scores(m, "random", seed=3)
    c = P.compute_scores(m, "random", seed=4)
    assert all(np.array_equal(a[n], b[n]) for n in NAMES)
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    m1, m2 = make_model(), make_model()
    P.prune(m1, 0.5, score="random", seed=0)
    P.prune(m2, 0.5, score="random", seed=0)
    assert np.array_equal(m1[0].weight.mask, m2[0].weight.mask)


def test_register_custom_score():
    @P.register_score("test_cubic", overwrite=True)
    def cubic(ctx):
        """|w|^3."""
        return {n: -np.abs(w) ** 3 for n, w in ctx.weights.items()}   # keeps the smallest

    assert "test_cubic" in P.available_scores()
    m = nn.Sequential(nn.Linear(3, 1))
    m[0].weight.data[...] = [[1.0, 3.0, 2.0]]
    P.prune(m, 1, score="test_cubic")
    np.testing.assert_array_equal(m[0].weight.mask, [[1, 0, 1]])
    with pytest.raises(ValueError, match="name.*overwrite=True"):
        P.register_score("test_cubic", cubic)
    # a plain callable works too
    P.prune(m, 1, score=lambda ctx: {n: np.abs(w) for n, w in ctx.weights.items()})
    np.testing.assert_array_equal(m[0].weight.mask, [[0, 0, 1]])


def test_reduce_groups():
    s = np.array([[3.0, -4.0], [1.0, 0.0]])
    np.testing.assert_allclose(P.reduce_groups(s, 1, how="sum"), [7.0, 1.0])
    np.testing.assert_allclose(P.reduce_groups(s, 1, how="l2"), [5.0, 1.0])
    assert P.get_score("l2").group_reduce == "l2" and P.get_score("magnitude").group_reduce == "sum"


def test_movement_tracker_matches_hand_accumulation():
    x = RNG.standard_normal((12, 3)).astype(np.float32)
    y = RNG.integers(0, 3, 12)
    m1, m2 = make_model(dtype=np.float32), make_model(dtype=np.float32)
    tracker = P.MovementTracker()
    fit(m1, DataLoader(x, y, 4), optim.SGD(m1.parameters(), lr=0.1), 2, callbacks=[tracker], progress=False)
    # the same training by hand, accumulating -g * w_before
    from prunekit import functional as F
    from prunekit.tensor import Tensor
    opt = optim.SGD(m2.parameters(), lr=0.1)
    acc = {n: np.zeros(m2[int(n[0])].weight.shape) for n in NAMES}
    for _ in range(2):
        for i in range(0, 12, 4):
            opt.zero_grad()
            F.cross_entropy(m2(Tensor(x[i:i + 4])), y[i:i + 4]).backward()
            for n in NAMES:
                w = m2[int(n[0])].weight
                acc[n] -= w.grad * w.data
            opt.step()
    for n in NAMES:
        np.testing.assert_allclose(tracker.scores[n], acc[n], rtol=1e-5, atol=1e-7)
    P.prune(m1, 0.5, score=tracker)
    keep = P.bottom_k_mask(acc["0.weight"], 6)
    np.testing.assert_array_equal(m1[0].weight.mask != 0, keep)


def test_spearman_hand_computed():
    # ranks of b with a tie: [1, 2, 3.5, 5, 3.5]; rho = 8 / sqrt(10 * 9.5)
    assert P.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / np.sqrt(95))
    assert P.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert P.spearman({"a": [1, 2], "b": [3]}, {"a": [3, 2], "b": [1]}) == pytest.approx(-1.0)
    # masks keep only unpruned entries: [1, 3] vs [2, 1] -> -1
    assert P.spearman(np.array([1, 2, 3]), np.array([2, 9, 1]), masks=np.array([1, 0, 1])) == pytest.approx(-1)
    with pytest.raises(ValueError, match="b must be"):
        P.spearman([1, 2, 3], [1, 2])


def test_grade_scores_against_oracle():
    m = make_model()
    P.prune(m, 0.25)
    g = P.grade_scores(m, (X, Y_CLS), scores=("magnitude", "oracle_abs", "taylor"))
    assert g["oracle_abs"] == pytest.approx(1.0)
    masks = P.masks(m)
    delta = P.compute_scores(m, "oracle", data=(X, Y_CLS))
    direct = P.spearman(P.compute_scores(m, "magnitude"), {n: np.abs(v) for n, v in delta.items()}, masks=masks)
    assert g["magnitude"] == pytest.approx(direct)
    signed = P.grade_scores(m, (X, Y_CLS), scores=("movement",), reference="oracle")
    assert signed["movement"] == pytest.approx(P.spearman(P.compute_scores(m, "movement", data=(X, Y_CLS)), delta,
                                                          masks=masks))


def test_oracle_generic_path_equals_sequential_fast_path():
    class Wrapped(nn.Module):   # not a Sequential: every weight needs a full forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    m = make_model()
    fast = P.compute_scores(m, "oracle", data=(X, Y_CLS), batch_size=3)
    slow = P.compute_scores(Wrapped(m), "oracle", data=(X, Y_CLS), batch_size=3)
    for n in NAMES:
        np.testing.assert_allclose(slow["inner." + n], fast[n], rtol=1e-9, atol=1e-14)


def test_grade_scores_routes_each_option_to_the_scores_that_read_it():
    """max_weights is the oracle's and max_samples OBD's: grading must accept both, and refuse a typo."""
    import prunekit as pk
    from prunekit import pruning

    rng = np.random.default_rng(0)
    x = rng.random((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = pk.models.mlp([6, 5, 3], seed=0)
    rho = pruning.grade_scores(model, (x, y), scores=("magnitude", "obd"), max_weights=20000, max_samples=16)
    assert set(rho) == {"magnitude", "obd"} and all(-1 <= v <= 1 for v in rho.values())
    with pytest.raises(TypeError, match="max_weight"):
        pruning.grade_scores(model, (x, y), scores=("magnitude",), max_weight=20000)
