"""How many bytes a compressed model really takes, stage by stage, and the file that holds it.

Deep Compression (Han, Mao & Dally 2016) shrinks a network in three stages:
pruning, k-means weight sharing, Huffman coding. :func:`compression_report` counts
the bytes after each stage with *every* overhead included: the sparse indices
(relative indices with filler zeros), the codebooks, the Huffman code tables, the
biases and other float parameters, and for the last stage the container itself
(zip headers, the JSON manifest). The MIT Han lab's teaching material quotes a
model size that counts only the stored weights (``nnz * bits``); indices and
codebooks are left out, which flatters sparse models. Ours does not.

The stages (bytes, per weight-bearing layer; other parameters are float32 in every stage):

========================  ===============================================================
``dense``                 ``4 * size`` (float32)
``pruned``                float32 value + ``gap_bits`` relative index per stored entry
                          (fillers included)
``kmeans``                fixed-width cluster index + ``gap_bits`` index per entry, plus
                          the float32 codebook; the index width is ``ceil(log2(k + 1))``
                          when the layer needs filler zeros (their zero is one more
                          symbol: the k centroids need not contain 0), else ``log2(k)``
``huffman``               both streams Huffman-coded, plus their code-length tables and
                          the codebook
``file``                  the size of the file :func:`save_compressed` writes (measured)
========================  ===============================================================

A layer that was not shared keeps float32 values in the ``kmeans`` and ``huffman``
stages (its relative indices are still Huffman-coded).

The file (:func:`save_compressed`) is a zip with two members, readable by
``np.load(path, allow_pickle=False)``: ``payload.npy`` (one uint8 array: every
stream, codebook and float parameter back to back) and ``manifest.json`` (the
layers, where each piece lies in the payload, and the payload's SHA-256).
:func:`load_compressed` checks the hash and every offset before it builds
anything, so a tampered or truncated file is refused with a clear error.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import OrderedDict

import numpy as np

from .. import nn
from .._validate import check_int, fail
from .huffman import HuffmanStream, to_relative, from_relative
from .kmeans import SharedWeights

__all__ = ["CompressionReport", "compression_report", "save_compressed", "load_compressed", "STAGES",
           "FORMAT", "FORMAT_VERSION"]

STAGES = ("dense", "pruned", "kmeans", "huffman", "file")
FORMAT = "prunekit-compressed"
FORMAT_VERSION = 1
PARTS = ("values", "indices", "codebook", "other", "container")

_SIMPLE = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten, "Identity": nn.Identity}


def _bytes_of_bits(nbits):
    return -(-int(nbits) // 8)


# --------------------------------------------------------------------------- one layer's streams
class _Encoded:
    """The streams of one weight-bearing layer (what the file stores)."""

    def __init__(self, layer, gap_bits):
        self.shared = isinstance(layer, SharedWeights)
        if self.shared:
            kept, weight_shape = layer.mask, layer.shape
        else:
            w = layer.weight
            kept = (w.mask != 0) if w.mask is not None else (w.data != 0)
            weight_shape = w.shape
        self.shape = tuple(weight_shape)
        self.size = int(np.prod(self.shape))
        self.kept = int(kept.sum())
        positions = np.flatnonzero(kept)
        self.gaps, real = to_relative(positions, gap_bits)
        self.entries = int(self.gaps.size)
        self.fillers = self.entries - self.kept
        self.gap_bits = gap_bits
        self.gap_stream = HuffmanStream.from_symbols(self.gaps, 2 ** gap_bits)
        if self.shared:
            k = layer.codebook.shape[0]
            self.k = k
            self.codebook = layer.codebook.data.astype("<f4")
            symbols = np.full(self.entries, k, dtype=np.int64)          # k = the filler zero
            symbols[real] = layer.indices.ravel()[positions]
            self.symbols = symbols
            self.symbol_stream = HuffmanStream.from_symbols(symbols, k + 1)
            self.index_bits = int(np.ceil(np.log2(k + 1 if self.fillers else k))) if k > 1 else 1
        else:
            values = np.zeros(self.entries, dtype="<f4")
            values[real] = layer.weight.data.ravel()[positions]
            self.values = values

    def stage_bytes(self):
        """``{stage: {part: bytes}}`` for the weight of this layer (dense .. huffman)."""
        gap_fixed = _bytes_of_bits(self.entries * self.gap_bits)
        out = {"dense": {"values": 4 * self.size},
               "pruned": {"values": 4 * self.entries, "indices": gap_fixed}}
        if self.shared:
            out["kmeans"] = {"values": _bytes_of_bits(self.entries * self.index_bits), "indices": gap_fixed,
                             "codebook": 4 * self.k}
            out["huffman"] = {"values": self.symbol_stream.nbytes, "indices": self.gap_stream.nbytes,
                              "codebook": 4 * self.k}
        else:
            out["kmeans"] = dict(out["pruned"])
            out["huffman"] = {"values": 4 * self.entries, "indices": self.gap_stream.nbytes}
        return out


GAP_BITS_AUTO = tuple(range(2, 11))
"""Widths ``gap_bits="auto"`` tries per layer (it keeps the one whose layer takes the fewest Huffman-stage bytes)."""


def _gap_bits_for(model, gap_bits):
    """``{layer name: bits or "auto"}`` for the weight-bearing children of ``model``."""
    names = [n for n, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d, SharedWeights))]
    if isinstance(gap_bits, dict):
        unknown = sorted(set(gap_bits) - set(names))
        if unknown:
            fail("gap_bits", f"an int, 'auto' or a dict keyed by the weight layers {names}", f"keys {unknown}")
        out = {n: gap_bits.get(n, 5) for n in names}
    else:
        out = dict.fromkeys(names, gap_bits)
    for n, b in out.items():
        if b != "auto":
            check_int(f"gap_bits[{n!r}]" if isinstance(gap_bits, dict) else "gap_bits", b, 1, 16)
    return out


def _encode(layer, bits):
    """The layer's streams with ``bits``-bit relative indices (``"auto"``: the cheapest width)."""
    if bits != "auto":
        return _Encoded(layer, bits)
    best, best_bytes = None, None
    for b in GAP_BITS_AUTO:       # fillers add cluster indices too: compare the layer's whole cost
        enc = _Encoded(layer, b)
        n = sum(enc.stage_bytes()["huffman"].values())
        if best is None or n < best_bytes:
            best, best_bytes = enc, n
    return best


def _weight_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, SharedWeights))]


def _other_params(model):
    """Float arrays that are stored as they are: biases, BatchNorm parameters and statistics."""
    names = []
    weights = {id(m.weight) for _, m in _weight_layers(model) if not isinstance(m, SharedWeights)}
    codebooks = {id(m.codebook) for _, m in _weight_layers(model) if isinstance(m, SharedWeights)}
    for n, p in model.named_parameters():
        if id(p) not in weights and id(p) not in codebooks:
            names.append((n, p.data))
    for n, b in model.named_buffers():
        if isinstance(b, np.ndarray) and b.dtype.kind == "f":
            names.append((n, b))
    return names


# --------------------------------------------------------------------------- the report
class CompressionReport:
    """Bytes of a model after each Deep Compression stage, every overhead included.

    ``report.bytes[stage]`` is the total for ``stage`` in :data:`STAGES`;
    ``report.parts[stage]`` splits it into values (weights or cluster indices),
    indices (relative indices), codebook, other (biases and other float
    parameters) and container (zip and manifest, ``file`` only);
    ``report.ratio(stage)`` is dense bytes / stage bytes; ``report.layers`` has one
    row per weight-bearing layer (kept weights, entries with fillers, bytes per stage).
    """

    def __init__(self, parts, layers):
        self.parts = parts
        self.layers = layers
        self.gap_bits = {r["name"]: r["gap_bits"] for r in layers}
        self.bytes = OrderedDict((s, int(sum(parts[s].values()))) for s in STAGES)

    def _gap_text(self):
        widths = set(self.gap_bits.values())
        if len(widths) == 1:
            return f"relative indices: {widths.pop()} bits"
        return "relative indices: " + ", ".join(f"{n}: {b} bits" for n, b in self.gap_bits.items())

    def ratio(self, stage="file"):
        """How many times smaller than dense float32 the model is at ``stage``."""
        if stage not in STAGES:
            fail("stage", f"one of {STAGES}", stage)
        return self.bytes["dense"] / self.bytes[stage]

    @property
    def ratios(self):
        return OrderedDict((s, self.ratio(s)) for s in STAGES)

    def __repr__(self):
        head = (f"{'stage':<8} {'bytes':>10} {'ratio':>7} " + " ".join(f"{p:>10}" for p in PARTS))
        lines = [f"CompressionReport ({self._gap_text()})", head, "-" * len(head)]
        for s in STAGES:
            lines.append(f"{s:<8} {self.bytes[s]:>10,d} {self.ratio(s):>6.1f}x " +
                         " ".join(f"{self.parts[s].get(p, 0):>10,d}" for p in PARTS))
        lines.append("")
        lines.append(f"{'layer':<8} {'shape':<16} {'kept':>8} {'fillers':>8} " +
                     " ".join(f"{s:>9}" for s in STAGES[:-1]))
        for r in self.layers:
            lines.append(f"{r['name']:<8} {str(r['shape']):<16} {r['kept']:>8,d} {r['fillers']:>8,d} " +
                         " ".join(f"{r[s]:>9,d}" for s in STAGES[:-1]))
        return "\n".join(lines)

    def _repr_html_(self):
        head = "".join(f"<th>{p}</th>" for p in PARTS)
        rows = "".join(
            f"<tr><td>{s}</td><td>{self.bytes[s]:,}</td><td>{self.ratio(s):.1f}x</td>" +
            "".join(f"<td>{self.parts[s].get(p, 0):,}</td>" for p in PARTS) + "</tr>" for s in STAGES)
        return (f"<table><caption>Bytes per stage ({self._gap_text()})</caption>"
                f"<tr><th>stage</th><th>bytes</th><th>ratio</th>{head}</tr>{rows}</table>")

    def plot(self, ax=None):
        """Stacked bars: kilobytes of each part at each stage (log scale), ratio on top."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 3.5))[1]
        x = np.arange(len(STAGES))
        bottom = np.zeros(len(STAGES))
        for p in PARTS:
            kb = np.array([self.parts[s].get(p, 0) / 1024 for s in STAGES])
            if kb.any():
                ax.bar(x, kb, bottom=bottom, label=p)
                bottom += kb
        for xi, s in zip(x, STAGES):
            ax.text(xi, bottom[xi], f"{self.ratio(s):.1f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, STAGES)
        ax.set_yscale("log")
        ax.set_xlabel("compression stage")
        ax.set_ylabel("size (KiB, log scale)")
        ax.set_title("Model size per stage, every overhead included")
        ax.legend(fontsize=8)
        return ax


def compression_report(model, *, gap_bits=5) -> CompressionReport:
    """The bytes of ``model`` after each Deep Compression stage (see the module docstring).

    Apply the stages first (``pruning.prune`` / ``iterative_prune``, then
    :func:`share_weights` and centroid fine-tuning); the report counts what the model
    holds. ``gap_bits``: bits of a relative index, an int, a dict ``{"<layer>": bits}``
    (others get 5), or ``"auto"`` (per layer, the width in 2..10 that makes the
    layer's Huffman-coded streams smallest) (the paper: 5 for fully-connected
    layers, 8 for conv). The ``file`` stage is the exact size :func:`save_compressed`
    writes (the model is serialised in memory to measure it).
    """
    payload, manifest, encoded = _build(model, gap_bits)
    file_bytes = len(_zip_bytes(payload, manifest))
    other = sum(4 * a.size for _, a in _other_params(model))
    parts = {s: {"other": other} for s in STAGES}
    layers = []
    for name, enc in encoded:
        sb = enc.stage_bytes()
        row = {"name": name, "shape": enc.shape, "kept": enc.kept, "fillers": enc.fillers,
               "gap_bits": enc.gap_bits}
        for s, d in sb.items():
            row[s] = int(sum(d.values()))
            for p, v in d.items():
                parts[s][p] = parts[s].get(p, 0) + v
        layers.append(row)
    content = sum(parts["huffman"].values())
    parts["file"] = dict(parts["huffman"])
    parts["file"]["container"] = file_bytes - content
    return CompressionReport(parts, layers)


# --------------------------------------------------------------------------- the file
class _Payload:
    """A byte buffer that hands out ``[offset, nbytes]`` for each array appended."""

    def __init__(self):
        self.buf = bytearray()

    def add(self, array):
        b = np.ascontiguousarray(array).tobytes()
        start = len(self.buf)
        self.buf += b
        return [start, len(b)]


def _add_stream(payload, stream):
    return {"data": payload.add(stream.data), "lengths": payload.add(stream.lengths),
            "count": stream.count, "nbits": stream.nbits}


def _describe(module):
    """The manifest entry of a layer that holds no compressed weight."""
    kind = type(module).__name__
    if kind in _SIMPLE and type(module) is _SIMPLE[kind]:
        return {"type": kind}
    if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
        return {"type": kind, "kernel_size": list(module.kernel_size), "stride": list(module.stride)}
    if type(module) is nn.Dropout:
        return {"type": kind, "p": module.p}
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return {"type": kind, "num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.weight is not None}
    from ..models import GlobalAvgPool2d
    if type(module) is GlobalAvgPool2d:
        return {"type": kind}
    return None


def _build(model, gap_bits):
    """(payload bytes, manifest dict, [(name, _Encoded)]) for a flat nn.Sequential."""
    if not isinstance(model, nn.Sequential):
        fail("model", "a prunekit.nn.Sequential of layers (as models.lenet_300_100 and lenet5 are)",
             type(model).__name__, TypeError)
    widths = _gap_bits_for(model, gap_bits)
    payload = _Payload()
    layers, encoded = [], []
    for name, m in model.named_children():
        if isinstance(m, (nn.Linear, nn.Conv2d, SharedWeights)):
            enc = _encode(m, widths[name])
            encoded.append((name, enc))
            entry = {"name": name, "shape": list(enc.shape), "gap_bits": enc.gap_bits,
                     "gaps": _add_stream(payload, enc.gap_stream)}
            bias = getattr(m, "bias", None)
            entry["bias"] = None if bias is None else payload.add(bias.data.astype("<f4"))
            if isinstance(m, SharedWeights):
                entry.update(type="SharedWeights", kind=m.kind, stride=list(m.stride), padding=list(m.padding),
                             codebook=payload.add(enc.codebook), symbols=_add_stream(payload, enc.symbol_stream))
            else:
                entry.update(type=type(m).__name__, values=payload.add(enc.values), masked=m.weight.mask is not None)
                if isinstance(m, nn.Conv2d):
                    entry.update(stride=list(m.stride), padding=list(m.padding))
            layers.append(entry)
            continue
        entry = _describe(m)
        if entry is None:
            fail("model", "a Sequential of Linear, Conv2d, SharedWeights, activations, pooling, Flatten, "
                 "Dropout and BatchNorm layers", f"a layer {name!r} of type {type(m).__name__}", TypeError)
        entry["name"] = name
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            entry["arrays"] = {k: payload.add(getattr(m, k).data.astype("<f4") if k in ("weight", "bias")
                                              else np.asarray(getattr(m, k), "<f4"))
                               for k in ("weight", "bias", "running_mean", "running_var")
                               if getattr(m, k) is not None}
        layers.append(entry)
    data = bytes(payload.buf)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION,
                "payload_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "layers": layers}
    return data, manifest, encoded


def _zip_bytes(payload, manifest):
    """The file's bytes: payload.npy (stored: Huffman bits do not deflate) and manifest.json (deflated)."""
    npy = io.BytesIO()
    np.save(npy, np.frombuffer(payload, dtype=np.uint8), allow_pickle=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(zipfile.ZipInfo("payload.npy", (1980, 1, 1, 0, 0, 0)), npy.getvalue(),
                   compress_type=zipfile.ZIP_STORED)
        text = json.dumps(manifest, separators=(",", ":")).encode()
        z.writestr(zipfile.ZipInfo("manifest.json", (1980, 1, 1, 0, 0, 0)), text,
                   compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def save_compressed(model, path, *, gap_bits=5) -> int:
    """Write ``model`` (a flat nn.Sequential) as a compact ``.npz`` + JSON manifest; return its size in bytes.

    ``gap_bits`` as in :func:`compression_report`.
    Shared layers are stored as Huffman-coded cluster indices and relative indices
    plus a float32 codebook; plain Linear/Conv2d layers as float32 values with
    Huffman-coded relative indices; everything else as float32. No pickle. The file
    is written under a temporary name and renamed, so a crash leaves no half file.
    """
    path = os.fspath(path)
    payload, manifest, _ = _build(model, gap_bits)
    data = _zip_bytes(payload, manifest)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


# --------------------------------------------------------------------------- loading
class _Reader:
    """Slices of the verified payload, with every offset checked."""

    def __init__(self, payload, where):
        self.payload, self.where = payload, where

    def bad(self, what):
        raise ValueError(f"load_compressed(): {self.where} is not a valid compressed model: {what}.")

    def array(self, span, dtype, shape=None):
        try:
            start, n = (int(v) for v in span)
        except (TypeError, ValueError):
            self.bad(f"a section is {span!r}, expected [offset, nbytes]")
        if start < 0 or n < 0 or start + n > len(self.payload) or n % np.dtype(dtype).itemsize:
            self.bad(f"a section [{start}, {n}] lies outside the {len(self.payload)}-byte payload")
        a = np.frombuffer(self.payload[start:start + n], dtype=dtype).copy()
        if shape is not None:
            if a.size != int(np.prod(shape)):
                self.bad(f"a section holds {a.size} values, the shape {tuple(shape)} needs {int(np.prod(shape))}")
            a = a.reshape(shape)
        return a

    def stream(self, spec):
        try:
            s = HuffmanStream(self.array(spec["data"], np.uint8), self.array(spec["lengths"], np.uint8),
                              int(spec["count"]), int(spec["nbits"]))
            return s.to_symbols()
        except (KeyError, TypeError) as e:
            self.bad(f"a Huffman stream description is incomplete ({e})")
        except ValueError as e:
            self.bad(str(e))


def _read_zip(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            if sorted(f.files) != ["manifest.json", "payload.npy"] and \
                    sorted(f.files) != ["manifest.json", "payload"]:
                raise ValueError(f"members {sorted(f.files)}, expected manifest.json and payload.npy")
            payload = f["payload"]
            manifest = f.zip.read("manifest.json")
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile.BadZipFile, CRC errors, EOFError, ValueError from a damaged header ...
        raise ValueError(f"load_compressed(): '{path}' is not a readable compressed prunekit file "
                         f"(truncated or damaged: {e}).") from e
    if payload.dtype != np.uint8 or payload.ndim != 1:
        raise ValueError(f"load_compressed(): '{path}': the payload is not a 1-D uint8 array.")
    try:
        manifest = json.loads(manifest.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"load_compressed(): '{path}': the manifest is not valid JSON ({e}).") from e
    return payload.tobytes(), manifest


def load_compressed(path) -> nn.Sequential:
    """Read a file written by :func:`save_compressed` back into an ``nn.Sequential``.

    Shared layers come back as :class:`SharedWeights` (same codebook, indices and
    mask, so the outputs are identical); plain layers as Linear/Conv2d. The
    payload's SHA-256 must match the manifest's: a tampered or truncated file is
    refused with a ValueError saying so, before anything is built.
    """
    path = os.fspath(path)
    payload, manifest = _read_zip(path)
    where = f"'{path}'"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"load_compressed(): {where} is not a {FORMAT} file.")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"load_compressed(): {where} has format version {manifest.get('version')!r}; "
                         f"this prunekit reads version {FORMAT_VERSION}.")
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != manifest.get("payload_bytes") or digest != manifest.get("sha256"):
        raise ValueError(f"load_compressed(): {where}: the payload does not match the SHA-256 in its manifest "
                         f"(the file was changed or damaged after it was written).")
    r = _Reader(payload, where)
    try:
        layers = [_load_layer(r, e) for e in manifest["layers"]]
    except (KeyError, TypeError) as e:
        r.bad(f"the manifest lacks or mangles an entry ({e!r})")
    return nn.Sequential(*layers)


def _positions(r, entry):
    gap_bits = entry["gap_bits"]
    if not isinstance(gap_bits, int) or not 1 <= gap_bits <= 16:
        r.bad(f"layer {entry['name']!r} has gap_bits {gap_bits!r}")
    gaps = r.stream(entry["gaps"])
    if gaps.size and gaps.max() >= 2 ** gap_bits:
        r.bad("a relative index exceeds gap_bits")
    pos = from_relative(gaps)
    size = int(np.prod(entry["shape"]))
    if pos.size and pos[-1] >= size:
        r.bad(f"layer {entry['name']!r} has a position beyond its {size} weights")
    return pos, size


def _load_layer(r, e):
    kind = e["type"]
    if kind in _SIMPLE:
        return _SIMPLE[kind]()
    if kind in ("MaxPool2d", "AvgPool2d"):
        return getattr(nn, kind)(tuple(e["kernel_size"]), tuple(e["stride"]))
    if kind == "Dropout":
        return nn.Dropout(e["p"])
    if kind == "GlobalAvgPool2d":
        from ..models import GlobalAvgPool2d
        return GlobalAvgPool2d()
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        m = getattr(nn, kind)(e["num_features"], e["eps"], e["momentum"], e["affine"])
        for k, span in e["arrays"].items():
            a = r.array(span, "<f4", (e["num_features"],)).astype(np.float32)
            if k in ("weight", "bias"):
                getattr(m, k).data[...] = a
            else:
                getattr(m, k)[...] = a
        return m
    if kind not in ("SharedWeights", "Linear", "Conv2d"):
        r.bad(f"unknown layer type {kind!r}")
    shape = tuple(int(v) for v in e["shape"])
    if len(shape) not in (2, 4) or min(shape) < 1 or int(np.prod(shape, dtype=np.float64)) > 2 ** 31:
        r.bad(f"layer {e['name']!r} has an impossible weight shape {shape}")
    pos, size = _positions(r, e)
    bias = None if e["bias"] is None else r.array(e["bias"], "<f4", (shape[0],)).astype(np.float32)
    if kind == "SharedWeights":
        codebook = r.array(e["codebook"], "<f4").astype(np.float32)
        symbols = r.stream(e["symbols"])
        if symbols.size != pos.size or (symbols.size and symbols.max() > codebook.size):
            r.bad(f"layer {e['name']!r}: the cluster indices do not match the relative indices")
        real = symbols < codebook.size
        indices = np.zeros(size, dtype=np.int64)
        mask = np.zeros(size, dtype=bool)
        indices[pos[real]] = symbols[real]
        mask[pos[real]] = True
        return SharedWeights(codebook, indices.reshape(shape), mask.reshape(shape),
                             None if bias is None else nn.Parameter(bias), e["kind"],
                             tuple(e["stride"]), tuple(e["padding"]))
    values = r.array(e["values"], "<f4")
    if values.size != pos.size:
        r.bad(f"layer {e['name']!r}: {values.size} values for {pos.size} positions")
    w = np.zeros(size, dtype=np.float32)
    w[pos] = values
    w = w.reshape(shape)
    if kind == "Linear":
        m = nn.Linear(shape[1], shape[0], bias=bias is not None)
    else:
        m = nn.Conv2d(shape[1], shape[0], shape[2:], tuple(e["stride"]), tuple(e["padding"]), bias=bias is not None)
    m.weight.data[...] = w
    if bias is not None:
        m.bias.data[...] = bias
    if e.get("masked"):
        m.weight.mask = (w != 0).astype(np.float32)
    return m
