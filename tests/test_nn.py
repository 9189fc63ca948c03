"""prunekit.nn: module traversal, modes, layers, initialisation, state dicts and .npz files."""
import math
import os

import numpy as np
import pytest

from prunekit import nn
from prunekit.tensor import Tensor


# ----------------------------------------------------------------- helpers
def conv_reference(x, w, b, stride, padding):
    """Cross-correlation by sliding windows + einsum (independent of im2col)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nchwij,ocij->nohw", win, w)
    return y + (0 if b is None else b[None, :, None, None])


class Block(nn.Module):
    """A custom module: a conv, a batch norm and a nested Sequential head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, seed=0)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3, seed=1))
        self.scale = 2.0  # a plain attribute: neither parameter nor module

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).relu()) * self.scale


def tiny_mlp(seed=0):
    return nn.Sequential(nn.Linear(4, 5, seed=seed), nn.ReLU(), nn.Linear(5, 3, seed=seed + 1))


# --------------------------------------------------------------- traversal
def test_named_parameters_and_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2, bias=False), nn.Tanh()))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.0.weight"]
    params = model.parameters()
    assert [p.shape for p in params] == [(4, 3), (4,), (2, 4)]
    assert params[0] is model[0].weight and params[2] is model[2][0].weight
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert model.num_parameters() == 12 + 4 + 8


def test_named_modules_children_modules():
    model = Block()
    named = list(model.named_modules())
    assert [n for n, _ in named] == ["", "conv", "bn", "head", "head.0", "head.1"]
    assert named[0][1] is model and dict(named)["head.1"] is model.head[1]
    assert [n for n, _ in model.named_children()] == ["conv", "bn", "head"]
    assert list(model.children()) == [model.conv, model.bn, model.head]
    assert list(model.modules()) == [m for _, m in named]
    assert [n for n, _ in model.named_parameters()] == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.1.weight", "head.1.bias"]
    assert [n for n, _ in model.named_buffers()] == ["bn.running_mean", "bn.running_var"]


def test_reassigning_an_attribute_updates_the_registry():
    model = Block()
    model.conv = nn.Identity()
    assert "conv.weight" not in dict(model.named_parameters())
    lin = nn.Linear(2, 2)
    lin.bias = None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    lin.extra = nn.Parameter(np.zeros(3))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "extra"]


def test_module_without_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))

    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_shared_layer_is_listed_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(model.parameters()) == 2
    assert len(list(model.modules())) == 3


# ------------------------------------------------------------------- modes
def test_train_eval_propagate_to_every_submodule():
    model = Block()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_zero_grad():
    model = tiny_mlp()
    model(np.ones((2, 4), dtype=np.float32)).sum().backward()
    assert all(p.grad is not None and np.any(p.grad) for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None or not np.any(p.grad) for p in model.parameters())


def test_call_accepts_arrays_and_lists():
    model = tiny_mlp()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    a = model(x)
    b = model(Tensor(x))
    c = model(x.tolist())
    assert isinstance(a, Tensor)
    np.testing.assert_allclose(a.data, b.data)
    np.testing.assert_allclose(c.data, b.data)


# -------------------------------------------------------------- Sequential
def test_sequential_indexing_slicing_len_iter():
    layers = [nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Sigmoid()]
    model = nn.Sequential(*layers)
    assert len(model) == 4
    assert list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[-1]
    head = model[:2]
    assert isinstance(head, nn.Sequential) and list(head) == layers[:2]
    assert list(model[::2]) == [layers[0], layers[2]]
    assert [n for n, _ in model.named_children()] == ["0", "1", "2", "3"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(model[2:](head(x)).data, model(x).data)
    with pytest.raises(IndexError):
        model[4]


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="modules"):
        nn.Sequential(nn.ReLU(), lambda x: x)


# ------------------------------------------------------------------ layers
def test_linear_shape_forward_and_init():
    lin = nn.Linear(400, 50, seed=3)
    assert lin.weight.shape == (50, 400) and lin.bias.shape == (50,)
    assert lin.weight.dtype == np.float32 and lin.bias.dtype == np.float32
    bound = 1 / math.sqrt(400)  # PyTorch: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for p in (lin.weight.data, lin.bias.data):
        assert np.abs(p).max() <= bound
    w = lin.weight.data
    assert np.abs(w).max() > 0.98 * bound            # 20k draws reach the edge of the interval
    assert np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform, not normal
    assert abs(np.mean(w)) < 0.03 * bound             # 7 standard errors of the mean
    x = np.random.default_rng(0).standard_normal((3, 400)).astype(np.float32)
    np.testing.assert_allclose(lin(x).data, x @ w.T + lin.bias.data, rtol=1e-5, atol=1e-5)
    assert nn.Linear(3, 2, bias=False).bias is None


def test_conv2d_shape_forward_and_init():
    conv = nn.Conv2d(4, 8, (3, 5), stride=2, padding=1, seed=4)
    assert conv.weight.shape == (8, 4, 3, 5) and conv.bias.shape == (8,)
    assert conv.kernel_size == (3, 5) and conv.stride == (2, 2) and conv.padding == (1, 1)
    bound = 1 / math.sqrt(4 * 3 * 5)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.95 * bound
    sq = nn.Conv2d(2, 3, 3, padding=1, seed=5)
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)
    y = sq(x)
    assert y.shape == (2, 3, 6, 6)
    np.testing.assert_allclose(y.data, conv_reference(x, sq.weight.data, sq.bias.data, 1, 1), rtol=1e-4, atol=1e-5)
    assert nn.Conv2d(1, 1, 2, bias=False).bias is None
    assert nn.Conv2d(3, 2, 3, stride=2)(np.zeros((1, 3, 7, 7), np.float32)).shape == (1, 2, 3, 3)


def test_seeded_initialisation_is_reproducible():
    a, b, c = nn.Linear(5, 4, seed=7), nn.Linear(5, 4, seed=7), nn.Linear(5, 4, seed=8)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    ca, cb = nn.Conv2d(2, 3, 3, seed=1), nn.Conv2d(2, 3, 3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(ca.weight.data, cb.weight.data)


@pytest.mark.parametrize("bad", [
    lambda: nn.Linear(0, 3), lambda: nn.Linear(3, -1), lambda: nn.Linear(2.5, 3),
    lambda: nn.Conv2d(0, 1, 3), lambda: nn.Conv2d(1, 1, (3, 3, 3)), lambda: nn.BatchNorm1d(0),
    lambda: nn.Dropout(1.0),
])
def test_layer_argument_errors(bad):
    with pytest.raises((ValueError, TypeError), match=" must be "):
        bad()


def test_batchnorm_modules():
    bn = nn.BatchNorm1d(3, momentum=0.5)
    x = np.random.default_rng(2).standard_normal((10, 3)).astype(np.float32) * 3 + 1
    y = bn(x).data
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * x.var(axis=0, ddof=1), rtol=1e-5)
    bn.eval()
    y_eval = bn(x).data
    expected = (x - bn.running_mean) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-6)
    rm = bn.running_mean.copy()
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, rm)   # eval leaves the statistics alone
    bn2 = nn.BatchNorm2d(2)
    assert bn2(np.ones((2, 2, 3, 3), np.float32)).shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match="x must be"):
        bn2(np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="x must be"):
        bn2(np.ones((2, 2), np.float32))


def test_activation_pool_flatten_identity_modules():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(nn.ReLU()(x).data, np.maximum(x, 0))
    np.testing.assert_allclose(nn.Tanh()(x).data, np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(nn.Sigmoid()(x).data, 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_array_equal(nn.Identity()(x).data, x)
    np.testing.assert_array_equal(nn.Flatten()(x).data, x.reshape(2, 48))
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x).data, x.reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5)))
    np.testing.assert_allclose(nn.AvgPool2d(2)(x).data, x.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5)), rtol=1e-6)
    mp = nn.MaxPool2d(3, stride=1)
    assert mp.kernel_size == (3, 3) and mp.stride == (1, 1) and mp(x).shape == (2, 3, 2, 2)


def test_avg_pool_is_not_a_max_pool():
    # Code that finds max pooling with isinstance (as pruning finds Linear) must not catch average pooling.
    ap, mp = nn.AvgPool2d(2, stride=1), nn.MaxPool2d(2)
    assert not isinstance(ap, nn.MaxPool2d) and not isinstance(mp, nn.AvgPool2d)
    assert ap.kernel_size == (2, 2) and ap.stride == (1, 1) and mp.stride == (2, 2)
    assert repr(ap) == "AvgPool2d(kernel_size=(2, 2), stride=(1, 1))"
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_allclose(ap(x).data[0, 0], [[2.0, 3.0], [5.0, 6.0]])   # means of 2x2 windows, by hand
    np.testing.assert_array_equal(nn.MaxPool2d(2, stride=1)(x).data[0, 0], [[4.0, 5.0], [7.0, 8.0]])


def test_dropout_module_train_and_eval():
    x = np.ones((50, 40), np.float32)
    a, b = nn.Dropout(0.25, seed=0), nn.Dropout(0.25, seed=0)
    ya, yb = a(x).data, b(x).data
    np.testing.assert_array_equal(ya, yb)
    assert 0.2 < np.mean(ya == 0) < 0.3
    np.testing.assert_allclose(ya[ya != 0], 1 / 0.75)
    a.eval()
    np.testing.assert_array_equal(a(x).data, x)


def test_gradients_flow_through_a_model():
    model = Block()
    x = np.random.default_rng(4).standard_normal((3, 1, 4, 4)).astype(np.float32)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32, name


# ------------------------------------------------------------- state dicts
def test_state_dict_contents_are_copies():
    model = Block()
    model.conv.weight.mask = (np.arange(18).reshape(2, 1, 3, 3) % 2).astype(np.float32)
    state = model.state_dict()
    assert list(state) == ["conv.weight", "conv.weight_mask", "conv.bias", "bn.weight", "bn.bias",
                           "head.1.weight", "head.1.bias", "bn.running_mean", "bn.running_var"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    np.testing.assert_array_equal(state["conv.weight_mask"], model.conv.weight.mask)
    state["conv.weight"][...] = 123.0
    state["bn.running_mean"][...] = 5.0
    state["conv.weight_mask"][...] = 0.0
    assert not np.any(model.conv.weight.data == 123.0)
    assert not np.any(model.bn.running_mean == 5.0)
    assert np.any(model.conv.weight.mask == 1)


def _trained_block(seed):
    model = Block()
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    model(rng.standard_normal((4, 1, 4, 4)).astype(np.float32))  # moves BN running stats
    mask = (rng.random(model.head[1].weight.shape) > 0.5).astype(np.float32)
    model.head[1].weight.mask = mask
    model.head[1].weight.data *= mask
    return model


def test_state_dict_round_trip_in_place():
    src, dst = _trained_block(0), Block()
    ids = {n: id(p.data) for n, p in dst.named_parameters()}
    rm_id = id(dst.bn.running_mean)
    assert dst.load_state_dict(src.state_dict()) is dst
    for (n, p), (_, q) in zip(src.named_parameters(), dst.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
        assert id(q.data) == ids[n]                              # loaded in place
    np.testing.assert_array_equal(dst.bn.running_mean, src.bn.running_mean)
    np.testing.assert_array_equal(dst.bn.running_var, src.bn.running_var)
    assert id(dst.bn.running_mean) == rm_id
    np.testing.assert_array_equal(dst.head[1].weight.mask, src.head[1].weight.mask)
    assert dst.head[1].weight.mask is not src.head[1].weight.mask
    assert dst.conv.weight.mask is None
    x = np.random.default_rng(9).standard_normal((2, 1, 4, 4)).astype(np.float32)
    src.eval(), dst.eval()
    np.testing.assert_array_equal(src(x).data, dst(x).data)


def test_load_honours_the_mask():
    model = tiny_mlp()
    state = model.state_dict()
    state["0.weight"] = np.ones((5, 4), np.float32)          # nonzero where the mask prunes
    mask = np.zeros((5, 4), np.float32)
    mask[:, 0] = 1
    state["0.weight_mask"] = mask
    model.load_state_dict(state)
    np.testing.assert_array_equal(model[0].weight.mask, mask)
    assert model[0].weight.mask.dtype == model[0].weight.dtype
    np.testing.assert_array_equal(model[0].weight.data, mask)  # pruned entries are zero after loading
    del state["0.weight_mask"]
    model.load_state_dict(state)                               # no mask in the file: the mask goes
    assert model[0].weight.mask is None


def test_load_state_dict_errors_name_the_key():
    model = tiny_mlp()
    state = model.state_dict()
    missing = dict(state)
    del missing["2.bias"]
    with pytest.raises(KeyError, match="2.bias"):
        model.load_state_dict(missing)
    extra = dict(state, **{"9.weight": np.zeros(2)})
    with pytest.raises(KeyError, match="9.weight"):
        model.load_state_dict(extra)
    model.load_state_dict(extra, strict=False)
    wrong = dict(state, **{"2.weight": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"2\.weight.*\(3, 4\).*\(3, 5\)"):
        model.load_state_dict(wrong)
    bad_mask = dict(state, **{"0.weight_mask": np.ones((4, 5), np.float32)})
    with pytest.raises(ValueError, match="0.weight_mask"):
        model.load_state_dict(bad_mask)


# ------------------------------------------------------------ .npz files
def test_save_and_load_state_through_npz(tmp_path):
    src, dst = _trained_block(1), Block()
    path = tmp_path / "model.npz"
    nn.save(src, path)
    with np.load(path, allow_pickle=False) as f:                # readable without pickle
        assert set(f.files) == set(src.state_dict())
        np.testing.assert_array_equal(f["head.1.weight_mask"], src.head[1].weight.mask)
        np.testing.assert_array_equal(f["bn.running_var"], src.bn.running_var)
    assert nn.load_state(dst, path) is dst
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v)
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.npz"]  # no temporary file left behind
    with pytest.raises(TypeError, match="Block"):                # a layer type of our own: named, not rebuilt
        nn.load(path)


def test_nn_load_rebuilds_a_model_of_unknown_shapes(tmp_path):
    """nn.save writes the architecture too, so nn.load needs no model to load into."""
    from prunekit import models, pruning

    model = models.lenet5(seed=3)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    pruning.prune(model, 0.5, structure="channel", example_input=x[:1])
    small = pruning.shrink(model, example_input=x[:1])
    nn.save(small, tmp_path / "small")
    back = nn.load(tmp_path / "small")
    assert [p.shape for p in back.parameters()] == [p.shape for p in small.parameters()]
    np.testing.assert_array_equal(back(x).data, small(x).data)


def test_save_appends_the_npz_suffix(tmp_path):
    nn.save(tiny_mlp(), tmp_path / "ckpt")
    assert (tmp_path / "ckpt.npz").exists()
    model = tiny_mlp(seed=5)
    nn.load_state(model, str(tmp_path / "ckpt.npz"))
    np.testing.assert_array_equal(model[0].weight.data, tiny_mlp()[0].weight.data)


def test_load_state_accepts_the_path_given_to_save(tmp_path):
    nn.save(tiny_mlp(), tmp_path / "ckpt")
    nn.load_state(tiny_mlp(seed=5), tmp_path / "ckpt")


def test_load_state_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "model.npz"
    nn.save(tiny_mlp(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.npz"):
        nn.load_state(tiny_mlp(), path)


def test_load_state_corrupt_member_names_the_key(tmp_path):
    path = tmp_path / "model.npz"
    model = tiny_mlp()
    nn.save(model, path)
    data = bytearray(path.read_bytes())
    # flip a byte inside the stored array data of "2.weight" (an uncompressed zip member)
    start = data.index(b"2.weight.npy")
    header = data.index(b"\x93NUMPY", start)
    data[header + 150] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="2.weight") as err:
        nn.load_state(tiny_mlp(), path)
    assert "model.npz" in str(err.value)


def test_load_state_missing_key_and_wrong_shape_name_the_key(tmp_path):
    model = tiny_mlp()
    state = model.state_dict()
    p1 = tmp_path / "missing.npz"
    np.savez(p1, **{k: v for k, v in state.items() if k != "0.bias"})
    with pytest.raises(KeyError, match="0.bias") as err:
        nn.load_state(model, p1)
    assert "missing.npz" in str(err.value)
    p2 = tmp_path / "shape.npz"
    np.savez(p2, **dict(state, **{"2.bias": np.zeros(7, np.float32)}))
    with pytest.raises(ValueError, match="2.bias"):
        nn.load_state(model, p2)


def test_load_state_of_a_missing_file_is_file_not_found(tmp_path):
    path = tmp_path / "does_not_exist.npz"
    with pytest.raises(FileNotFoundError, match=r"load_state\(\): path must be an existing file written by "
                                                r"save\(\), got '.*does_not_exist.npz' \(no such file\)"):
        nn.load_state(tiny_mlp(), path)
    with pytest.raises(FileNotFoundError, match=r"'.*ckpt' \(no such file, nor '.*ckpt.npz'\)"):
        nn.load_state(tiny_mlp(), tmp_path / "ckpt")   # save()'s suffix was tried too
    assert not list(tmp_path.iterdir())                # and nothing was created


def test_load_state_of_a_folder_is_not_readable(tmp_path):
    with pytest.raises(ValueError, match=r"load_state\(\): '.*' is not a readable prunekit .npz file"):
        nn.load_state(tiny_mlp(), tmp_path)


def test_load_state_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    state = dict(tiny_mlp().state_dict())
    state["0.weight"] = np.array([{"a": 1}], dtype=object)
    np.savez(path, **state)
    with pytest.raises(ValueError):
        nn.load_state(tiny_mlp(), path)


def test_replacing_a_child_keeps_its_place():
    """setattr on an existing child (how layers get swapped, e.g. by to_sparse) must not reorder a Sequential."""
    seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    new = nn.Linear(4, 3)
    setattr(seq, "0", new)
    assert [name for name, _ in seq.named_children()] == ["0", "1", "2"]
    assert seq[0] is new
    assert seq(np.ones((1, 4), np.float32)).shape == (1, 2)
