"""A compact, self-checking file for a quantized model: one ``.npz`` with a JSON manifest inside.

    quant.export(qmodel, "lenet.npz")
    qmodel2 = quant.load_exported("lenet.npz")      # prunekit alone; same outputs, bit for bit

File format (versions 1 and 2)
------------------------------
An uncompressed NumPy ``.npz`` (a zip of ``.npy`` arrays; read with ``allow_pickle=False``)
holding the model's arrays plus one entry ``__manifest__``: UTF-8 JSON bytes stored as
a uint8 array. The manifest::

    {"format": "prunekit.quant", "version": 2,                    # 1 if no weight is sparse
     "input":  {"scale": 0.0039215689, "zero_point": -128},       # float -> int8 at the input
     "output": {"scale": 0.11, "zero_point": 3},                  # int8 -> float at the output
     "sample_shape": [1, 28, 28],                                  # one input (or null)
     "ops": [ <entry>, ... ],                                     # run in order
     "arrays": {"<name>": {"dtype": "int8", "shape": [300, 784]}, ...},
     "payload_sha256": "<hex>"}

Each ``<entry>`` is ``{"kind": ..., "arrays": {role: array name}, "attrs": {...}}``, with
``"children": {role: <entry>}`` for composite ops. Kinds:

===========  ==========================================================  =================================
kind         arrays                                                      attrs
===========  ==========================================================  =================================
linear       weight (int8, or bit-packed: see below), weight_scale        in/out scale and zero point, relu,
             (float32, per output channel), bias (int32, scale            weight_bits, weight_shape_2d
             s_in * s_w[c])
             sparse (version 2): weight_mask (uint8, 1 bit per weight)    + "sparse": "bitmask", "nnz"
             and weight (the nnz nonzeros only, int8 or bit-packed)
conv         as linear (weight flattened to (out, in*kh*kw))              + kernel_size, stride, padding
residual     (children conv1, conv2, optional shortcut, add)
add          --                                                           a, b, out scale and zero point, relu
maxpool,     --                                                           kernel_size, stride
avgpool
gap, flatten --                                                           --
relu         --                                                           zero_point
===========  ==========================================================  =================================

Weights of ``weight_bits`` < 8 are *bit-packed*: ``q + 2^(b-1)`` as ``b``-bit unsigned
fields, least significant bit first, through ``np.packbits`` (``"packed_bits": b`` and
``"count"``, the number of values packed, in the entry's attrs): a 4-bit layer takes half the bytes of int8.

Sparse weights (version 2), for pruned layers: ``weight_mask`` is ``np.packbits(q != 0,
bitorder="little")`` over the ``n`` weights in row-major order (``ceil(n / 8)`` bytes, the bits
past ``n`` zero) and ``weight`` holds the ``nnz`` nonzero ``q`` in the same order, int8 or
bit-packed as above (then ``count == nnz``). A pruned weight is 0.0 and the weights' zero point
is 0, so it quantizes to exactly 0 and the mask holds the pruning mask (plus any weight that
rounded to 0). ``export(sparse="auto")`` stores a layer this way only when the file gets smaller:
``ceil(n / 8) + ceil(nnz * b / 8) + 512 < ceil(n * b / 8)`` bytes, the 512 for the mask being one
more array (its headers and manifest lines); for a large int8 layer, when more than 1/8 of its
weights are zero. The reader checks that the mask has ``nnz`` bits set and ``weight`` holds
``nnz`` values, and refuses the file (``ValueError`` naming the array) if not.

Versions: a file says the lowest version that reads it: 1 when every weight is dense
(``sparse=False``, or nothing to gain), 2 when any is sparse. A version-1 file has the same
manifest and arrays as prunekit wrote before sparse weights existed, so older prunekits read
it; they refuse a version-2 file ("format version 2") instead of misreading it. This reader
reads both.

Integrity: ``payload_sha256`` is the SHA-256 over every array except the manifest, in
sorted name order, of ``name``, ``dtype``, ``shape`` and the raw bytes. A file whose
zip is damaged, whose arrays do not match the manifest, or whose hash differs is
refused with a ``ValueError`` saying which.

Extending: another kind of entry (k-means codebooks and indices, Huffman streams, ...)
is added with :func:`register_kind` ``(kind, save, load)``: ``save(op, put) -> entry``
stores arrays through ``put(role, array)`` (``put.sparse`` is :func:`export`'s ``sparse``
option), ``load(entry, get) -> op`` reads them with
``get(role)``; the op must have ``run(int8 array) -> int8 array``. The manifest keeps
its shape, so old readers fail with "unknown kind" rather than misreading a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from .._validate import check_option, fail
from . import modules as M

__all__ = ["export", "load_exported", "read_manifest", "file_nbytes", "register_kind", "pack_bits", "unpack_bits",
           "FORMAT", "VERSION", "READS"]

FORMAT, VERSION = "prunekit.quant", 2
READS = (1, 2)
"""Format versions :func:`load_exported` reads. A file says the lowest version that can read it:
1 when every weight is stored dense, 2 when at least one is sparse (a bitmask)."""
MANIFEST = "__manifest__"
_SPARSE_OPTIONS = ("auto", True, False)
_MASK_ARRAY_COST = 512
"""Bytes one more array costs in the file: its .npy header (128), the zip's headers (two with its name) and
its manifest lines; 414-428 measured for the names export() writes. "auto" counts it against the mask."""


# =========================================================================== bit packing


def pack_bits(q, bits):
    """Signed ``bits``-bit integers -> uint8 bytes, ``bits`` bits each (least significant bit first)."""
    q = np.asarray(q).ravel()
    u = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    planes = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_bits(packed, bits, count):
    """Inverse of :func:`pack_bits`: ``count`` signed ``bits``-bit values as int8."""
    planes = np.unpackbits(np.asarray(packed, np.uint8), count=count * bits, bitorder="little")
    u = (planes.reshape(count, bits).astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(axis=1)
    return (u - (1 << (bits - 1))).astype(np.int8)


# =========================================================================== kinds

_KINDS = {}


def register_kind(kind, save, load, *, overwrite=False):
    """Teach :func:`export` / :func:`load_exported` a new entry kind (see the module docstring)."""
    if not isinstance(kind, str) or not kind:
        fail("kind", "a non-empty string", kind, TypeError)
    if kind in _KINDS and not overwrite:
        fail("kind", f"a kind not registered yet (pass overwrite=True to replace {kind!r})", kind)
    if not (callable(save) and callable(load)):
        fail("save", "callables save(op, put) -> entry and load(entry, get) -> op", (save, load), TypeError)
    _KINDS[kind] = (save, load)


def _qp(d, prefix=""):
    return float(d[prefix + "scale"]), int(d[prefix + "zero_point"])


def _weight_bits(op):
    q = op.weight.q
    top = int(np.abs(q).max()) if q.size else 0
    for b in range(2, 9):
        if top <= 2 ** (b - 1) - 1:
            return b
    return 8


# =========================================================================== weight storage
# Dense: ``weight`` holds every q (int8, or bit-packed). Sparse: ``weight_mask`` holds one bit per
# weight (q != 0, row-major, np.packbits little bit order) and ``weight`` only the nonzeros, in the
# same order (int8, or bit-packed). A pruned weight is exactly 0 and symmetric quantization (zero
# point 0) keeps it 0, so the mask is the pruning mask (plus any weight that rounded to 0).


def _packed_nbytes(count, bits):
    """Bytes of ``count`` values of ``bits`` bits: one int8 each at 8 bits, else bit-packed (rounded up)."""
    return count if bits == 8 else -(-count * bits // 8)


def _sparse_nbytes(n, nnz, bits):
    """Bytes of ``n`` weights stored sparse: the 1-bit mask (``ceil(n / 8)``) plus the ``nnz`` nonzeros."""
    return -(-n // 8) + _packed_nbytes(nnz, bits)


def _use_sparse(q, bits, sparse):
    """Store ``q`` sparse? ``sparse`` True / False decides; "auto" says yes only when the file gets smaller.

    The mask is one more array in the file, so its overhead (:data:`_MASK_ARRAY_COST`) counts
    too: without it a small layer with a few zeros (LeNet-5's last layer at 4 bits, 420 bytes)
    made the file 401 bytes larger.
    """
    if sparse != "auto":
        return sparse
    n = q.size
    return _sparse_nbytes(n, int(np.count_nonzero(q)), bits) + _MASK_ARRAY_COST < _packed_nbytes(n, bits)


def _put_weight(put, q, bits, sparse):
    """Store the int8 weight matrix ``q`` (``bits`` bits used) with ``put``; return the attrs that describe it."""
    attrs, values = {}, q
    if _use_sparse(q, bits, sparse):
        nonzero = q.ravel() != 0
        put("weight_mask", np.packbits(nonzero, bitorder="little"))
        values = q.ravel()[nonzero]
        attrs.update(sparse="bitmask", nnz=int(values.size))
    if bits < 8:
        put("weight", pack_bits(values, bits))
        attrs.update(packed_bits=bits, count=int(values.size))
    else:
        put("weight", values)
    return attrs


def _array_error(entry, role, why):
    """A ValueError naming the file's array that plays ``role`` in ``entry``."""
    return ValueError(f"array '{entry['arrays'][role]}' {why}")


def _get_values(entry, get, count):
    """The ``count`` int8 values stored under ``weight`` (unpacked if bit-packed), checked for length."""
    a, values = entry["attrs"], get("weight")
    expected = np.uint8 if "packed_bits" in a else np.int8
    if values.dtype != expected:
        raise _array_error(entry, "weight", f"is {values.dtype}, expected {np.dtype(expected)}")
    if "packed_bits" in a:
        bits = int(a["packed_bits"])
        if int(a["count"]) != count or values.size != _packed_nbytes(count, bits):
            raise _array_error(entry, "weight", f"holds {values.size} bytes (count {a['count']}), expected "
                                                f"{count} values of {bits} bits ({_packed_nbytes(count, bits)} bytes)")
        return unpack_bits(values, bits, count)
    if values.size != count:
        raise _array_error(entry, "weight", f"holds {values.size} values, expected {count}")
    return values.ravel()


def _get_mask(entry, get, n):
    """The boolean mask of ``n`` weights under ``weight_mask``; its set bits must number ``nnz``."""
    packed = get("weight_mask")
    nnz = int(entry["attrs"]["nnz"])
    if packed.dtype != np.uint8 or packed.size != -(-n // 8):
        raise _array_error(entry, "weight_mask", f"is {packed.dtype} of {packed.size} bytes, expected uint8 of "
                                                 f"{-(-n // 8)} bytes for {n} weights")
    bits = np.unpackbits(packed, bitorder="little").astype(bool)
    set_bits = int(bits.sum())
    if set_bits != nnz or bits[n:].any():
        raise _array_error(entry, "weight_mask", f"has {set_bits} bits set ({int(bits[n:].sum())} past the "
                                                 f"{n} weights), the entry says nnz {nnz}")
    return bits[:n]


def _get_weight(entry, get, shape):
    """The int8 weight matrix of ``shape`` written by :func:`_put_weight`, dense or sparse (checked)."""
    n = int(np.prod(shape))
    storage = entry["attrs"].get("sparse")
    if storage is None:
        return _get_values(entry, get, n).reshape(shape)
    if storage != "bitmask":
        raise ValueError(f"unknown sparse storage {storage!r} (known: 'bitmask'; a newer prunekit may read it)")
    mask = _get_mask(entry, get, n)
    q = np.zeros(n, np.int8)
    q[mask] = _get_values(entry, get, int(entry["attrs"]["nnz"]))
    return q.reshape(shape)


# =========================================================================== linear and conv


def _save_linear(op, put):
    """A linear or conv op -> its entry; the weight dense or sparse as ``put.sparse`` says."""
    bits = _weight_bits(op)
    attrs = {"in_scale": op.in_qp[0], "in_zero_point": op.in_qp[1], "out_scale": op.out_qp[0],
             "out_zero_point": op.out_qp[1], "relu": bool(op.relu), "weight_bits": bits,
             "weight_shape_2d": list(op.weight.shape)}
    attrs.update(_put_weight(put, op.weight.q, bits, getattr(put, "sparse", False)))
    put("weight_scale", op.weight.scales.astype(np.float32))
    put("bias", op.bias_q.astype(np.int32))
    if isinstance(op, M.QuantizedConv2d):
        attrs.update(kernel_size=list(op.kernel_size), stride=list(op.stride), padding=list(op.padding))
        return {"kind": "conv", "attrs": attrs}
    return {"kind": "linear", "attrs": attrs}


def _load_linear(entry, get):
    """An entry of kind linear or conv -> the QuantizedLinear / QuantizedConv2d."""
    from ..sparse import Int8Weight

    a = entry["attrs"]
    q = _get_weight(entry, get, tuple(a["weight_shape_2d"]))
    w = Int8Weight(np.ascontiguousarray(q, np.int8), get("weight_scale").astype(np.float32))
    in_qp, out_qp = _qp(a, "in_"), _qp(a, "out_")
    if entry["kind"] == "conv":
        return M.QuantizedConv2d(w, get("bias"), in_qp, out_qp, tuple(a["kernel_size"]), tuple(a["stride"]),
                                 tuple(a["padding"]), a["relu"])
    return M.QuantizedLinear(w, get("bias"), in_qp, out_qp, a["relu"])


def _save_add(op, put):
    return {"kind": "add", "attrs": {"a_scale": op.a_qp[0], "a_zero_point": op.a_qp[1], "b_scale": op.b_qp[0],
                                     "b_zero_point": op.b_qp[1], "out_scale": op.out_qp[0],
                                     "out_zero_point": op.out_qp[1], "relu": bool(op.relu)}}


def _load_add(entry, get):
    a = entry["attrs"]
    return M.QuantizedAdd(_qp(a, "a_"), _qp(a, "b_"), _qp(a, "out_"), a["relu"])


def _save_pool(op, put):
    return {"kind": op.kind, "attrs": {"kernel_size": list(op.kernel_size), "stride": list(op.stride)}}


def _load_pool(entry, get):
    cls = M.QuantizedAvgPool2d if entry["kind"] == "avgpool" else M.QuantizedMaxPool2d
    return cls(tuple(entry["attrs"]["kernel_size"]), tuple(entry["attrs"]["stride"]))


register_kind("linear", _save_linear, _load_linear)
register_kind("conv", _save_linear, _load_linear)
register_kind("add", _save_add, _load_add)
register_kind("maxpool", _save_pool, _load_pool)
register_kind("avgpool", _save_pool, _load_pool)
register_kind("gap", lambda op, put: {"kind": "gap"}, lambda e, get: M.QuantizedGlobalAvgPool2d())
register_kind("flatten", lambda op, put: {"kind": "flatten"}, lambda e, get: M.QuantizedFlatten())
register_kind("relu", lambda op, put: {"kind": "relu", "attrs": {"zero_point": op.zero_point}},
              lambda e, get: M.QuantizedReLU(e["attrs"]["zero_point"]))
# "residual" is composite: handled by _save_op / _load_op through children


# =========================================================================== export / load


class _Put:
    """The ``put(role, array)`` a kind's save function gets: stores ``array`` as ``"<prefix>.<role>"``.

    ``put.sparse`` is :func:`export`'s ``sparse`` option, for kinds that store weight matrices.
    """

    def __init__(self, prefix, arrays, sparse):
        self.prefix, self.arrays, self.sparse, self.roles = prefix, arrays, sparse, {}

    def __call__(self, role, array):
        name = f"{self.prefix}.{role}"
        self.arrays[name] = np.ascontiguousarray(array)
        self.roles[role] = name


def _save_op(op, prefix, arrays, sparse):
    """One op -> its manifest entry; its arrays go into ``arrays`` under ``prefix``."""
    put = _Put(prefix, arrays, sparse)
    if isinstance(op, M.QuantizedResidual):
        children = {"conv1": op.conv1, "conv2": op.conv2, "add": op.add}
        if op.shortcut is not None:
            children["shortcut"] = op.shortcut
        entry = {"kind": "residual",
                 "children": {k: _save_op(v, f"{prefix}.{k}", arrays, sparse) for k, v in children.items()}}
    else:
        kind = getattr(op, "kind", None)
        if kind not in _KINDS:
            fail("model", f"ops of the registered kinds {sorted(_KINDS)}", f"an op {type(op).__name__} "
                 f"(kind {kind!r})", TypeError)
        entry = dict(_KINDS[kind][0](op, put))
    entry["arrays"] = put.roles
    entry.setdefault("attrs", {})
    return entry


def _version_needed(entries):
    """The lowest format version that reads these entries: 2 if any weight is sparse, else 1."""
    for e in entries:
        if "sparse" in e.get("attrs", {}) or _version_needed(e.get("children", {}).values()) == 2:
            return 2
    return 1


def _check_sparse(sparse):
    """export()'s ``sparse``: "auto", True or False (not 0 or 1, which compare equal to False and True)."""
    if not isinstance(sparse, (str, bool, np.bool_)):
        fail("sparse", "one of {'auto', True, False}", repr(sparse), TypeError)
    return check_option("sparse", sparse if isinstance(sparse, str) else bool(sparse), _SPARSE_OPTIONS)


def _payload_sha256(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def export(model, path, *, sparse="auto"):
    """Write a :class:`~prunekit.quant.modules.QuantizedModel` to ``path`` (.npz + JSON manifest, no pickle).

    ``sparse`` says how linear and conv weights are stored: ``"auto"`` as a bitmask plus the
    nonzero values for each layer where that makes the file smaller (``ceil(n / 8) + nnz * bits / 8``
    plus 512 bytes for one more array, against ``n * bits / 8``: for a large int8 layer, more than
    1/8 of its weights zero, as in a pruned layer), ``True`` always, ``False`` never (every weight,
    zeros included; a version-1 file, as older prunekits wrote and read).

    The file is written under a temporary name and renamed, so a crash never leaves a
    half-written model. Returns the path written (``.npz`` added if missing).
    """
    if not isinstance(model, M.QuantizedModel):
        fail("model", "a QuantizedModel (from quantize_model() or convert())", type(model).__name__, TypeError)
    sparse = _check_sparse(sparse)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    arrays = {}
    ops = [_save_op(op, f"ops.{i}", arrays, sparse) for i, op in enumerate(model.ops)]
    manifest = {
        "format": FORMAT, "version": _version_needed(ops),
        "input": {"scale": model.input_qp[0], "zero_point": model.input_qp[1]},
        "output": {"scale": model.output_qp[0], "zero_point": model.output_qp[1]},
        "sample_shape": None if model.sample_shape is None else list(model.sample_shape),
        "ops": ops,
        "arrays": {k: {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in sorted(arrays.items())},
        "payload_sha256": _payload_sha256(arrays),
    }
    blob = np.frombuffer(json.dumps(manifest, indent=1).encode("utf-8"), np.uint8)
    tmp = path + ".tmp.npz"
    try:
        np.savez(tmp, **arrays, **{MANIFEST: blob})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _refuse(path, why):
    raise ValueError(f"load_exported(): '{path}' is not a valid prunekit quantized model: {why}.")


def read_manifest(path) -> dict:
    """The JSON manifest of an exported file (not checked against the payload; :func:`load_exported` does that)."""
    return _read(path)[0]


def _read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        fail("path", "an existing file written by export()", path, FileNotFoundError)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        _refuse(path, f"the file is damaged or truncated ({type(e).__name__}: {e})")
    if MANIFEST not in arrays:
        _refuse(path, "it has no manifest (was it written by quant.export()?)")
    try:
        manifest = json.loads(arrays.pop(MANIFEST).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _refuse(path, f"its manifest is not valid JSON ({e})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _refuse(path, f"its manifest does not say format {FORMAT!r}")
    version = manifest.get("version")
    if type(version) is not int or version not in READS:
        _refuse(path, f"it has format version {manifest.get('version')!r}; this prunekit reads versions "
                      f"{' and '.join(map(str, READS))}")
    return manifest, arrays


def load_exported(path) -> M.QuantizedModel:
    """Read a file written by :func:`export` and return the runnable :class:`QuantizedModel`.

    Checks, in order: the zip is readable, the manifest is ours, every array the
    manifest lists is present with its dtype and shape (and nothing else), and the
    payload's SHA-256 matches. Any failure is a ``ValueError`` naming the file and the problem.
    """
    manifest, arrays = _read(path)
    listed = manifest.get("arrays", {})
    if set(listed) != set(arrays):
        missing, extra = sorted(set(listed) - set(arrays)), sorted(set(arrays) - set(listed))
        _refuse(path, f"its arrays do not match the manifest (missing {missing}, unexpected {extra})")
    for name, meta in listed.items():
        a = arrays[name]
        if a.dtype.str != meta["dtype"] or list(a.shape) != meta["shape"]:
            _refuse(path, f"array '{name}' is {a.dtype.str} {list(a.shape)}, the manifest says "
                          f"{meta['dtype']} {meta['shape']}")
    digest = _payload_sha256(arrays)
    if digest != manifest.get("payload_sha256"):
        _refuse(path, f"its payload SHA-256 is {digest[:16]}..., the manifest says "
                      f"{str(manifest.get('payload_sha256'))[:16]}... (the file was modified)")
    try:
        ops = [_load_op(e, arrays) for e in manifest["ops"]]
        model = M.QuantizedModel(ops, _qp(manifest["input"]), _qp(manifest["output"]),
                                 sample_shape=manifest.get("sample_shape"))
    except (KeyError, TypeError, ValueError) as e:
        _refuse(path, f"its manifest is incomplete or inconsistent ({type(e).__name__}: {e})")
    return model


def _load_op(entry, arrays):
    kind = entry["kind"]

    def get(role):
        return arrays[entry["arrays"][role]]

    if kind == "residual":
        ch = entry["children"]
        sc = _load_op(ch["shortcut"], arrays) if "shortcut" in ch else None
        return M.QuantizedResidual(_load_op(ch["conv1"], arrays), _load_op(ch["conv2"], arrays), sc,
                                   _load_op(ch["add"], arrays))
    if kind not in _KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {sorted(_KINDS)}; a newer prunekit may read it)")
    return _KINDS[kind][1](entry, get)


def file_nbytes(path) -> int:
    """Bytes of the exported file on disk (everything: arrays, manifest, zip headers)."""
    return os.path.getsize(os.fspath(path))

