"""prunekit.distributed: DGC's two switches, ``momentum_masking=False`` (u kept where v is sent)
and ``scale_by_lr=True`` (u accumulates lr g in units of the first rate, the trainer applies the message as the update):
by hand, against a float64 recurrence, and in the trainer against momentum SGD written out."""
import numpy as np
import pytest

import prunekit as pk
from prunekit import distributed as dist


def test_without_masking_the_momentum_survives_a_send():
    c = dist.DGC(ratio=0.5, momentum=0.5, momentum_masking=False).bind(1, dist.Layout.flat(2))
    g = np.array([[1.0, 0.5]], np.float32)
    np.testing.assert_array_equal(c.compress(g).decompress(), [[1.0, 0.0]])   # u = v = g -> index 0
    np.testing.assert_array_equal(c.u, [[1.0, 0.5]])                          # not zeroed where sent
    np.testing.assert_array_equal(c.v, [[0.0, 0.5]])
    # u = 0.5 [1, 0.5] + g = [1.5, 0.75]; v = [0, 0.5] + u = [1.5, 1.25] -> index 0 again
    np.testing.assert_array_equal(c.compress(g).decompress(), [[1.5, 0.0]])
    np.testing.assert_array_equal(c.v, [[0.0, 1.25]])
    assert "momentum_masking=False" in repr(c) and "masking" not in repr(dist.DGC(0.5))


def test_scale_by_lr_accumulates_the_update_and_needs_the_rate():
    c = dist.DGC(ratio=0.5, momentum=0.5, scale_by_lr=True).bind(1, dist.Layout.flat(2))
    g = np.array([[1.0, 0.5]], np.float32)
    with pytest.raises(ValueError, match=r"DGC\.compress\(\): lr must be the learning rate of this step"):
        c.compress(g)
    c.lr = 0.0                                                                 # a warm-up from 0: nothing yet
    np.testing.assert_array_equal(c.compress(g).decompress(), [[0.0, 0.0]])
    assert c.lr_ref is None and not c.v.any()
    c.lr = 0.25                                                                # the first nonzero rate: the unit
    np.testing.assert_array_equal(c.compress(g).decompress(), [[1.0, 0.0]])   # (lr / lr_ref) g, top 1 of 2
    assert c.lr_ref == 0.25
    c.lr = 0.125                                                               # u = 0.5 [0, 0.5] + 0.5 g
    np.testing.assert_array_equal(c.compress(g).decompress(), [[0.0, 1.0]])   # v = [0.5, 1.0] -> index 1
    np.testing.assert_array_equal(c.v, [[0.5, 0.0]])
    assert "scale_by_lr=True" in repr(c)


@pytest.mark.parametrize("masking", [True, False])
def test_sent_plus_kept_is_the_lr_weighted_accumulation(masking):
    """Over steps with a changing rate: v + everything sent == the sum of the u_t,
    u_t = m u + (lr_t / lr_0) g_t (u masked where sent, if masking), recomputed in float64 from the
    same selections."""
    n, d, m = 3, 400, 0.9
    c = dist.DGC(0.02, momentum=m, momentum_masking=masking, scale_by_lr=True,
                 encoding="int32+float32").bind(n, dist.Layout.flat(d))
    rng = np.random.default_rng(0)
    u, total_u, sent = np.zeros((n, d)), np.zeros((n, d)), np.zeros((n, d))
    rates = rng.uniform(0.001, 0.2, 12)
    for lr in rates:
        g = rng.standard_normal((n, d)).astype(np.float32)
        c.lr = lr
        out = c.compress(g).decompress()
        u = m * u + lr / rates[0] * g.astype(np.float64)
        total_u += u
        if masking:
            u[out != 0] = 0
        sent += out
        assert ((out != 0).sum(1) == 8).all()                                 # top 2% of 400
    np.testing.assert_allclose(sent + c.v, total_u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c.u, u, rtol=1e-4, atol=1e-5)


def _data(n=384, d=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, (x[:, :3].sum(1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)


def _mf():
    return pk.models.mlp([20, 32, 4], seed=0)


class _Decay(pk.train.Callback):
    """lr 0.1 / (1 + step), set after every batch."""

    def __init__(self):
        self.t = 0

    def on_batch_end(self, state):
        self.t += 1
        state.optimizer.lr = 0.1 / (1 + self.t)


@pytest.mark.parametrize("scale_by_lr", [False, True])
def test_unmasked_dgc_sending_everything_is_momentum_sgd(scale_by_lr):
    """At ratio 1 and without masking, DGC is momentum SGD on the global batch: PyTorch's form
    (w -= lr_t b_t, b_t = m b + g_t) with the rate applied at sending; with scale_by_lr the rate is
    inside the momentum (w -= u_t, u_t = m u + lr_t g_t). Both written out here, step by step."""
    x, y = _data()
    comp = dist.DGC(1.0, momentum=0.9, momentum_masking=False, scale_by_lr=scale_by_lr, encoding="int32+float32")
    trainer = dist.DataParallelTrainer(_mf, lambda ps: pk.optim.SGD(ps, lr=0.1), dist.Cluster(4), compressor=comp)
    trainer.fit(pk.data.DataLoader(x, y, 64), epochs=2, callbacks=[_Decay()])
    model = _mf()
    params, t = model.parameters(), 0
    buf = [np.zeros(p.data.shape, np.float64) for p in params]
    for _ in range(2):
        for xb, yb in pk.data.DataLoader(x, y, 64):
            lr = 0.1 / (1 + t)
            for p in params:
                p.grad = None
            pk.functional.cross_entropy(model(pk.Tensor(xb)), yb).backward()
            for p, b in zip(params, buf):
                b *= 0.9
                b += lr * p.grad if scale_by_lr else p.grad
                p.data -= (b if scale_by_lr else lr * b).astype(np.float32)
            t += 1
    for (name, a), b in zip(model.state_dict().items(), trainer.model.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)


def test_scale_by_lr_refuses_an_optimizer_that_would_change_the_update():
    for opt in (lambda ps: pk.optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: pk.optim.Adam(ps, lr=0.01),
                lambda ps: pk.optim.SGD(ps, lr=0.1, weight_decay=1e-4)):
        with pytest.raises(TypeError, match=r"DataParallelTrainer\(\): optimizer_fn must be plain SGD"):
            dist.DataParallelTrainer(_mf, opt, dist.Cluster(2), compressor=dist.DGC(0.1, scale_by_lr=True))
    dist.DataParallelTrainer(_mf, lambda ps: pk.optim.SGD(ps, lr=0.1), dist.Cluster(2),
                             compressor=dist.DGC(0.1, scale_by_lr=True))
