"""One data/loss glue for every function that takes data, forward hooks, and the fine-tune contract.

The main test feeds every data-taking function each accepted data form (a DataLoader,
an (x, y) pair, a dataset object, a list of batches, a generator of batches) and
checks that the results equal those of the DataLoader form: the batches are the same
(8 samples, in order), so training, scores and metrics must be the same too. Arrays
and datasets are cut by ``batch_size``; where a function has no ``batch_size`` (the
evaluations inside the schedules) the result does not depend on how the samples are
batched (mean loss, accuracy), so it must still agree to float64 rounding.
"""
import numpy as np
import pytest

import prunekit as pk
from prunekit import _glue, models, nn, optim
from prunekit import pruning as P
from prunekit.data import DataLoader
from prunekit.tensor import Tensor
from prunekit.train import Callback, FineTune, evaluate, fit, predict
from prunekit.widgets import PruningExplorer

RNG = np.random.default_rng(0)
N, B = 24, 8
X = RNG.standard_normal((N, 4))
Y = RNG.integers(0, 3, N)


class Dataset:
    """A map-style dataset as PyTorch has them: __len__ and __getitem__ -> (x_i, y_i)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


FORMS = {
    "loader": lambda: DataLoader(X, Y, B),
    "pair": lambda: (X, Y),
    "dataset": lambda: Dataset(X, Y),
    "list of batches": lambda: [(X[i:i + B], Y[i:i + B]) for i in range(0, N, B)],
    "generator": lambda: ((X[i:i + B], Y[i:i + B]) for i in range(0, N, B)),
}


def model(seed=1):
    m = models.mlp([4, 6, 3], seed=seed)
    for p in m.parameters():
        p.data = p.data.astype(np.float64)
    return m


def weights(m):
    return {n: p.data.copy() for n, p in m.named_parameters()}


def masks(m):
    return {n: p.mask.copy() for n, p in m.named_parameters() if p.mask is not None}


def factory(params):
    return optim.SGD(params, lr=0.1, momentum=0.9)


DATA_SCORES = [s for s in P.available_scores() if s not in P.scores.DATA_FREE_SCORES]


def trained():
    m = model()
    fit(m, DataLoader(X, Y, B), optim.SGD(m.parameters(), lr=0.1), 3, progress=False)
    return m


# each case: data form factory -> a result to compare (dicts/lists of arrays and floats)
CASES = {
    "fit": lambda d: weights(_fit(d)),
    "evaluate": lambda d: evaluate(trained(), d(), batch_size=B),
    "predict": lambda d: predict(trained(), d(), batch_size=B),
    **{f"compute_scores[{s}]": (lambda d, s=s: P.compute_scores(trained(), s, data=d(), batch_size=B))
       for s in DATA_SCORES},
    "prune": lambda d: masks(_then(trained(), lambda m: P.prune(m, 0.5, score="taylor", data=d()))),
    "batch_prune": lambda d: masks(_then(trained(), lambda m: P.batch_prune(
        m, 0.5, rounds=2, score="gradient", data=d(), batch_size=B))),
    "iterative_prune": lambda d: _iterative(d),
    "AGP": lambda d: _agp(d),
    "lottery_ticket": lambda d: _lottery(d),
    "sensitivity_scan": lambda d: P.sensitivity_scan(trained(), d(), sparsities=[0.5], score="taylor",
                                                     data=d()).values,
    "PruningExplorer": lambda d: _explorer(d),
    "grade_scores": lambda d: P.grade_scores(trained(), d(), scores=("magnitude", "taylor", "gradient"),
                                             batch_size=B),
}


def _then(m, f):
    f(m)
    return m


def _fit(d):
    m = model()
    hist = fit(m, d(), optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 2, batch_size=B, progress=False)
    assert len(hist.epochs) == 2
    return m


def _iterative(d):
    m = trained()
    out = P.iterative_prune(m, 0.5, 2, FineTune(d(), factory, 1, batch_size=B), score="taylor", data=d(),
                            evaluate=d())
    return [weights(m), masks(m), [r["metrics"] for r in out]]


def _agp(d):
    m = trained()
    fit(m, d(), optim.SGD(m.parameters(), lr=0.05), 2, batch_size=B, progress=False,
        callbacks=[P.AGP(0.5, frequency=2, score="taylor", data=d())])
    return [weights(m), masks(m)]


def _lottery(d):
    m = model()
    res = P.lottery_ticket(m, FineTune(d(), factory, 1, batch_size=B), 1, amount=0.3, rewind_step=2,
                           evaluate=d(), controls=())
    return [weights(m), res.masks, [r["metrics"] for r in res.rounds]]


def _explorer(d):
    ex = PruningExplorer(trained(), d(), score_data=d(), scores=("magnitude", "taylor"), score="taylor",
                         sparsity=0.5, grid=(0.0, 0.5))
    r = ex.update(0.7, scope="global")
    return [r["accuracy"], r["loss"], r["layers"], ex.curve("taylor", "global")[1]]


def assert_same(a, b, path="result"):
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{path}[{i}]")
    else:
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                   rtol=1e-9, atol=1e-12, err_msg=path)


_REFERENCE = {}


@pytest.mark.parametrize("form", [f for f in FORMS if f != "loader"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_data_taking_function_accepts_every_data_form(case, form):
    if case not in _REFERENCE:
        _REFERENCE[case] = CASES[case](FORMS["loader"])
    assert_same(CASES[case](FORMS[form]), _REFERENCE[case], f"{case} with {form}")


def test_the_cases_are_not_trivial():
    """The forms must matter: other data gives other results (so equality above means something)."""
    other = {"loader": lambda: DataLoader(X[::-1].copy(), Y, B)}
    for case in ("fit", "evaluate", "compute_scores[taylor]", "sensitivity_scan", "PruningExplorer"):
        with pytest.raises(AssertionError):
            assert_same(CASES[case](other["loader"]), CASES[case](FORMS["loader"]))


def test_arrays_are_cut_in_order_with_the_default_batch_size():
    x = np.arange(600.0).reshape(300, 2)
    got = list(_glue.batches((x, np.arange(300))))
    assert [len(b[0]) for b in got] == [_glue.DEFAULT_BATCH_SIZE, 300 - _glue.DEFAULT_BATCH_SIZE]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)      # in order, not shuffled
    assert [len(b[0]) for b in _glue.batches((x, np.arange(300)), 100)] == [100, 100, 100]


def test_evaluate_with_x_and_y():
    m = trained()
    assert evaluate(m, X, Y) == evaluate(m, (X, Y))
    with pytest.raises(TypeError, match=r"evaluate\(\): y must be an array of targets \(pass the loss by keyword"):
        evaluate(m, (X, Y), "mse")
    with pytest.raises(TypeError, match=r"evaluate\(\): data must be an array of inputs when y is given"):
        evaluate(m, DataLoader(X, Y, B), Y)


# ------------------------------------------------------------------ wrong forms name function and argument
NOT_DATA = r"must be a DataLoader, an \(x, y\) pair of arrays, a dataset .* or an iterable of \(x, y\) batches"


@pytest.mark.parametrize("call, message", [
    (lambda: fit(model(), X, factory(model().parameters())), r"fit\(\): data " + NOT_DATA + r", got an array"),
    (lambda: fit(model(), (X, Y), factory(model().parameters()), val_loader=5),
     r"fit\(\): val_loader " + NOT_DATA + ", got int"),
    (lambda: evaluate(model(), 5), r"evaluate\(\): data " + NOT_DATA + ", got int"),
    (lambda: evaluate(model(), {"x": X, "y": Y}), r"evaluate\(\): data " + NOT_DATA + ", got dict"),
    (lambda: predict(model(), "images"), r"predict\(\): x " + NOT_DATA + ", got str"),
    (lambda: P.prune(model(), 0.5, score="taylor", data=5), r"prune\(\): data " + NOT_DATA),
    (lambda: P.compute_scores(model(), "activation", data=X), r"compute_scores\(\): data " + NOT_DATA),
    (lambda: P.batch_prune(model(), 0.5, rounds=2, score="taylor", data=3.0), r"batch_prune\(\): data " + NOT_DATA),
    (lambda: P.iterative_prune(model(), 0.5, 2, evaluate=5), r"iterative_prune\(\): evaluate " + NOT_DATA),
    (lambda: P.AGP(0.5, data=X), r"AGP\(\): data " + NOT_DATA),
    (lambda: P.lottery_ticket(model(), lambda m, s: None, 1, evaluate=7),
     r"lottery_ticket\(\): evaluate " + NOT_DATA),
    (lambda: P.sensitivity_scan(model(), 3.0), r"sensitivity_scan\(\): evaluate " + NOT_DATA),
    (lambda: P.grade_scores(model(), X), r"grade_scores\(\): data " + NOT_DATA),
    (lambda: PruningExplorer(model(), 5), r"PruningExplorer\(\): data " + NOT_DATA),
    (lambda: FineTune(X, factory), r"FineTune\(\): data " + NOT_DATA),
])
def test_a_wrong_form_names_the_function_and_the_argument(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_bad_batches_and_datasets_are_named():
    m = model()
    with pytest.raises(TypeError, match=r"fit\(\): data must be an iterable of \(x, y\) batches, got an item of "
                                        r"type ndarray"):
        fit(m, [X, X, X], factory(m.parameters()), progress=False)

    class Scalars(Dataset):
        def __getitem__(self, i):
            return float(self.x[i, 0])

    with pytest.raises(TypeError, match=r"evaluate\(\): data must be a dataset whose __getitem__ returns \(x, y\) "
                                        r"pairs, got an item of type float"):
        evaluate(m, Scalars(X, Y))
    with pytest.raises(ValueError, match=r"prune\(\): data must be an \(x, y\) pair with as many targets as inputs, "
                                         r"got 24 inputs and 3 targets"):
        P.prune(m, 0.5, score="taylor", data=(X, Y[:3]))
    with pytest.raises(ValueError, match=r"fit\(\): batch_size must be an int >= 1"):
        fit(m, (X, Y), factory(m.parameters()), batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"fit\(\): loss must be one of \['cross_entropy', 'mse'\]"):
        fit(m, (X, Y), factory(m.parameters()), loss="hinge", progress=False)
    with pytest.raises(ValueError, match=r"prune\(\): data must be .* with at least one sample|at least one sample"):
        P.prune(m, 0.5, score="taylor", data=[])


# ------------------------------------------------------------------ fit's check of masked weights
def test_fit_names_a_parameter_whose_masked_weights_grew_back():
    m = model()
    P.prune(m, 0.5)

    class Unprune(Callback):      # a hand-written update that ignores the mask
        def on_batch_end(self, state):
            state.model[2].weight.data[...] = 1.0

    with pytest.raises(RuntimeError, match=r"fit\(\): parameter '2.weight' has 9 non-zero weights where its mask "
                                           r"is 0 after epoch 0"):
        fit(m, (X, Y), optim.SGD(m.parameters(), lr=0.1), 2, progress=False, callbacks=[Unprune()])
    m2 = model()
    P.prune(m2, 0.5)
    fit(m2, (X, Y), optim.SGD(m2.parameters(), lr=0.1, momentum=0.9), 2, progress=False)   # the optimizer keeps them 0
    assert all((p.data[p.mask == 0] == 0).all() for p in m2.parameters() if p.mask is not None)


# ------------------------------------------------------------------ FineTune
def test_finetune_factory_gives_a_fresh_optimizer_and_an_optimizer_is_reused():
    made, seen = [], []

    def make(params):
        made.append(optim.SGD(params, lr=0.1, momentum=0.9))
        return made[-1]

    class Spy(Callback):
        def on_train_begin(self, state):
            seen.append(state.optimizer)

    ft = FineTune((X, Y), make, 1, callbacks=[Spy()], batch_size=B)
    m = model()
    hist = ft(m, 1)
    ft(m, 2)
    assert len(made) == 2 and seen == made and hist.last("loss") > 0
    opt = optim.SGD(m.parameters(), lr=0.1)
    seen.clear()
    reused = FineTune((X, Y), opt, 1, callbacks=[Spy()])
    reused(m)
    reused(m)
    assert seen == [opt, opt]
    # the same as calling fit by hand
    a, b = model(), model()
    FineTune((X, Y), lambda p: optim.SGD(p, lr=0.1), 2, batch_size=B)(a)
    fit(b, (X, Y), optim.SGD(b.parameters(), lr=0.1), 2, batch_size=B, progress=False)
    assert_same(weights(a), weights(b))
    assert "epochs=2" in repr(FineTune((X, Y), factory, 2))


# ------------------------------------------------------------------ set_mask composes like torch
def test_set_mask_composes_with_the_old_mask():
    m = model()
    w = m[0].weight
    first = np.ones(w.shape)
    first[0, :2] = 0
    P.set_mask(w, first)
    w.data[0, 0] = 5.0            # try to revive a pruned weight by hand ...
    second = np.ones(w.shape)
    second[1, 0] = 0              # ... and a second mask that says 1 there
    P.set_mask(w, second)
    np.testing.assert_array_equal(w.mask, first * second)    # torch custom_from_mask: the product
    assert w.data[0, 0] == 0 and w.data[0, 1] == 0 and w.data[1, 0] == 0
    assert int((w.mask == 0).sum()) == 3
    P.remove(m)                   # to start over, drop the masks first
    P.set_mask(w, second)
    np.testing.assert_array_equal(w.mask, second)


# ------------------------------------------------------------------ hooks
def test_forward_hook_records_activations_and_is_removed_by_its_handle():
    m = model()
    seen = []
    handle = m[0].register_forward_hook(lambda module, inputs, output: seen.append((module, inputs, output)))
    out = m(X)
    assert len(seen) == 1 and seen[0][0] is m[0]
    np.testing.assert_array_equal(seen[0][1][0].data, X)
    np.testing.assert_allclose(seen[0][2].data, X @ m[0].weight.data.T + m[0].bias.data)
    handle.remove()
    m(X)
    assert len(seen) == 1 and "removed" in repr(handle)
    handle.remove()               # twice is harmless
    np.testing.assert_array_equal(m(X).data, out.data)


def test_hooks_replace_inputs_and_outputs_and_work_as_context_managers():
    m = model()
    plain = m(X).data
    with m[0].register_forward_pre_hook(lambda module, inputs: inputs[0] * 0):
        np.testing.assert_allclose(m(X).data, m(np.zeros_like(X)).data)   # inputs replaced by zeros
    np.testing.assert_array_equal(m(X).data, plain)
    order = []
    h1 = m.register_forward_hook(lambda mod, i, o: order.append(1))
    h2 = m.register_forward_hook(lambda mod, i, o: order.append(2) or Tensor(o.data + 1))
    np.testing.assert_allclose(m(X).data, plain + 1)
    assert order == [1, 2]
    h1.remove(), h2.remove()
    assert not m._hooks and nn.Module._hooks is None     # back to the no-hook path
    with pytest.raises(TypeError, match=r"register_forward_hook\(\): hook must be a callable"):
        m.register_forward_hook(3)


def test_context_activations_and_the_activation_score_against_a_hand_computation():
    m = trained()
    acts = {}
    hs = [m[i].register_forward_hook(lambda mod, inp, out, i=i: acts.setdefault(i, out.data)) for i in (0, 2)]
    m(X)
    for h in hs:
        h.remove()
    ctx = P.ScoreContext(m, {"0.weight": m[0].weight, "2.weight": m[2].weight}, (X, Y))
    got = ctx.activations()
    np.testing.assert_allclose(got["0.weight"], X @ m[0].weight.data.T + m[0].bias.data)
    np.testing.assert_allclose(got["2.weight"], acts[2])
    assert m[0]._hooks is not None and not m[0]._hooks     # the recording hooks are gone
    scores = P.compute_scores(m, "activation", data=DataLoader(X, Y, 5))
    for name, i in (("0.weight", 0), ("2.weight", 2)):
        z = X @ m[i].weight.data.T if i == 0 else np.maximum(X @ m[0].weight.data.T + m[0].bias.data, 0) @ \
            m[2].weight.data.T
        z = z + m[i].bias.data
        unit = np.abs(z).mean(axis=0)                 # mean |output| of each output unit
        np.testing.assert_allclose(scores[name], np.repeat(unit[:, None], m[i].weight.shape[1], axis=1))


def test_activation_score_on_a_conv_layer_averages_over_positions():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)), nn.Flatten(), nn.Linear(2 * 4 * 4, 3,
                         rng=np.random.default_rng(1)))
    x = np.random.default_rng(2).standard_normal((5, 1, 6, 6)).astype(np.float32)
    y = np.arange(5) % 3
    s = P.compute_scores(conv, "activation", data=(x, y), layers=["0"])["0.weight"]
    out = conv[0](x).data
    np.testing.assert_allclose(s[:, 0, 0, 0], np.abs(out).mean(axis=(0, 2, 3)), rtol=1e-6)
    assert (s == s[:, :1, :1, :1]).all()      # one value per filter


def test_a_generator_is_read_once_and_serves_every_epoch():
    m, ref = model(), model()
    gen = ((X[i:i + B], Y[i:i + B]) for i in range(0, N, B))
    val = ((X[i:i + B], Y[i:i + B]) for i in range(0, N, B))
    hist = fit(m, gen, optim.SGD(m.parameters(), lr=0.1), 3, val_loader=val, progress=False)
    fit(ref, DataLoader(X, Y, B), optim.SGD(ref.parameters(), lr=0.1), 3, progress=False)
    assert_same(weights(m), weights(ref))
    assert len(hist["val_loss"]) == 3 and hist["val_loss"][-1] == pytest.approx(evaluate(m, (X, Y))["loss"])


# ------------------------------------------------------------------ properties
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=25)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), as_dataset=st.booleans())
def test_batches_of_arrays_and_datasets_are_the_samples_in_order(n, batch_size, as_dataset):
    x = np.arange(2 * n, dtype=np.float64).reshape(n, 2)
    y = np.arange(n) % 3
    got = list(_glue.batches(Dataset(x, y) if as_dataset else (x, y), batch_size))
    assert len(got) == -(-n // batch_size) == len(_glue.batches((x, y), batch_size))
    assert all(len(xb) == batch_size for xb, _ in got[:-1]) and 1 <= len(got[-1][0]) <= batch_size
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), y)


@settings(max_examples=25)
@given(seed=st.integers(0, 2 ** 16), n_masks=st.integers(1, 4))
def test_set_mask_is_the_product_of_every_mask_given(seed, n_masks):
    rng = np.random.default_rng(seed)
    w = nn.Parameter(rng.standard_normal((3, 5)) + 5.0)      # no weight is 0 before pruning
    product = np.ones(w.shape)
    for _ in range(n_masks):
        mask = (rng.random(w.shape) < 0.7).astype(float)
        P.set_mask(w, mask)
        product *= mask
        w.data += 1.0 - w.mask        # a careless update writes into pruned places ...
    np.testing.assert_array_equal(w.mask, product)
    P.set_mask(w, np.ones(w.shape))   # ... and an all-ones mask revives nothing
    np.testing.assert_array_equal(w.mask, product)
    assert (w.data[product == 0] == 0).all() and (w.data[product == 1] != 0).all()
