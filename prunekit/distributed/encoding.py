"""Encodings: how a sparse gradient message (indices and values) becomes bytes on the wire.

A sparsifier (top-k, threshold, DGC) decides *which* values to send; an encoding decides
*how many bytes* each costs. ``encode(indices, values, size) -> bytes`` and
``decode(bytes) -> (indices, values)``; the bytes a worker sends are ``len(buffer)``,
counted from the buffer itself, never from a formula. Register your own with
:func:`register_encoding` (as compressors and scores are registered).

==============  ===========================================================  ====================
name            layout (little-endian)                                       bytes for k entries
==============  ===========================================================  ====================
int32+float32   uint32 count, k int32 indices, k float32 values              8 k + 4
gap16+float16   uint32 count, k float16 values, uint16 gaps of the sorted    4 k + 4 + 2 e
                indices (e escape words, see below)
==============  ===========================================================  ====================

``gap16+float16`` (the delta coding of sparse index lists, as in compressed posting
lists; half-precision values as in Lin et al. 2018's DGC implementation) sorts the entries
by index and stores the first index, then each difference to the previous one, as uint16
words. A gap of 65535 or more is written as ``gap // 65535`` escape words 0xFFFF (each
meaning "add 65535 and read on") followed by ``gap % 65535``; so the escapes of one message
add at most ``2 size / 65535`` bytes whatever k is (8 bytes for LeNet-300-100's 266,610
values). Decoding is one cumulative sum: the indices are the running sums at the words
that are not 0xFFFF.

Values outside float16's range (|v| > 65504) or not finite are refused with a ValueError
(as :class:`~prunekit.distributed.FP16` does), never sent as inf. Values below float16's
smallest subnormal (about 6e-8) round to zero: their index is sent, their value is not.
With error feedback the rounding error of every value stays in the residual, because the
residual is computed from the *decoded* values.
"""
from __future__ import annotations


import numpy as np

from .._registry import Registry
from .._validate import check_int, fail

__all__ = ["Encoding", "register_encoding", "get_encoding", "available_encodings", "Int32Float32",
           "Gap16Float16"]

_COUNT = np.dtype("<u4")      # the entry count that heads every buffer
FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504
ESCAPE = 0xFFFF               # a gap word meaning "add 65535 and read on"


class Encoding:
    """Base class of sparse-message encodings; subclasses implement ``encode`` and ``decode``.

    ``value_dtype`` is the dtype values travel in; :meth:`encode_values` / :meth:`decode_values`
    send values alone (random-k: the indices follow from a shared seed).
    """

    name = "encoding"
    value_dtype = np.dtype("<f4")

    def encode(self, indices, values, size):
        """One worker's message as bytes: ``indices`` (distinct, in ``[0, size)``) and their ``values``."""
        raise NotImplementedError

    def decode(self, buffer):
        """``(indices, values)`` back from :meth:`encode`'s bytes: int64 indices, float32 values."""
        raise NotImplementedError

    def encode_values(self, values):
        """Values alone, in ``value_dtype`` (no header: the receiver knows how many)."""
        return _values_to(self.value_dtype, values).tobytes()

    def decode_values(self, buffer):
        """Values back from :meth:`encode_values`'s bytes, as float32."""
        return np.frombuffer(buffer, dtype=self.value_dtype).astype(np.float32)

    def __repr__(self):
        return f"{type(self).__name__}()"


_REGISTRY = Registry(Encoding, "prunekit.distributed.Encoding")


def register_encoding(name, cls=None, *, overwrite=False):
    """Add an :class:`Encoding` subclass to the registry under ``name`` (usable as a decorator)."""
    return _REGISTRY.register(name, cls, overwrite=overwrite)


def available_encodings():
    """Names of the registered encodings."""
    return _REGISTRY.names()


def get_encoding(encoding):
    """An :class:`Encoding` instance, or a registered name (built with its defaults)."""
    return _REGISTRY.get(encoding, "encoding")


def _entries(indices, values, size):
    """Checked 1-d int64 indices and float32 values of one message."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= size < 2**31:
        check_int("size", size, 0, 2**31 - 1)           # (raises; checked by hand first: this runs per message)
    idx = np.asarray(indices)
    val = np.asarray(values)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        fail("indices", "a 1-d array of integers", f"shape {idx.shape}, dtype {idx.dtype}")
    if val.ndim != 1 or val.shape != idx.shape or (val.size and val.dtype.kind != "f"):
        fail("values", f"a 1-d float array as long as indices ({idx.size})", f"shape {val.shape}, dtype {val.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        fail("indices", f"in [0, size={size})", f"range [{idx.min()}, {idx.max()}]")
    return idx, val


def _values_to(dtype, values):
    """``values`` in ``dtype``; float16 refuses what it cannot hold instead of sending inf."""
    v = np.asarray(values)
    if dtype.itemsize == 2 and v.size:
        worst = float(np.abs(v).max())
        if not np.isfinite(worst) or worst > FLOAT16_MAX:
            fail("values", f"finite and within float16's range (|v| <= {FLOAT16_MAX:g})", f"max |v| = {worst:g}")
    return v.astype(dtype)


def _count(buffer):
    b = memoryview(buffer)
    if len(b) < _COUNT.itemsize:
        fail("buffer", "at least the 4-byte count", f"{len(b)} bytes")
    return b, int(np.frombuffer(b, dtype=_COUNT, count=1)[0])


@register_encoding("int32+float32")
class Int32Float32(Encoding):
    """Today's message: a uint32 count, then int32 indices and float32 values as given (8 k + 4 bytes)."""

    value_dtype = np.dtype("<f4")

    def encode(self, indices, values, size):
        idx, val = _entries(indices, values, size)
        head = np.array([idx.size], dtype=_COUNT).tobytes()
        return head + idx.astype("<i4").tobytes() + _values_to(self.value_dtype, val).tobytes()

    def decode(self, buffer):
        b, k = _count(buffer)
        if len(b) != 4 + 8 * k:
            fail("buffer", f"4 + 8 x {k} bytes for {k} entries", f"{len(b)} bytes")
        idx = np.frombuffer(b, dtype="<i4", count=k, offset=4).astype(np.int64)
        return idx, np.frombuffer(b, dtype=self.value_dtype, count=k, offset=4 + 4 * k).astype(np.float32)


@register_encoding("gap16+float16")
class Gap16Float16(Encoding):
    """Sorted indices as uint16 gaps (escape 0xFFFF for gaps >= 65535), float16 values: 4 k + 4 bytes
    plus 2 per escape word. Entries come back sorted by index."""

    value_dtype = np.dtype("<f2")

    def encode(self, indices, values, size):
        idx, val = _entries(indices, values, size)
        order = np.argsort(idx, kind="stable")
        idx, val = idx[order], val[order]
        gaps = np.diff(idx, prepend=0)
        if idx.size > 1 and gaps[1:].min() == 0:
            fail("indices", "distinct", f"index {int(idx[1:][gaps[1:] == 0][0])} repeated")
        whole, rest = np.divmod(gaps, ESCAPE)
        ends = np.cumsum(whole + 1) - 1                      # where each entry's last word goes
        words = np.full(int(ends[-1]) + 1 if idx.size else 0, ESCAPE, dtype="<u2")
        words[ends] = rest
        head = np.array([idx.size], dtype=_COUNT).tobytes()
        return head + _values_to(self.value_dtype, val).tobytes() + words.tobytes()

    def decode(self, buffer):
        b, k = _count(buffer)
        start = 4 + 2 * k
        if len(b) < start + 2 * k or (len(b) - start) % 2:
            fail("buffer", f"4 + 2 x {k} bytes of values and whole uint16 gap words for {k} entries",
                 f"{len(b)} bytes")
        words = np.frombuffer(b, dtype="<u2", offset=start)
        ends = words != ESCAPE
        if int(ends.sum()) != k or (words.size and not ends[-1]):
            fail("buffer", f"gap words that end {k} entries", f"{int(ends.sum())} entries")
        idx = np.cumsum(words, dtype=np.int64)[ends]
        return idx, np.frombuffer(b, dtype=self.value_dtype, count=k, offset=4).astype(np.float32)
