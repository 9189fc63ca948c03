"""SparseLinear, SparseConv2d, SparseSequential and to_sparse: same outputs as the dense model, original untouched."""
import subprocess
import sys

import numpy as np
import pytest

import prunekit as pk
from prunekit import Tensor, nn, no_grad
from prunekit.sparse import CSR, costmodel
from prunekit.sparse.modules import SparseConv2d, SparseLinear, SparseSequential, to_sparse

pytestmark = pytest.mark.filterwarnings("ignore:(?s).*parallel=True' was specified but no transformation")


def magnitude_prune(model, sparsity, nm=None):
    """Zero the smallest weights of every Linear/Conv2d in place (and set their masks), independent of pk.pruning."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight.data
            if nm is not None:
                n, mm = nm
                g = w.reshape(w.shape[0], -1, mm)
                drop = np.argsort(np.abs(g), axis=2)[:, :, : mm - n]
                mask = np.ones_like(g)
                np.put_along_axis(mask, drop, 0, axis=2)
                mask = mask.reshape(w.shape)
            else:
                k = int(round(sparsity * w.size))
                order = np.argsort(np.abs(w), axis=None, kind="stable")
                mask = np.ones(w.size, dtype=w.dtype)
                mask[order[:k]] = 0
                mask = mask.reshape(w.shape)
            w *= mask
            m.weight.mask = mask
    return model


def dense_out(model, x):
    with no_grad():
        return model(Tensor(x)).data


@pytest.fixture(scope="module")
def lenet95():
    return magnitude_prune(pk.models.lenet_300_100(seed=0), 0.95)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_to_sparse_lenet_equals_dense(lenet95, batch):
    before = {k: v.copy() for k, v in lenet95.state_dict().items()}
    fast = to_sparse(lenet95)
    x = np.random.default_rng(batch).standard_normal((batch, 784)).astype(np.float32)
    y = dense_out(lenet95, x)
    with no_grad():
        y_fast = fast(Tensor(x))
    assert isinstance(y_fast, Tensor) and y_fast.data.dtype == np.float32
    np.testing.assert_allclose(y_fast.data, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast(x).data, y, rtol=1e-5, atol=1e-5)  # ndarray in, no no_grad needed
    # the original is untouched: same classes, same weights and masks
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU) for m in lenet95.modules())
    after = lenet95.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_to_sparse_keeps_structure_and_fuses(lenet95):
    fast = to_sparse(lenet95, format="csr")
    assert isinstance(fast, SparseSequential) and len(fast) == 5
    assert [type(m).__name__ for m in fast] == ["SparseLinear", "ReLU", "SparseLinear", "ReLU", "SparseLinear"]
    assert [n for n, _ in fast.named_children()] == ["0", "1", "2", "3", "4"]
    assert list(fast._segments) == [0]  # the whole chain is one fused call
    assert fast[0].weight.nnz == np.count_nonzero(lenet95[0].weight.data)
    unfused = to_sparse(lenet95, format="csr", fuse=False)
    assert type(unfused) is SparseSequential and unfused._segments == {}  # same container, nothing fused
    x = np.random.default_rng(0).standard_normal((2, 784)).astype(np.float32)
    np.testing.assert_allclose(fast(x).data, unfused(x).data, rtol=1e-5, atol=1e-6)


@pytest.mark.numba  # the shortcut calls the compiled kernel; under the numpy backend it is not taken
def test_whole_chain_shortcut_matches_the_general_path_and_keeps_its_checks(lenet95):
    """A model that is one fused chain takes a shortcut from __call__ to the kernel for small float32 batches;
    everything else (and every bad input) goes the general way, with the same results and errors."""
    from prunekit.sparse.modules import _RunsOnArrays

    fast = to_sparse(lenet95)
    assert fast._whole is fast._segments[0][1]
    rng = np.random.default_rng(3)
    with no_grad():
        for x in (rng.standard_normal((1, 784)).astype(np.float32),               # shortcut
                  rng.standard_normal((8, 784)).astype(np.float32),               # shortcut (fuse_max_batch)
                  rng.standard_normal((9, 784)).astype(np.float32),               # layer by layer
                  rng.standard_normal((784, 3)).astype(np.float32).T,             # strided: a contiguous copy
                  rng.standard_normal((2, 784))):                                 # float64
            y, y_general = fast(Tensor(x)), _RunsOnArrays.__call__(fast, Tensor(x))
            np.testing.assert_allclose(y.data, y_general.data, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(y.data, dense_out(lenet95, x), rtol=1e-5, atol=1e-5)
            assert y.data.dtype == np.float32 and not y.requires_grad
        a, b = fast(Tensor(x[:1].astype(np.float32))), fast(Tensor(x[:1].astype(np.float32)))
        assert a.data is not b.data  # a fresh output every call
        fast._whole.run = None  # the shortcut does not go through FusedChain.run ...
        fast(Tensor(np.ones((1, 784), np.float32)))
        with pytest.raises(TypeError):  # ... and the general path does
            fast(Tensor(np.ones((1, 784))))
        del fast._whole.run
        with pytest.raises(ValueError, match="784"):
            fast(Tensor(np.ones((1, 783), np.float32)))
    with pytest.raises(ValueError, match="requires_grad"):
        fast(Tensor(np.ones((1, 784), np.float32), requires_grad=True))
    # a chain that does not cover the whole model: no shortcut, the general path
    partial = to_sparse(nn.Sequential(*lenet95, nn.Tanh()))
    assert list(partial._segments) == [0] and partial._whole is None
    x = rng.standard_normal((1, 784)).astype(np.float32)
    np.testing.assert_allclose(partial(x).data, np.tanh(dense_out(lenet95, x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm", "auto"])
def test_formats_equal_dense(fmt):
    model = pk.models.mlp([64, 32, 16], seed=1)
    magnitude_prune(model, 0.75, nm=(2, 4) if fmt == "nm" else None)
    fast = to_sparse(model, format=fmt, block_size=8)
    expected = {"csr": "csr", "bsr": "bsr", "nm": "nm"}.get(fmt)
    if expected:
        assert all(m.format == expected for m in fast if isinstance(m, SparseLinear))
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        np.testing.assert_allclose(fast(x).data, dense_out(model, x), rtol=1e-5, atol=1e-5)


def test_int8_format_is_close_to_dense():
    model = magnitude_prune(pk.models.mlp([64, 32, 10], seed=2), 0.5)
    fast = to_sparse(model, format="int8")
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    y, y8 = dense_out(model, x), fast(x).data
    assert np.max(np.abs(y8 - y)) < 0.05 * np.max(np.abs(y))


def test_min_sparsity_and_auto_keep_dense_layers_dense():
    model = pk.models.mlp([256, 256, 256, 10], seed=3)
    magnitude_prune(model, 0.99)
    model[2].weight.data[...] = np.random.default_rng(0).standard_normal((256, 256))  # a dense middle layer
    model[2].weight.mask = None
    fast = to_sparse(model, format="csr", min_sparsity=0.5)
    assert type(fast[2]) is nn.Linear and isinstance(fast[0], SparseLinear)
    auto = to_sparse(model, format="auto", inference_batch=1)
    assert type(auto[2]) is nn.Linear  # dense is faster than any sparse format at 0% sparsity
    assert isinstance(auto[0], SparseLinear)  # 99% sparse: CSR wins
    x = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    for m in (fast, auto):
        np.testing.assert_allclose(m(x).data, dense_out(model, x), rtol=1e-4, atol=1e-4)
    assert list(auto._segments) == [0]  # dense and sparse layers fuse into one chain


def test_conv_model_through_im2col_equals_dense():
    model = magnitude_prune(pk.models.lenet5(seed=0), 0.8)
    fast = to_sparse(model, format="csr")
    assert isinstance(fast[0], SparseConv2d) and isinstance(fast[3], SparseConv2d)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(fast(x).data, dense_out(model, x), rtol=1e-4, atol=1e-4)
    with no_grad():
        np.testing.assert_allclose(fast[0](Tensor(x)).data, model[0](Tensor(x)).data, rtol=1e-5, atol=1e-5)


def test_nested_sequentials_are_converted():
    inner = nn.Sequential(nn.Linear(16, 16, seed=0), nn.ReLU(), nn.Linear(16, 8, seed=1))
    model = nn.Sequential(nn.Linear(8, 16, seed=2), nn.Tanh(), inner)
    magnitude_prune(model, 0.6)
    fast = to_sparse(model, format="csr")
    assert isinstance(fast[2], SparseSequential) and list(fast[2]._segments) == [0]
    assert list(fast._segments) == [0]  # Linear alone before the Tanh
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_allclose(fast(x).data, dense_out(model, x), rtol=1e-5, atol=1e-5)


def test_sparse_linear_on_its_own():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 9)).astype(np.float32) * (rng.random((6, 9)) < 0.3)
    b = rng.standard_normal(6).astype(np.float32)
    layer = SparseLinear(w, b)
    x = rng.standard_normal((4, 9)).astype(np.float32)
    np.testing.assert_allclose(layer(x).data, x @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.run(x[0]), w @ x[0] + b, rtol=1e-5, atol=1e-6)
    x3 = rng.standard_normal((2, 3, 9)).astype(np.float32)
    np.testing.assert_allclose(layer.run(x3), x3 @ w.T + b, rtol=1e-5, atol=1e-6)
    assert SparseLinear(CSR.from_dense(w)).format == "csr"
    assert "CSR(shape=(6, 9)" in repr(layer)
    assert layer.parameters() == []  # inference only: nothing to train


def test_inference_only_and_bad_arguments():
    model = magnitude_prune(pk.models.mlp([8, 4], seed=0), 0.5)
    fast = to_sparse(model, format="csr")
    with pytest.raises(ValueError, match="x must be a Tensor that does not require grad"):
        fast(Tensor(np.ones((1, 8), np.float32), requires_grad=True))
    with no_grad():  # fine under no_grad
        fast(Tensor(np.ones((1, 8), np.float32), requires_grad=True))
    with pytest.raises(ValueError, match=r"format must be one of \{'csr', 'bsr', 'nm', 'int8', 'auto'\}"):
        to_sparse(model, format="coo")
    with pytest.raises(ValueError, match="block_size must be a block size dividing the shape"):
        to_sparse(pk.models.mlp([10, 6], seed=0), format="bsr", block_size=4, min_sparsity=0)
    with pytest.raises(ValueError, match="format must be a format the layer '0' supports"):
        to_sparse(pk.models.mlp([8, 4], seed=0), format="nm")
    with pytest.raises(TypeError, match="model must be a prunekit.nn.Module"):
        to_sparse(np.eye(3))
    with pytest.raises(ValueError, match="min_sparsity must be"):
        to_sparse(model, min_sparsity=1.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_size'"):
        to_sparse(model, batch_size=1)  # renamed: inference_batch (batch_size means a data batch everywhere)
    with pytest.raises(TypeError, match="positional"):
        to_sparse(model, "csr", 0.5)  # everything after the format is keyword-only
    with pytest.raises(ValueError, match="inference_batch must be"):
        to_sparse(model, inference_batch=0)
    with pytest.raises(TypeError, match="fuse must be True or False"):
        to_sparse(model, fuse="no")
    with pytest.raises(ValueError, match="x must be an array whose last dimension is in_features = 8"):
        fast[0].run(np.ones((1, 7), np.float32))


def test_cost_model_prefers_dense_for_dense_and_sparse_for_sparse():
    cm = costmodel.DEFAULT
    n = 1024 * 1024
    assert cm.choose({"dense": n, "csr": n}, batch=1) == "dense"
    assert cm.choose({"dense": n, "csr": n // 100}, batch=1) == "csr"
    assert cm.choose({"dense": n, "csr": n // 100}, batch=64) == "csr"
    assert cm.predict("csr", 1000, 64) > cm.predict("csr", 1000, 1)
    measured = costmodel.calibrate(sizes=(128, 256), repeats=3)
    assert set(measured.params) == set(costmodel.FORMATS)
    assert all(v >= 0 for p in measured.params.values() for v in p)
    assert "calibrated" in repr(measured)


def test_import_compiles_nothing():
    code = ("import sys, time; t = time.perf_counter(); import prunekit, prunekit.sparse, prunekit.sparse.modules; "
            "dt = time.perf_counter() - t; assert 'numba' not in sys.modules, 'numba imported'; print(dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 2.0  # generous on a loaded machine; typically ~0.15 s


def test_fused_chain_checks_its_input_and_output():
    """The fused kernel reads raw memory: a wrong width, dtype or out must be refused, a strided input copied."""
    import numpy as np
    import pytest
    from prunekit.sparse import CSR, FusedChain

    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((12, 20)) * (rng.random((12, 20)) < 0.3)).astype(np.float32)
    w2 = rng.standard_normal((5, 12)).astype(np.float32)
    b1 = rng.standard_normal(12).astype(np.float32)
    chain = FusedChain([(CSR.from_dense(w1), b1, True), (w2, None, False)], dtype=np.float32)
    x = rng.standard_normal((3, 40)).astype(np.float32)[:, ::2]  # strided view, 20 columns
    expected = np.maximum(x @ w1.T + b1, 0) @ w2.T
    np.testing.assert_allclose(chain.run(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chain.run(np.asfortranarray(x)), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a must be"):
        chain.run(x[:, :10])
    with pytest.raises(TypeError, match="a must be"):
        chain.run(x.astype(np.float64))
    with pytest.raises(ValueError, match="out must be"):
        chain.run(x, out=np.empty((3, 4), np.float32))


# ----------------------------------------------------------------------------- issue 9: defaults and inputs


class ScaledLinear(nn.Linear):
    """A subclass, as a user (or another library) writes them; its forward is Linear's."""


class MyConv(nn.Conv2d):
    pass


def test_subclasses_of_linear_and_conv_are_converted():
    rng = np.random.default_rng(0)
    model = nn.Sequential(MyConv(1, 4, 3, rng=rng), nn.ReLU(), nn.Flatten(), ScaledLinear(4 * 6 * 6, 5, rng=rng))
    magnitude_prune(model, 0.8)
    fast = to_sparse(model, format="csr")
    assert isinstance(fast[0], SparseConv2d) and isinstance(fast[3], SparseLinear)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(fast(x).data, dense_out(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", "auto"])
def test_unfused_accepts_the_same_inputs_as_fused(lenet95, fmt):
    fused, unfused = to_sparse(lenet95, format=fmt), to_sparse(lenet95, format=fmt, fuse=False)
    rng = np.random.default_rng(3)
    for batch in (1, 7):
        x = rng.standard_normal((batch, 784)).astype(np.float32)
        want = dense_out(lenet95, x)
        for inp in (x, Tensor(x)):
            for model in (fused, unfused):
                with no_grad():
                    y = model(inp)
                assert isinstance(y, Tensor) and y.shape == (batch, 10)
                np.testing.assert_allclose(y.data, want, rtol=1e-5, atol=1e-5)
    x1 = rng.standard_normal(784).astype(np.float32)  # one sample as a 1-D vector, as the fused path allows
    want = dense_out(lenet95, x1[None])[0]
    for model in (fused, unfused):
        for inp in (x1, Tensor(x1)):
            with no_grad():
                np.testing.assert_allclose(model(inp).data, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def lenet5_90():
    return magnitude_prune(pk.models.lenet5(seed=0), 0.9)


def test_default_is_auto_and_keeps_layers_dense_where_sparse_does_not_pay(lenet5_90):
    """90%-pruned LeNet-5 at batch 1: the convolutions stay dense (their sparse path moves the im2col matrix
    twice more than it saves), the Linear layers go CSR inside one fused chain."""
    fast = to_sparse(lenet5_90)
    assert type(fast[0]) is nn.Conv2d and type(fast[3]) is nn.Conv2d
    assert all(isinstance(fast[i], SparseLinear) and fast[i].format == "csr" for i in (7, 9, 11))
    assert list(fast._segments) == [7]  # Linear/ReLU x3 fused into one call
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(fast(x).data, dense_out(lenet5_90, x), rtol=1e-4, atol=1e-5)
    # a large expected batch (above fuse_max_batch): no fused chain, so each sparse module's own call counts,
    # and at LeNet-5's sizes no layer is worth it: the converted model is the dense one
    big = to_sparse(lenet5_90, inference_batch=64)
    assert [type(m) for m in big] == [type(m) for m in lenet5_90] and big._segments == {}
    assert to_sparse(lenet5_90, inference_batch=8)._segments != {}  # up to fuse_max_batch the chain still forms


def test_choose_layer_counts_what_a_sparse_module_costs_around_its_kernel():
    cm = costmodel.DEFAULT
    lenet_fc1 = {"dense": 48000, "csr": 4800}
    assert cm.choose_layer(lenet_fc1, 1, fused=True) == "csr"  # in a chain only the weights count
    assert cm.choose_layer(lenet_fc1, 1) == "dense"  # on its own, the module's extra call eats the gain
    # a convolution moves its im2col matrix: small ones stay dense even at 90% sparsity
    assert cm.choose_layer({"dense": 2400, "csr": 240}, 64, conv_elements=64 * 150) == "dense"
    wide = {"dense": 256 * 2304, "csr": 256 * 2304 // 20}  # a 3x3 conv, 256 -> 256 channels, 95% pruned: pays
    assert cm.choose_layer(wide, 64, conv_elements=64 * 2304) == "csr"
    # the margin: sparse must be predicted clearly faster
    t_dense = cm.predict("dense", 10**6, 1)
    stored = {"dense": 10**6, "csr": 10**5}
    t_csr = cm.predict("csr", 10**5, 1) + cm.call_overhead
    assert cm.choose_layer(stored, 1, margin=t_dense / t_csr * 0.99) == "csr"
    assert cm.choose_layer(stored, 1, margin=t_dense / t_csr * 1.01) == "dense"
    with pytest.raises(ValueError, match="stored must be a dict with a 'dense' entry"):
        cm.choose_layer({"csr": 5})
