"""export / load_exported: round trip with equal outputs, bit packing, tampered and truncated files refused."""
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import prunekit as pk
from prunekit import quant
from prunekit.quant import exporter


def _model(kind):
    rng = np.random.default_rng(0)
    if kind == "lenet5":
        m, x = pk.models.lenet5(seed=0), rng.random((48, 1, 28, 28)).astype(np.float32)
    elif kind == "resnet":
        m, x = pk.models.resnet_small(channels=(4, 8), seed=0), rng.random((48, 1, 12, 12)).astype(np.float32)
    else:
        m, x = pk.models.lenet_300_100(seed=0), rng.random((48, 784)).astype(np.float32)
    return m.eval(), x


@pytest.mark.parametrize("kind", ["mlp", "lenet5", "resnet"])
def test_round_trip_gives_the_same_integers(tmp_path, kind):
    m, x = _model(kind)
    q = quant.quantize_model(m, (x, np.zeros(len(x))))
    path = quant.export(q, tmp_path / "model")
    assert path.endswith(".npz") and os.path.exists(path) and not os.path.exists(path + ".tmp.npz")
    q2 = quant.load_exported(path)
    xq = q.quantize_input(x)
    np.testing.assert_array_equal(q2.run_integer(xq), q.run_integer(xq))
    np.testing.assert_array_equal(q2(x), q(x))
    assert q2.input_qp == q.input_qp and q2.output_qp == q.output_qp
    # no pickle anywhere: every array loads with allow_pickle=False and has a plain dtype
    with np.load(path, allow_pickle=False) as f:
        assert all(f[k].dtype.kind in "iuf" for k in f.files)


def test_file_is_compact_and_the_manifest_describes_it(tmp_path):
    m, x = _model("mlp")
    q = quant.quantize_model(m, (x, np.zeros(len(x))))
    path = quant.export(q, tmp_path / "m.npz")
    n_weights = sum(op.weight.q.size for op in q.ops)
    size = os.path.getsize(path)
    float_bytes = 4 * m.num_parameters()
    assert n_weights <= size < 0.27 * float_bytes  # ~4x smaller than float32, overhead included
    man = quant.read_manifest(path)
    assert man["format"] == "prunekit.quant" and man["version"] == 1
    assert [e["kind"] for e in man["ops"]] == ["linear", "linear", "linear"]
    assert man["ops"][0]["attrs"]["relu"] is True and man["ops"][2]["attrs"]["relu"] is False
    assert len(man["payload_sha256"]) == 64


def test_low_bit_weights_are_bit_packed(tmp_path):
    m, x = _model("mlp")
    q8 = quant.quantize_model(m, (x, np.zeros(len(x))))
    q4 = quant.quantize_model(m, (x, np.zeros(len(x))), weight_bits=4)
    p8, p4 = quant.export(q8, tmp_path / "q8"), quant.export(q4, tmp_path / "q4")
    assert os.path.getsize(p4) < 0.6 * os.path.getsize(p8)
    man = quant.read_manifest(p4)
    assert all(e["attrs"]["packed_bits"] == 4 for e in man["ops"])
    q4b = quant.load_exported(p4)
    for a, b in zip(q4.ops, q4b.ops):
        np.testing.assert_array_equal(a.weight.q, b.weight.q)
    np.testing.assert_array_equal(q4b(x), q4(x))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(0, 70), st.integers(0, 2 ** 32 - 1))
def test_pack_unpack_is_lossless(bits, n, seed):
    rng = np.random.default_rng(seed)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = rng.integers(lo, hi + 1, n).astype(np.int8)
    packed = exporter.pack_bits(q, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
    np.testing.assert_array_equal(exporter.unpack_bits(packed, bits, n), q)


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k].copy() for k in f.files}
    change(arrays)
    np.savez(path, **arrays)


def test_tampered_array_is_refused(tmp_path):
    m, x = _model("mlp")
    path = quant.export(quant.quantize_model(m, (x, np.zeros(len(x)))), tmp_path / "m")

    def flip(arrays):  # a valid zip, valid npy, same shapes: only the hash can tell
        arrays["ops.1.weight"][3, 7] ^= 1
    _rewrite(path, flip)
    with pytest.raises(ValueError, match=r"load_exported\(\).*SHA-256.*modified"):
        quant.load_exported(path)


def test_missing_or_reshaped_array_is_refused(tmp_path):
    m, x = _model("mlp")
    q = quant.quantize_model(m, (x, np.zeros(len(x))))
    path = quant.export(q, tmp_path / "a")
    _rewrite(path, lambda a: a.pop("ops.2.bias"))
    with pytest.raises(ValueError, match="missing.*ops.2.bias"):
        quant.load_exported(path)
    path = quant.export(q, tmp_path / "b")
    _rewrite(path, lambda a: a.__setitem__("ops.2.bias", a["ops.2.bias"].astype(np.int64)))
    with pytest.raises(ValueError, match="ops.2.bias"):
        quant.load_exported(path)


def test_truncated_and_garbage_files_are_refused(tmp_path):
    m, x = _model("mlp")
    path = quant.export(quant.quantize_model(m, (x, np.zeros(len(x)))), tmp_path / "m")
    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="damaged or truncated"):
            quant.load_exported(bad)
    # one flipped byte inside the payload: the zip's CRC or our hash catches it
    mid = bytearray(data)
    mid[len(mid) // 2] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(mid))
    with pytest.raises(ValueError, match="load_exported"):
        quant.load_exported(tmp_path / "flip.npz")
    other = tmp_path / "plain.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="no manifest"):
        quant.load_exported(other)
    with pytest.raises(FileNotFoundError, match="path"):
        quant.load_exported(tmp_path / "nope.npz")


def test_unknown_kind_and_version_are_refused(tmp_path):
    m, x = _model("mlp")
    path = quant.export(quant.quantize_model(m, (x, np.zeros(len(x)))), tmp_path / "m")

    def edit(fn):
        def change(arrays):
            man = json.loads(arrays["__manifest__"].tobytes())
            fn(man)
            arrays["__manifest__"] = np.frombuffer(json.dumps(man).encode(), np.uint8)
        return change

    _rewrite(path, edit(lambda man: man.__setitem__("version", 99)))
    with pytest.raises(ValueError, match="version 99"):
        quant.load_exported(path)
    path = quant.export(quant.quantize_model(m, (x, np.zeros(len(x)))), tmp_path / "k")
    _rewrite(path, edit(lambda man: man["ops"][0].__setitem__("kind", "kmeans_linear")))
    with pytest.raises(ValueError, match="unknown kind 'kmeans_linear'"):
        quant.load_exported(path)


def test_a_new_kind_can_be_registered(tmp_path):
    class Negate:
        kind = "negate_test"

        def run(self, q):
            return (-q.astype(np.int16)).clip(-128, 127).astype(np.int8)

    exporter.register_kind("negate_test", lambda op, put: (put("marker", np.arange(3, dtype=np.int8)),
                                                            {"kind": "negate_test"})[1],
                           lambda entry, get: Negate())
    try:
        q = quant.QuantizedModel([Negate()], (0.1, 0), (0.1, 0))
        path = quant.export(q, tmp_path / "n")
        assert quant.read_manifest(path)["ops"][0]["arrays"] == {"marker": "ops.0.marker"}
        np.testing.assert_array_equal(quant.load_exported(path)(np.array([0.5, -1.0])), [-0.5, 1.0])
    finally:
        exporter._KINDS.pop("negate_test")


def test_export_errors(tmp_path):
    with pytest.raises(TypeError, match="QuantizedModel"):
        quant.export(pk.models.mlp([4, 2]), tmp_path / "x")
