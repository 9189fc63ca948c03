"""export(sparse=...): a pruned layer's weights as a bitmask plus the nonzeros; round trip, byte counts, damage."""
import hashlib
import json
import os

import numpy as np
import pytest

import prunekit as pk
from prunekit import pruning as P
from prunekit import quant
from prunekit.quant import modules as M
from prunekit.sparse import Int8Weight

DATA = os.path.join(os.path.dirname(__file__), "data")


def _pruned(kind, weight_bits):
    """A model pruned to 90% per layer, quantized with ``weight_bits``: ``(qmodel, x)``."""
    rng = np.random.default_rng(0)
    if kind == "lenet5":
        m, x = pk.models.lenet5(seed=0), rng.random((32, 1, 28, 28)).astype(np.float32)
    elif kind == "resnet":
        m, x = pk.models.resnet_small(channels=(4, 8), seed=0), rng.random((32, 1, 12, 12)).astype(np.float32)
    else:
        m, x = pk.models.lenet_300_100(seed=0), rng.random((32, 784)).astype(np.float32)
    P.prune_to(m.eval(), 0.9)
    return quant.quantize_model(m, (x, np.zeros(len(x))), weight_bits=weight_bits), x


def _weight_entries(entries):
    for e in entries:
        if e["kind"] in ("linear", "conv"):
            yield e
        yield from _weight_entries(e.get("children", {}).values())


def _weight_ops(qmodel):
    return [op for op in M._walk(qmodel.ops) if isinstance(op, (M.QuantizedLinear, M.QuantizedConv2d))]


@pytest.mark.parametrize("sparse", [False, True, "auto"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_pruned_model_round_trip_is_bit_identical(tmp_path, kind, bits, sparse):
    q, x = _pruned(kind, bits)
    path = quant.export(q, tmp_path / "m", sparse=sparse)
    q2 = quant.load_exported(path)
    for a, b in zip(_weight_ops(q), _weight_ops(q2), strict=True):
        np.testing.assert_array_equal(b.weight.q, a.weight.q)
    xq = q.quantize_input(x)
    np.testing.assert_array_equal(q2.run_integer(xq), q.run_integer(xq))
    np.testing.assert_array_equal(q2(x), q(x))
    man = quant.read_manifest(path)
    entries = list(_weight_entries(man["ops"]))
    stored_sparse = [e["attrs"].get("sparse") == "bitmask" for e in entries]
    if sparse == "auto":
        # 90% zeros: the bitmask wins for the large layers; not for LeNet-5's first conv (150 weights: 150 B
        # dense, 19 + 15 B sparse + 512 B for one more array) nor for the 4-bit last layers (10 x 100: 500 B
        # dense, 125 + 50 + 512 sparse; 10 x 84: 420 B dense, 105 + 42 + 512 sparse)
        expected = {("mlp", 8): [True] * 3, ("mlp", 4): [True, True, False],
                    ("lenet5", 8): [False] + [True] * 4, ("lenet5", 4): [False] + [True] * 3 + [False]}
        assert stored_sparse == expected[kind, bits]
    else:
        assert stored_sparse == [sparse] * len(entries)
    assert man["version"] == (2 if any(stored_sparse) else 1)
    for e, s in zip(entries, stored_sparse):
        assert ("weight_mask" in e["arrays"]) == s


@pytest.mark.parametrize("bits", [8, 4])
def test_sparse_file_of_a_pruned_model_is_smaller(tmp_path, bits):
    q, _ = _pruned("mlp", bits)
    dense = os.path.getsize(quant.export(q, tmp_path / "dense", sparse=False))
    sparse = os.path.getsize(quant.export(q, tmp_path / "sparse"))
    n = sum(op.weight.q.size for op in q.ops)             # 266,200 weights, 26,620 of them kept
    saved = n * bits / 8 - (n / 8 + 0.1 * n * bits / 8)   # weight bytes saved by mask + nonzeros
    assert saved > 0.5 * n * bits / 8
    # each of the 3 mask arrays adds a .npy header (128 B), zip headers and manifest lines: < 500 B
    assert saved - 3 * 500 < dense - sparse < saved


def test_residual_children_are_stored_sparse_too(tmp_path):
    q, x = _pruned("resnet", 8)
    path = quant.export(q, tmp_path / "r", sparse=True)
    man = quant.read_manifest(path)
    residual = next(e for e in man["ops"] if e["kind"] == "residual")
    assert residual["children"]["conv1"]["attrs"]["sparse"] == "bitmask" and man["version"] == 2
    np.testing.assert_array_equal(quant.load_exported(path)(x), q(x))


# ----------------------------------------------------------------------------- "auto": exactly when smaller


def _one_layer(n_zeros, top, shape=(4, 8)):
    """One linear layer with ``n_zeros`` zero weights and nonzeros in [-top, top] (``top`` reached)."""
    rng = np.random.default_rng(n_zeros)
    n = shape[0] * shape[1]
    q = rng.integers(1, top + 1, n) * rng.choice([-1, 1], n)
    q[0] = top
    q[rng.choice(np.arange(1, n), n_zeros, replace=False)] = 0
    w = Int8Weight(q.reshape(shape).astype(np.int8), np.full(shape[0], 0.01, np.float32))
    op = M.QuantizedLinear(w, np.arange(shape[0], dtype=np.int32), (0.1, 0), (0.05, 3))
    return M.QuantizedModel([op], (0.1, 0), (0.05, 3))


# A 64x64 layer, 4,096 weights; sparse costs the mask (512 B), the nonzeros and 512 B for one more array.
# int8: dense 4,096 B; sparse 512 + nnz + 512 -> 3,072 nonzeros give 4,096 (not smaller), 3,071 give 4,095.
# 4-bit: dense 2,048 B; sparse 512 + ceil(nnz / 2) + 512 -> 2,047 nonzeros give 2,048 (not smaller), 2,046 give 2,046.
@pytest.mark.parametrize("top, n_zeros, sparse, weight_bytes", [
    (100, 1024, False, 4096), (100, 1025, True, 3071),
    (7, 2049, False, 2048), (7, 2050, True, 1023),
])
def test_auto_picks_sparse_exactly_when_the_file_gets_smaller(tmp_path, top, n_zeros, sparse, weight_bytes):
    q = _one_layer(n_zeros, top, shape=(64, 64))
    path = quant.export(q, tmp_path / "one")
    man = quant.read_manifest(path)
    entry = man["ops"][0]
    assert entry["attrs"]["weight_bits"] == (8 if top == 100 else 4)
    assert ("sparse" in entry["attrs"]) == sparse
    sizes = {role: int(np.prod(man["arrays"][name]["shape"])) for role, name in entry["arrays"].items()}
    assert sizes["weight"] == weight_bytes
    assert sizes.get("weight_mask") == (512 if sparse else None)
    if sparse:
        assert entry["attrs"]["nnz"] == 4096 - n_zeros
        assert os.path.getsize(path) < os.path.getsize(quant.export(q, tmp_path / "dense", sparse=False))
    np.testing.assert_array_equal(quant.load_exported(path).ops[0].weight.q, q.ops[0].weight.q)


def test_auto_keeps_a_small_layer_with_few_zeros_dense(tmp_path):
    """Mask + nonzeros take 105 + 270 B against 420 B dense: 45 B saved, less than one more array costs."""
    q = _one_layer(300, 7, shape=(84, 10))                  # 4-bit, 840 weights, 540 nonzeros
    auto = quant.export(q, tmp_path / "auto")
    assert "sparse" not in quant.read_manifest(auto)["ops"][0]["attrs"]
    assert os.path.getsize(auto) < os.path.getsize(quant.export(q, tmp_path / "forced", sparse=True))


def test_sparse_true_and_false_force_the_form(tmp_path):
    q = _one_layer(0, 100)                       # no zeros: sparse costs 4 bytes more, still honoured
    forced = quant.read_manifest(quant.export(q, tmp_path / "t", sparse=True))
    assert forced["ops"][0]["attrs"]["nnz"] == 32 and forced["version"] == 2
    q = _one_layer(30, 100)
    assert "sparse" not in quant.read_manifest(quant.export(q, tmp_path / "f", sparse=False))["ops"][0]["attrs"]
    assert quant.read_manifest(quant.export(q, tmp_path / "f", sparse=np.False_))["version"] == 1


def test_the_mask_is_the_pruning_mask(tmp_path):
    q, _ = _pruned("mlp", 8)
    path = quant.export(q, tmp_path / "m")
    with np.load(path, allow_pickle=False) as f:
        mask = np.unpackbits(f["ops.0.weight_mask"], bitorder="little")[:300 * 784].reshape(300, 784)
        values = f["ops.0.weight"]
    np.testing.assert_array_equal(mask, q.ops[0].weight.q != 0)
    assert mask.mean() == pytest.approx(0.1, abs=1e-3)
    np.testing.assert_array_equal(values, q.ops[0].weight.q[q.ops[0].weight.q != 0])


@pytest.mark.parametrize("bad", ["yes", "sparse", 1, 0, None, 1.0])
def test_bad_sparse_value_is_refused(tmp_path, bad):
    q = _one_layer(5, 100)
    err = TypeError if not isinstance(bad, str) else ValueError
    with pytest.raises(err, match=r"export\(\): sparse must be one of \{'auto', True, False\}, got "):
        quant.export(q, tmp_path / "x", sparse=bad)
    assert not os.path.exists(tmp_path / "x.npz")


# ----------------------------------------------------------------------------- damaged files


def _sha256(arrays):
    """The payload hash as the module docstring defines it (written out here, not the exporter's)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _damage(path, change, rehash=True):
    """Apply ``change(arrays)``, then (``rehash``) fix the manifest's shapes and hash so only the structure is wrong."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k].copy() for k in f.files}
    man = json.loads(arrays.pop("__manifest__").tobytes())
    change(arrays)
    if rehash:
        man["arrays"] = {k: {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()}
        man["payload_sha256"] = _sha256(arrays)
    np.savez(path, **arrays, __manifest__=np.frombuffer(json.dumps(man).encode(), np.uint8))


def _set_bit(name, where):
    def change(arrays):
        bits = np.unpackbits(arrays[name], bitorder="little")
        bits[where(bits)] = 1
        arrays[name] = np.packbits(bits, bitorder="little")
    return change


@pytest.mark.parametrize("bits", [8, 4])
def test_damaged_sparse_weights_are_refused_naming_the_array(tmp_path, bits):
    q, _ = _pruned("mlp", bits)
    n = 100 * 300                                              # ops.1: 100 x 300
    cases = {
        "extra bit": (_set_bit("ops.1.weight_mask", lambda b: np.flatnonzero(b[:n] == 0)[7]),
                      r"array 'ops\.1\.weight_mask' has 3001 bits set \(0 past .*nnz 3000"),
        "values truncated": (lambda a: a.__setitem__("ops.1.weight", a["ops.1.weight"][:-1]),
                             r"array 'ops\.1\.weight' holds"),
        "mask truncated": (lambda a: a.__setitem__("ops.0.weight_mask", a["ops.0.weight_mask"][:-1]),
                           r"array 'ops\.0\.weight_mask' is uint8 of 29399 bytes, expected uint8 of 29400"),
    }
    for case, (change, message) in cases.items():
        path = quant.export(q, tmp_path / case)
        _damage(path, change)
        with pytest.raises(ValueError, match=r"load_exported\(\): .*" + message):
            quant.load_exported(path)


def test_a_mask_bit_past_the_last_weight_is_refused(tmp_path):
    q = _one_layer(10, 100, shape=(3, 5))                     # 15 weights: 2 mask bytes, 1 bit of padding
    path = quant.export(q, tmp_path / "m", sparse=True)
    _damage(path, _set_bit("ops.0.weight_mask", lambda b: 15))
    with pytest.raises(ValueError, match=r"array 'ops\.0\.weight_mask' has 6 bits set \(1 past the 15 weights\), "
                                         r"the entry says nnz 5"):
        quant.load_exported(path)


def test_damaged_values_dtype_is_refused(tmp_path):
    q, _ = _pruned("mlp", 8)
    path = quant.export(q, tmp_path / "m")
    _damage(path, lambda a: a.__setitem__("ops.0.weight", a["ops.0.weight"].astype(np.int16)))
    with pytest.raises(ValueError, match=r"array 'ops\.0\.weight' is int16, expected int8"):
        quant.load_exported(path)


def test_the_hash_covers_the_mask(tmp_path):
    q, _ = _pruned("mlp", 8)
    path = quant.export(q, tmp_path / "m")
    _damage(path, _set_bit("ops.1.weight_mask", lambda b: np.flatnonzero(b == 0)[0]), rehash=False)
    with pytest.raises(ValueError, match="SHA-256"):
        quant.load_exported(path)


# ----------------------------------------------------------------------------- version 1


def test_a_version_1_file_written_before_sparse_weights_still_loads(tmp_path):
    """tests/data/export_v1.npz was written by the exporter of version 1 (see make_export_v1.py)."""
    old = os.path.join(DATA, "export_v1.npz")
    assert quant.read_manifest(old)["version"] == 1
    q = quant.load_exported(old)
    with np.load(os.path.join(DATA, "export_v1_expected.npz"), allow_pickle=False) as f:
        x, out, out_int = f["x"], f["out"], f["out_int"]
    np.testing.assert_array_equal(q(x), out)
    np.testing.assert_array_equal(q.run_integer(q.quantize_input(x)), out_int)
    # sparse=False writes the very same manifest and arrays (so a version-1 reader reads it) ...
    again = quant.export(q, tmp_path / "again", sparse=False)
    with np.load(old, allow_pickle=False) as a, np.load(again, allow_pickle=False) as b:
        assert a.files == b.files
        for k in a.files:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
    # ... and sparse=True stores both pruned layers sparse, as version 2 ("auto" keeps layers this small dense)
    assert quant.read_manifest(quant.export(q, tmp_path / "auto"))["version"] == 1
    man = quant.read_manifest(quant.export(q, tmp_path / "sparse", sparse=True))
    assert man["version"] == 2 and [e["attrs"]["nnz"] for e in _weight_entries(man["ops"])] == [18, 90]
