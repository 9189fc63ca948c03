"""Huffman coding of the cluster indices and of the sparse-index gaps (Deep Compression, section 4).

After k-means sharing, the stored numbers of a pruned layer are two streams of
small integers: each kept weight's *cluster index*, and its *relative index* (how
many pruned positions were skipped since the previous stored weight). Neither is
uniform: a few clusters (the ones near the edges of the pruning hole) and short
gaps are far more common. A Huffman code gives frequent symbols short codes and
rare ones long codes; Han et al. report 20-30% fewer bits this way.

Relative indices (paper, figure 2). The flat position ``p`` of each stored weight
is written as ``p - q - 1``, the number of positions skipped since the previous
stored one ``q`` (``q = -1`` before the first), in ``gap_bits`` bits, so at most
``max_gap = 2**gap_bits - 1``. A longer run gets a *filler zero*: an extra stored
entry ``max_gap`` positions on, whose value is zero, exactly as the paper does (it
costs one gap and one value, and the decoder needs no special case: it writes a 0).

Canonical Huffman (as DEFLATE uses). Only the code *length* of each symbol is
stored (one byte per symbol of the alphabet); the codes follow from the lengths:
sort the symbols by (length, symbol) and count up, shifting left whenever the
length grows. The decoder rebuilds the same table, so the header is tiny.

Bits are packed most significant bit first (``np.packbits``). Decoding is
vectorised: for every bit position the next ``L_max`` bits are read as a number;
for canonical codes the code length starting there is the number of left-aligned
length limits it reaches (one ``searchsorted``); then a short loop walks from code
to code.
"""
from __future__ import annotations

import heapq

import numpy as np

from .._validate import check_array, check_int, fail

__all__ = ["code_lengths", "canonical_codes", "HuffmanStream", "huffman_encode", "huffman_decode",
           "to_relative", "from_relative"]

MAX_SYMBOLS = 65537   # a 16-bit codebook plus the filler symbol


def code_lengths(counts) -> np.ndarray:
    """Huffman code length of each symbol from its count (0 for a symbol that never occurs).

    Repeatedly merge the two least frequent nodes (ties: the one made first, leaves
    in symbol order); a symbol's length is its depth in the tree. A lone symbol gets
    length 1 (one bit per occurrence), an empty input all zeros.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
        fail("counts", "a 1-D array of non-negative integer counts", f"shape {counts.shape}, dtype {counts.dtype}")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    present = np.flatnonzero(counts)
    if present.size <= 1:
        lengths[present] = 1
        return lengths
    heap = [(int(counts[s]), i, i) for i, s in enumerate(present)]
    heapq.heapify(heap)
    parent = [-1] * (2 * present.size - 1)
    node = present.size
    while len(heap) > 1:
        c1, _, a = heapq.heappop(heap)
        c2, _, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node, node))
        node += 1
    depth = [0] * node
    for i in range(node - 2, -1, -1):    # parents are made after their children
        depth[i] = depth[parent[i]] + 1
    if max(depth[:present.size]) > 63:
        raise OverflowError("code_lengths(): a code longer than 63 bits; the counts are too skewed.")
    lengths[present] = depth[:present.size]
    return lengths


def _canonical_table(lengths):
    """Symbols sorted by (length, symbol), first code and count per length (index 0..L_max)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    lmax = int(lengths.max()) if lengths.size else 0
    count = np.bincount(lengths[order], minlength=lmax + 1)
    first = np.zeros(lmax + 2, dtype=np.uint64)
    code = 0
    for n in range(1, lmax + 1):
        code = (code + int(count[n - 1])) << 1 if n > 1 else 0
        first[n] = code
    return order, first, count, lmax


def canonical_codes(lengths) -> np.ndarray:
    """Canonical Huffman code of each symbol (uint64; meaningful where the length is > 0)."""
    order, first, count, _ = _canonical_table(lengths)
    codes = np.zeros(len(lengths), dtype=np.uint64)
    offset = 0
    for n in range(1, len(count)):
        k = int(count[n])
        codes[order[offset:offset + k]] = first[n] + np.arange(k, dtype=np.uint64)
        offset += k
    return codes


_CHUNK = 1 << 16     # symbols encoded per step: bounds the temporary arrays


def _code_bits(symbols, lengths, codes):
    """The code bits of ``symbols``, one uint8 (0 or 1) per bit, most significant first."""
    lens = lengths.astype(np.int64)[symbols]
    nbits = int(lens.sum())
    starts = np.cumsum(lens) - lens
    owner = np.repeat(np.arange(symbols.size), lens)
    shift = (np.repeat(lens - 1, lens) - (np.arange(nbits) - np.repeat(starts, lens))).astype(np.uint64)
    return ((codes[symbols][owner] >> shift) & np.uint64(1)).astype(np.uint8)


class HuffmanStream:
    """A Huffman-coded sequence of symbols in ``[0, n_symbols)``.

    ``data`` (uint8) holds the packed code bits (``nbits`` of them, MSB first),
    ``lengths`` (uint8, one per symbol of the alphabet) the code lengths from which
    the canonical codes are rebuilt, ``count`` the number of symbols. ``nbytes``
    counts both arrays: the code table is part of the cost.
    """

    def __init__(self, data, lengths, count, nbits):
        check_array("data", data, ndim=1, dtype_kind="u")
        check_array("lengths", lengths, ndim=1, dtype_kind="u")
        self.count = check_int("count", count, 0)
        self.nbits = check_int("nbits", nbits, 0)
        if self.count > self.nbits:
            fail("count", f"at most nbits={self.nbits} (every code takes at least one bit)", self.count)
        if data.size != -(-self.nbits // 8):
            fail("data", f"{-(-self.nbits // 8)} bytes for nbits={self.nbits}", f"{data.size} bytes")
        if lengths.size and lengths.max() > 63:
            fail("lengths", "code lengths of at most 63 bits", int(lengths.max()))
        kraft = float(np.sum(np.ldexp(1.0, -lengths[lengths > 0].astype(np.int64))))
        if kraft > 1 + 1e-12:
            fail("lengths", "code lengths of a prefix code (sum of 2**-length <= 1)", f"sum {kraft}")
        self.data = np.ascontiguousarray(data, dtype=np.uint8)
        self.lengths = np.ascontiguousarray(lengths, dtype=np.uint8)

    @classmethod
    def from_symbols(cls, symbols, n_symbols=None):
        """Encode ``symbols`` (non-negative ints) with the Huffman code of their own counts."""
        symbols = np.asarray(symbols)
        if symbols.size == 0:
            symbols = symbols.astype(np.int64)
        if symbols.ndim != 1 or symbols.dtype.kind not in "iu":
            fail("symbols", "a 1-D array of non-negative ints", f"shape {symbols.shape}, dtype {symbols.dtype}")
        if symbols.size and symbols.min() < 0:
            fail("symbols", "non-negative ints", int(symbols.min()))
        top = int(symbols.max()) + 1 if symbols.size else 0
        n_symbols = top if n_symbols is None else check_int("n_symbols", n_symbols, 0, MAX_SYMBOLS)
        if top > n_symbols:
            fail("symbols", f"values below n_symbols={n_symbols}", top - 1)
        if n_symbols > MAX_SYMBOLS:
            fail("symbols", f"values below {MAX_SYMBOLS}", n_symbols - 1)
        counts = np.bincount(symbols.astype(np.int64), minlength=n_symbols)
        lengths = code_lengths(counts)
        codes = canonical_codes(lengths)
        chunks = [_code_bits(symbols[i:i + _CHUNK], lengths, codes) for i in range(0, symbols.size, _CHUNK)]
        bits = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
        return cls(np.packbits(bits), lengths, symbols.size, int(bits.size))

    def to_symbols(self) -> np.ndarray:
        """Decode back to the int64 symbols; a stream that does not decode exactly raises ValueError."""
        if self.count == 0:
            if self.nbits:
                raise ValueError("HuffmanStream.to_symbols(): bits left over after 0 symbols (corrupt stream).")
            return np.zeros(0, dtype=np.int64)
        order, first, count, lmax = _canonical_table(self.lengths)
        if lmax == 0:
            raise ValueError("HuffmanStream.to_symbols(): the code table is empty but count > 0 (corrupt stream).")
        bits = np.unpackbits(self.data)[:self.nbits].astype(np.uint64)
        bits = np.concatenate([bits, np.zeros(lmax, dtype=np.uint64)])
        window = np.zeros(self.nbits, dtype=np.uint64)
        for j in range(lmax):      # the next lmax bits at every position, as a number
            window = (window << np.uint64(1)) | bits[j:j + self.nbits]
        limit = np.array([(int(first[n]) + int(count[n])) << (lmax - n) for n in range(1, lmax + 1)],
                         dtype=np.uint64)
        length = np.searchsorted(limit, window, side="right") + 1      # code length starting at each bit
        out = np.empty(self.count, dtype=np.int64)
        starts = np.empty(self.count, dtype=np.int64)
        length_list = length.tolist()
        pos = 0
        for i in range(self.count):
            if pos >= self.nbits or length_list[pos] > lmax:
                raise ValueError(f"HuffmanStream.to_symbols(): the bits run out or hold no valid code at "
                                 f"symbol {i} of {self.count} (corrupt stream).")
            starts[i] = pos
            pos += length_list[pos]
        if pos != self.nbits:
            raise ValueError(f"HuffmanStream.to_symbols(): decoded {pos} of {self.nbits} bits (corrupt stream).")
        n = length[starts]
        offset = np.concatenate([[0], np.cumsum(count[1:])])[n - 1]
        code = window[starts] >> (lmax - n).astype(np.uint64)
        rank = offset + (code - first[n]).astype(np.int64)
        if np.any(rank >= len(order)):
            raise ValueError("HuffmanStream.to_symbols(): a code outside the table (corrupt stream).")
        out[:] = order[rank]
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the packed bits plus the code-length table."""
        return int(self.data.nbytes + self.lengths.nbytes)

    @property
    def bits_per_symbol(self) -> float:
        return self.nbits / self.count if self.count else 0.0

    def __repr__(self):
        return (f"HuffmanStream(count={self.count}, nbits={self.nbits}, bits/symbol={self.bits_per_symbol:.3f}, "
                f"alphabet={self.lengths.size}, nbytes={self.nbytes})")


def huffman_encode(symbols, n_symbols=None) -> HuffmanStream:
    """Huffman-code a 1-D array of non-negative ints (alphabet ``[0, n_symbols)``)."""
    return HuffmanStream.from_symbols(symbols, n_symbols)


def huffman_decode(stream) -> np.ndarray:
    """The symbols of a :class:`HuffmanStream` (int64)."""
    if not isinstance(stream, HuffmanStream):
        fail("stream", "a HuffmanStream", type(stream).__name__, TypeError)
    return stream.to_symbols()


# --------------------------------------------------------------------------- relative indices
def to_relative(positions, gap_bits):
    """Relative indices of ascending flat ``positions``, with filler entries; returns ``(gaps, real)``.

    ``gaps[i]`` is the number of positions skipped before entry ``i`` (at most
    ``2**gap_bits - 1``); ``real[i]`` is False for a filler zero. Entry ``i`` sits at
    ``sum(gaps[:i + 1] + 1) - 1`` (see :func:`from_relative`).

    >>> to_relative([1, 12], 3)     # skip 1; then 10 > 7: filler after 7, skip 2 more
    (array([1, 7, 2]), array([ True, False,  True]))
    """
    positions = np.asarray(positions)
    if positions.ndim != 1 or (positions.size and positions.dtype.kind not in "iu"):
        fail("positions", "a 1-D array of ints", f"shape {positions.shape}, dtype {positions.dtype}")
    check_int("gap_bits", gap_bits, 1, 32)
    positions = positions.astype(np.int64)
    if positions.size and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        fail("positions", "strictly increasing non-negative ints", "unsorted, repeated or negative values")
    step = 2 ** gap_bits            # a filler covers max_gap skipped positions plus itself
    skip = np.diff(positions, prepend=-1) - 1
    fillers = skip // step
    per_entry = fillers + 1
    gaps = np.full(int(per_entry.sum()), step - 1, dtype=np.int64)
    last = np.cumsum(per_entry) - 1  # the real entry comes after its fillers
    gaps[last] = skip - fillers * step
    real = np.zeros(gaps.size, dtype=bool)
    real[last] = True
    return gaps, real


def from_relative(gaps) -> np.ndarray:
    """Flat positions of every entry (fillers included) from the relative indices."""
    gaps = np.asarray(gaps, dtype=np.int64)
    return np.cumsum(gaps + 1) - 1
