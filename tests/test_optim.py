"""prunekit.optim: updates checked step by step against the published formulas.

The reference updates below are written from the papers / PyTorch documentation:

SGD (PyTorch):   g <- g + wd*w;  b_1 = g,  b_t = mu*b_{t-1} + g;
                 d = g + mu*b (Nesterov) or b;  w <- w - lr*d
Adam (Kingma & Ba 2015, Alg. 1; L2 decay added to g as in PyTorch):
                 m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
                 w <- w - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
AdamW (Loshchilov & Hutter 2019, PyTorch form): w <- w (1 - lr wd), then the Adam step with g.
"""
import math

import numpy as np
import pytest

from prunekit import nn
from prunekit import functional as F
from prunekit.optim import SGD, Adam, AdamW, CosineAnnealingLR, LambdaLR, StepLR
from prunekit.tensor import Tensor


# -------------------------------------------------------- hand references
class RefSGD:
    def __init__(self, w, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.w, self.lr, self.mu, self.nesterov, self.wd = w.copy(), lr, momentum, nesterov, weight_decay
        self.b = None

    def step(self, g):
        g = g + self.wd * self.w
        if self.mu:
            self.b = g.copy() if self.b is None else self.mu * self.b + g
            g = g + self.mu * self.b if self.nesterov else self.b
        self.w = self.w - self.lr * g
        return self.w


class RefAdam:
    def __init__(self, w, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.w, self.lr, (self.b1, self.b2), self.eps = w.copy(), lr, betas, eps
        self.wd, self.decoupled = weight_decay, decoupled
        self.m = np.zeros_like(w)
        self.v = np.zeros_like(w)
        self.t = 0

    def step(self, g):
        if self.decoupled:
            self.w = self.w * (1 - self.lr * self.wd)
        else:
            g = g + self.wd * self.w
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        self.w = self.w - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return self.w


CONFIGS = {
    "sgd": (SGD, RefSGD, dict(lr=0.1)),
    "sgd_wd": (SGD, RefSGD, dict(lr=0.1, weight_decay=0.05)),
    "sgd_momentum": (SGD, RefSGD, dict(lr=0.05, momentum=0.9)),
    "sgd_momentum_wd": (SGD, RefSGD, dict(lr=0.05, momentum=0.8, weight_decay=0.01)),
    "sgd_nesterov": (SGD, RefSGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_nesterov_wd": (SGD, RefSGD, dict(lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.1)),
    "adam": (Adam, RefAdam, dict(lr=0.01)),
    "adam_betas_eps": (Adam, RefAdam, dict(lr=0.02, betas=(0.8, 0.95), eps=1e-2)),  # eps outside the sqrt
    "adam_l2": (Adam, RefAdam, dict(lr=0.01, weight_decay=0.1)),
    "adamw": (AdamW, lambda w, **kw: RefAdam(w, decoupled=True, **kw), dict(lr=0.01, weight_decay=0.1)),
    "adamw_default_decay": (AdamW, lambda w, **kw: RefAdam(w, decoupled=True, weight_decay=1e-2, **kw),
                            dict(lr=0.05)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_updates_match_hand_computed_formulas(name):
    opt_cls, ref_cls, kw = CONFIGS[name]
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    b0 = rng.standard_normal(4)
    p, q = nn.Parameter(w0.copy()), nn.Parameter(b0.copy())
    opt = opt_cls([p, q], **kw)
    refs = [ref_cls(w0, **kw), ref_cls(b0, **kw)]
    for step in range(6):
        grads = [rng.standard_normal(w0.shape) * 10 ** rng.uniform(-3, 0), rng.standard_normal(b0.shape)]
        p.grad, q.grad = grads[0].copy(), grads[1].copy()
        opt.step()
        for param, ref, g in zip((p, q), refs, grads):
            np.testing.assert_allclose(param.data, ref.step(g), rtol=1e-12, atol=1e-14, err_msg=f"step {step}")


def test_sgd_first_steps_by_hand():
    p = nn.Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.5)
    p.grad = np.array([2.0])
    opt.step()                      # b = 2, w = 1 - 0.2
    assert p.data[0] == pytest.approx(0.8)
    p.grad = np.array([2.0])
    opt.step()                      # b = 0.5*2 + 2 = 3, w = 0.8 - 0.3
    assert p.data[0] == pytest.approx(0.5)


def test_adam_first_step_is_lr_times_sign():
    p = nn.Parameter(np.array([1.0, -2.0, 3.0]))
    opt = Adam([p], lr=0.01)
    p.grad = np.array([0.5, -3.0, 1e-3])
    opt.step()                      # bias-corrected first step: m_hat/sqrt(v_hat) = sign(g)
    np.testing.assert_allclose(p.data, [0.99, -1.99, 2.99], rtol=1e-6)


def test_updates_are_in_place_and_keep_dtype():
    for opt_cls, kw in [(SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)), (Adam, dict(lr=0.1)),
                        (AdamW, dict(lr=0.1))]:
        p = nn.Parameter(np.ones((2, 3), np.float32))
        held = p.data
        ident = id(p.data)
        opt = opt_cls([p], **kw)
        for _ in range(3):
            p.grad = np.full((2, 3), 0.5, np.float64)  # a float64 gradient must not change the weight's dtype
            opt.step()
        assert id(p.data) == ident and p.data is held
        assert p.data.dtype == np.float32
        assert np.all(held < 1.0)                        # the held array saw the updates


def test_parameters_without_gradient_are_skipped():
    p, q = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = SGD([p, q], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(q.data, [1.0, 1.0])
    assert p.data[0] == pytest.approx(1 - 0.1 * 1.1)


def test_zero_grad_and_lr_property():
    model = nn.Linear(3, 2)
    opt = SGD(model.parameters(), lr=0.1)
    assert opt.params == model.parameters()
    model(np.ones((1, 3), np.float32)).sum().backward()
    opt.zero_grad()
    assert all(p.grad is None or not np.any(p.grad) for p in model.parameters())
    opt.lr = 0.5
    assert opt.lr == 0.5
    w = model.weight.data.copy()
    model.weight.grad = np.ones_like(w)
    opt.step()
    np.testing.assert_allclose(model.weight.data, w - 0.5, rtol=1e-6)


# ---------------------------------------------------------- pruning masks
MASKED = {
    "sgd_momentum_wd": (SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov_wd": (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam_l2": (Adam, dict(lr=0.01, weight_decay=0.01)),
    "adamw": (AdamW, dict(lr=0.01, weight_decay=0.1)),
}


def _mask(shape, seed):
    m = (np.random.default_rng(seed).random(shape) < 0.5).astype(np.float32)
    m.flat[0], m.flat[1] = 0, 1
    return m


@pytest.mark.parametrize("name", sorted(MASKED))
@pytest.mark.parametrize("mask_after_warmup", [False, True])
def test_pruned_weights_stay_exactly_zero(name, mask_after_warmup):
    opt_cls, kw = MASKED[name]
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(6, 8, seed=0), nn.ReLU(), nn.Linear(8, 3, seed=1))
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    masks = {id(p): _mask(p.shape, i) for i, p in enumerate(model.parameters())}

    def prune():
        for p in model.parameters():
            p.mask = masks[id(p)]
            p.data *= p.mask

    if not mask_after_warmup:
        prune()
    opt = opt_cls(model.parameters(), **kw)
    if mask_after_warmup:  # momentum / Adam moments are nonzero at the entries about to be pruned
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        prune()
    start = [p.data.copy() for p in model.parameters()]
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        assert any(np.any(p.grad[p.mask == 0] != 0) for p in model.parameters())  # gradients do reach them
        opt.step()
        for p in model.parameters():
            assert np.all(p.data[p.mask == 0] == 0.0)
    for p, s in zip(model.parameters(), start):
        assert np.any(p.data[p.mask == 1] != s[p.mask == 1])  # the kept weights still learn


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adam_l2", "adamw"])
def test_masked_update_matches_reference_with_masked_gradient(name):
    """Kept entries follow exactly the update of a reference fed the masked gradient."""
    opt_cls, kw = {"sgd_momentum_wd": (SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
                   "adam_l2": (Adam, dict(lr=0.01, weight_decay=0.01)),
                   "adamw": (AdamW, dict(lr=0.01, weight_decay=0.1))}[name]
    ref_cls = RefSGD if opt_cls is SGD else (lambda w, **k: RefAdam(w, decoupled=opt_cls is AdamW, **k))
    rng = np.random.default_rng(2)
    mask = _mask((4, 5), 3).astype(np.float64)
    w0 = rng.standard_normal((4, 5)) * mask
    p = nn.Parameter(w0.copy())
    p.mask = mask
    opt, ref = opt_cls([p], **kw), ref_cls(w0, **kw)
    for _ in range(8):
        g = rng.standard_normal((4, 5))
        p.grad = g.copy()
        opt.step()
        ref.w = ref.step(g * mask) * mask
        np.testing.assert_allclose(p.data, ref.w, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=-0.1), lambda ps: Adam(ps, lr=-1e-3), lambda ps: AdamW(ps, lr=-1.0),
    lambda ps: SGD(ps, lr=float("nan")),
])
def test_bad_learning_rate_names_lr(make):
    with pytest.raises(ValueError, match="lr must be"):
        make([nn.Parameter(np.zeros(2))])


def test_lr_setter_and_other_argument_errors():
    ps = [nn.Parameter(np.zeros(2))]
    opt = SGD(ps, lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = -0.5
    assert opt.lr == 0.1
    with pytest.raises(TypeError, match="lr must be"):
        SGD(ps, lr="fast")
    with pytest.raises(ValueError, match="momentum must be"):
        SGD(ps, lr=0.1, momentum=-0.9)
    with pytest.raises(ValueError, match="weight_decay must be"):
        Adam(ps, weight_decay=-1.0)
    with pytest.raises(ValueError, match="nesterov must be"):
        SGD(ps, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam(ps, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps must be"):
        Adam(ps, eps=0.0)
    with pytest.raises(ValueError, match="params must be"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="params"):
        SGD([np.zeros(2)], lr=0.1)


# -------------------------------------------------------------- schedules
def test_step_lr():
    opt = SGD([nn.Parameter(np.zeros(1))], lr=0.8)
    sched = StepLR(opt, step_size=3, gamma=0.5)
    assert opt.lr == 0.8
    for epoch in range(1, 11):
        sched.step()
        assert opt.lr == pytest.approx(0.8 * 0.5 ** (epoch // 3))


def test_cosine_annealing_lr():
    opt = Adam([nn.Parameter(np.zeros(1))], lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=8, eta_min=0.01)
    assert opt.lr == 0.1
    for epoch in range(1, 9):
        sched.step()
        assert opt.lr == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * epoch / 8)) / 2)
    assert opt.lr == pytest.approx(0.01)
    assert CosineAnnealingLR(SGD([nn.Parameter(np.zeros(1))], lr=1.0), T_max=4).lr_at(2) == pytest.approx(0.5)


def test_lambda_lr_and_rewind():
    opt = SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    sched = LambdaLR(opt, lambda e: 1 / (1 + e))
    sched.step()
    sched.step()
    assert opt.lr == pytest.approx(0.2 / 3)
    sched.rewind(0)
    assert opt.lr == pytest.approx(0.2) and sched.last_epoch == 0


def test_schedule_errors():
    opt = SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="step_size must be"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max must be"):
        CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(TypeError, match="optimizer must be"):
        StepLR("sgd", 2)


# ------------------------------------------------------------- state dicts
@pytest.mark.parametrize("opt_cls, kw", [
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)), (Adam, dict(lr=0.01)), (AdamW, dict(lr=0.01))])
def test_optimizer_state_dict_round_trip(opt_cls, kw, tmp_path):
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((3, 3))
    grads = [rng.standard_normal((3, 3)) for _ in range(6)]
    p = nn.Parameter(w0.copy())
    opt = opt_cls([p], **kw)
    for g in grads[:3]:
        p.grad = g.copy()
        opt.step()
    np.savez(tmp_path / "opt.npz", **opt.state_dict())       # arrays only: storable without pickle
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        saved = {k: f[k] for k in f.files}

    q = nn.Parameter(p.data.copy())
    opt2 = opt_cls([q], **dict(kw, lr=123.0)).load_state_dict(saved)
    assert opt2.lr == opt.lr
    for g in grads[3:]:
        p.grad, q.grad = g.copy(), g.copy()
        opt.step()
        opt2.step()
    np.testing.assert_allclose(q.data, p.data, rtol=1e-13)
    # and both equal one uninterrupted reference run
    ref = (RefSGD if opt_cls is SGD else (lambda w, **k: RefAdam(w, decoupled=opt_cls is AdamW,
                                                                 **(dict(weight_decay=1e-2) if opt_cls is AdamW
                                                                    else {}), **k)))(w0, **kw)
    for g in grads:
        ref.step(g)
    np.testing.assert_allclose(q.data, ref.w, rtol=1e-12)


def test_state_dict_is_a_copy():
    p = nn.Parameter(np.ones(2))
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2)
    opt.step()
    state = opt.state_dict()
    state["0.momentum_buffer"][...] = 99.0
    p.grad = np.zeros(2)
    opt.step()
    np.testing.assert_allclose(p.data, 1 - 0.1 - 0.1 * 0.9)


@pytest.mark.numba
@pytest.mark.parametrize("nesterov, wd", [(False, 0.0), (True, 0.0), (False, 1e-2), (True, 1e-3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sgd_kernel_matches_the_numpy_update(nesterov, wd, dtype):
    """The numba fast path (contiguous arrays) and its NumPy reference against the update written out by hand."""
    from prunekit.optim import _sgd_momentum_kernel, _sgd_momentum_reference

    rng = np.random.default_rng(5)
    w, g, buf = (rng.standard_normal(1000).astype(dtype) for _ in range(3))
    lr, mu = 0.05, 0.9
    # by hand: PyTorch's SGD rule
    gr = g + wd * w
    br = mu * buf + gr
    wr = w - lr * (gr + mu * br if nesterov else br)
    t = np.dtype(dtype).type
    w2, buf2 = w.copy(), buf.copy()
    _sgd_momentum_kernel(w, g, buf, t(lr), t(mu), t(wd), nesterov)
    _sgd_momentum_reference(w2, g, buf2, t(lr), t(mu), t(wd), nesterov)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for got_w, got_buf in ((w, buf), (w2, buf2)):
        assert got_w.dtype == dtype and got_buf.dtype == dtype
        np.testing.assert_allclose(got_buf, br, rtol=tol, atol=tol)
        np.testing.assert_allclose(got_w, wr, rtol=tol, atol=tol)
