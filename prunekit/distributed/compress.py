"""Compressors: what each worker sends instead of its dense gradient.

Every compressor works on all workers at once: ``grads`` is an ``(n_workers, D)``
float32 array (one flattened gradient per row), so a step costs a few vectorised
NumPy calls whatever the number of workers. The protocol (as GRACE splits it,
Xu et al. 2021):

* ``compress(grads) -> Message``: the payload arrays plus ``message.nbytes``, the
  exact bytes each worker puts on the wire (values + indices + header);
* ``decompress(message) -> (n_workers, D)``: what each worker's message stands for;
* ``allreduce_compatible``: messages can be summed while compressed (FP16, shared-seed
  random-k, PowerSGD's factors), so a ring all-reduce carries them; otherwise
  (top-k: every worker keeps different indices) they are all-gathered;
* ``exchange(grads, network)``: compress, communicate, and return the summed gradient,
  what each worker sent, the bytes and the simulated time.

Register your own with :func:`register_compressor` (as scores are registered in
``prunekit.pruning``). Built-in compressors (``D`` values per worker, ``k`` kept):

=========  ==============================================  ======================  =====================
name       sends                                           bytes per worker        from
=========  ==============================================  ======================  =====================
topk       the k largest |g| with their indices            8 k + 4 (4 k + 4)       Aji & Heafield 2017
randomk    k values at indices drawn from a shared seed    4 k + 8 (2 k + 8)       Stich et al. 2018
threshold  every |g| >= tau with its index                 8 count + 4 (4 c + 4)   Strom 2015
qsgd       stochastic rounding to s levels of the norm     ceil(D bits / 8) + 4 B  Alistarh et al. 2017
signsgd    one sign bit per value and one scale            ceil(D / 8) + 4         Bernstein et al. 2018
fp16       every value in half precision                   2 D                     --
dgc        top-k of the momentum-corrected accumulation    8 k + 4 (4 k + 4)       Lin et al. 2018
powersgd   rank-r factors P (n x r), Q (m x r) per matrix  4 (n + m) r per matrix  Vogels et al. 2019
=========  ==============================================  ======================  =====================

(QSGD's ``bits`` = 1 sign bit + ceil(log2(s + 1)) level bits, and one 4-byte norm per
bucket of 512 values, ``B`` buckets; the paper's Elias coding would send fewer. SignSGD's scale is the mean |g|, as EF-SignSGD,
Karimireddy et al. 2019, uses.) A header is the 4-byte count of a message whose
length varies, or a 4-byte float scale.

Top-k and DGC take ``scope=``: ``"global"`` (the default) selects the k largest values of the
whole flat gradient, ``"tensor"`` lets each tensor of the bound :class:`Layout` keep its own
``ratio`` (at least one value each), so every tensor sends something each step where a global
top-k may skip a bias for many steps; the entries of all tensors still travel in one message per
worker. (Which one trains better depends on the model: see ``benchmarks/BENCHMARKS.md``.)

The sparsifiers (topk, randomk, threshold, dgc) take ``encoding=``: how their indices and
values become bytes (:mod:`.encoding`). The default ``"int32+float32"`` gives the first
figure above; ``"gap16+float16"`` (uint16 index gaps, float16 values) the one in
brackets, plus 2 bytes per rare escape word. The message carries each worker's encoded
buffer, ``nbytes`` is its length, and the receiver decodes it: what a message stands for
(and so what error feedback subtracts) is the *decoded* values, rounding included.
"""
from __future__ import annotations

import math

import numpy as np

from .._jit import njit
from .._registry import Registry
from .._validate import check_int, check_number, check_option, fail
from .comm import COLLECTIVES, allgather
from .encoding import get_encoding
from .memory import _dense_rows, _every_row

__all__ = ["Layout", "Message", "Exchange", "Compressor", "register_compressor", "get_compressor",
           "available_compressors", "TopK", "RandomK", "Threshold", "QSGD", "SignSGD", "FP16", "DGC",
           "PowerSGD", "CompressionStats", "topk_reference"]

VALUE_BYTES = 4   # float32 values
DEFAULT_ENCODING = "int32+float32"


class Layout:
    """Where each parameter lives in the flat gradient: ``(name, shape, offset, size)`` per entry."""

    def __init__(self, shapes):
        self.entries = []
        offset = 0
        for name, shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            self.entries.append((name, tuple(shape), offset, size))
            offset += size
        self.size = offset

    @classmethod
    def of(cls, model):
        """The layout of a model's parameters, in ``named_parameters()`` order."""
        return cls([(n, p.shape) for n, p in model.named_parameters()])

    @classmethod
    def flat(cls, d):
        """One vector of ``d`` values."""
        return cls([("flat", (d,))])

    def __repr__(self):
        return f"Layout({len(self.entries)} tensors, {self.size:,} values)"


class Message:
    """What the workers send: ``payload`` arrays and ``nbytes`` (exact bytes, one per worker)."""

    def __init__(self, compressor, shape, nbytes, **payload):
        self.compressor = compressor
        self.shape = tuple(shape)
        self.nbytes = np.broadcast_to(np.asarray(nbytes, dtype=np.int64), (shape[0],)).copy()
        self.payload = payload

    def __getitem__(self, key):
        return self.payload[key]

    def decompress(self):
        """The ``(n_workers, D)`` gradients the message stands for."""
        return self.compressor.decompress(self)

    def __repr__(self):
        return (f"Message({self.compressor.name}: {self.shape[0]} workers x {self.shape[1]:,} values, "
                f"{int(self.nbytes.sum()):,} bytes, {self.compression_ratio:.1f}x smaller than float32)")

    @property
    def compression_ratio(self):
        """Dense float32 bytes over sent bytes."""
        return self.shape[0] * self.shape[1] * VALUE_BYTES / max(int(self.nbytes.sum()), 1)


class Exchange:
    """One step's communication: ``total`` (the summed gradient), ``sent`` (what each worker's
    message stands for, ``(n_workers, D)``), ``message_bytes`` (the size of each worker's own
    message), ``bytes_sent`` (what each worker put on the wire, forwarding included) and ``time_s``.

    Sparse messages (top-k, threshold, DGC) give ``entries`` instead of ``sent``: per worker
    the ``(indices, values)`` its message stands for, decoded. ``sent`` is then built from
    them when asked for; error feedback and the sum use the entries and never touch the
    zeros (three full passes over ``(n_workers, D)`` saved per step).
    """

    def __init__(self, total, sent, message_bytes, bytes_sent, time_s, *, entries=None):
        if (sent is None) == (entries is None):
            fail("entries", "given exactly when sent is None", "None" if entries is None else "entries")
        self.total, self._sent, self.entries = total, sent, entries
        self.message_bytes = np.asarray(message_bytes, dtype=np.int64)
        self.bytes_sent = np.asarray(bytes_sent, dtype=np.int64)
        self.time_s = float(time_s)

    @property
    def sent(self):
        """What each worker's message stands for, ``(n_workers, D)`` (built from ``entries`` for sparse messages)."""
        return self._sent if self._sent is not None else _dense_rows(self.entries, len(self.total))

    def __repr__(self):
        return f"Exchange({int(self.bytes_sent.sum()):,} bytes, {self.time_s * 1e3:.3f} ms)"


class CompressionStats:
    """PowerSGD's running compression, as PyTorch's hook reports it: ``rate`` = values before / after."""

    def __init__(self, numel_before, numel_after):
        self.numel_before, self.numel_after = int(numel_before), int(numel_after)
        self.rate = self.numel_before / self.numel_after if self.numel_after else 0.0

    def __repr__(self):
        return f"CompressionStats(rate={self.rate:.1f}x, numel_before={self.numel_before:,}, " \
               f"numel_after={self.numel_after:,})"


def _check_ratio(ratio):
    return float(check_number("ratio", ratio, 0, 1, "(]"))


def _rows(grads):
    g = np.asarray(grads)
    if g.ndim != 2 or g.dtype.kind != "f":
        fail("grads", "a float (n_workers, D) array (one flattened gradient per worker)",
             f"shape {g.shape}, dtype {g.dtype}")
    return g


def _k(ratio, d):
    """Values kept out of ``d``: round(ratio * d), at least one."""
    return max(1, min(d, int(round(ratio * d))))


def _topk_indices(x, k):
    """Per row, the indices of the k largest |x| (ties: whichever the selection picks).

    For small k, as DGC does it: a strided sample of |x| (one value in 100) gives a threshold
    that about 2k values pass; the exact top k are then selected among those candidates
    only. A row where fewer than k pass falls back to a full selection, so the result is
    always the exact top k. Much cheaper than ``argpartition`` over the whole row.

    A row's candidates come from two comparisons with +-threshold, not from ``|x|``: no
    ``(n, D)`` temporary, and the row-sized masks stay in cache (one row of LeNet-300-100's
    gradient is 1 MB). Tried and dropped: one mask over all rows at once with the candidates
    lined up in a padded array for a single ``argpartition``: no faster for 8 rows.
    """
    n, d = x.shape
    if k >= d:
        return np.broadcast_to(np.arange(d), x.shape).copy()
    if 4 * k > d or d < 10_000:
        return np.argpartition(np.abs(x), d - k, axis=1)[:, d - k:]
    sample = np.abs(x[:, ::100])
    m = sample.shape[1]
    rank = m - min(m, max(1, int(np.ceil(2 * k * m / d))))
    cut = np.partition(sample, rank, axis=1)[:, rank]
    out = np.empty((n, k), dtype=np.intp)
    buf = np.empty(8 * k, dtype=np.intp)                     # room for 4x the expected 2k candidates
    for i, (row, c) in enumerate(zip(x, cut)):
        found = _candidates_kernel(row, row.dtype.type(c), buf)
        if not k <= found <= len(buf):                       # rare: the sample's threshold was off
            out[i] = np.argpartition(np.abs(row), d - k)[d - k:]
        else:
            cand = buf[:found]
            out[i] = cand[np.argpartition(np.abs(row[cand]), found - k)[found - k:]]
    return out


def _candidates_reference(row, cut, out):
    """The indices i with ``|row[i]| >= cut``, ascending, written to ``out`` (as many as fit);
    returns how many there are. Two comparisons, so no ``|row|`` temporary."""
    idx = np.flatnonzero((row >= cut) | (row <= -cut))
    m = min(len(idx), len(out))
    out[:m] = idx[:m]
    return len(idx)


@njit(reference=_candidates_reference)
def _candidates_kernel(row, cut, out):
    """:func:`_candidates_reference` in one pass: each block of 64 values is first only counted
    (a fixed-length loop the compiler vectorises), and only a block with a hit is walked again
    to write its indices. At top-k's densities most blocks have none: about 5x faster than the
    reference (a loop that tests and writes value by value is slower than the reference)."""
    n, found, cap = row.size, 0, out.size
    whole = n - n % 64
    for start in range(0, whole, 64):
        block = row[start:start + 64]
        hits = 0
        for j in range(64):
            hits += np.int32(abs(block[j]) >= cut)
        if hits:
            for j in range(64):
                if abs(block[j]) >= cut:
                    if found < cap:
                        out[found] = start + j
                    found += 1
    for i in range(whole, n):
        if abs(row[i]) >= cut:
            if found < cap:
                out[found] = i
            found += 1
    return found


SCOPES = ("global", "tensor")


def _scope_layout(compressor, d):
    """The layout that ``scope="tensor"`` selects within: the bound one, or one flat vector if unbound."""
    layout = getattr(compressor, "layout", None)
    if layout is None:
        return Layout.flat(d)
    if layout.size != d:
        fail("grads", f"rows of the {layout.size:,} values of the layout the compressor was bound with",
             f"rows of {d:,} values")
    return layout


def _select(x, density, layout, scope):
    """Per row, the indices of the values to send (each row's own choice).

    ``scope="global"``: the top ``round(density * D)`` of |x| over the whole flat vector, so
    a tensor whose values are small (a bias, the last layer) may get none. ``scope="tensor"``:
    each tensor of ``layout`` keeps its own top ``round(density * size)`` (at least one), as
    DGC's reference implementation selects per tensor; the indices of all tensors are then
    concatenated into one message, so the header is paid once.
    """
    if scope == "global":
        return _topk_indices(x, _k(density, x.shape[1]))
    parts = [off + _topk_indices(x[:, off:off + size], _k(density, size))
             for _, _, off, size in layout.entries if size]
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(x), 0), dtype=np.intp)


def topk_reference(g, k):
    """The readable reference of top-k for one worker: sort by |g|, keep the last k."""
    out = np.zeros_like(g)
    keep = np.argsort(np.abs(g), kind="stable")[len(g) - k:]
    out[keep] = g[keep]
    return out


def _encoded(compressor, shape, indices, values):
    """A :class:`Message` of one encoded buffer per worker: ``indices[i]`` and ``values[i]`` are worker i's."""
    d = shape[1]
    buffers = [compressor.encoding.encode(i, v, d) for i, v in zip(indices, values)]
    return Message(compressor, shape, [len(b) for b in buffers], buffers=buffers)


def _decode_sparse(message):
    """Decode every worker's buffer into the dense ``(n_workers, D)`` gradients it stands for."""
    return _dense_rows(_decode_entries(message), message.shape[1])


def _decode_entries(message):
    """Decode every worker's buffer into the ``(indices, values)`` it stands for."""
    return [message.compressor.encoding.decode(buf) for buf in message["buffers"]]


class _Sparsifier:
    """Mixin of the compressors whose messages are indices and values: the ``encoding`` option."""

    def _set_encoding(self, encoding):
        self.encoding = get_encoding(encoding)

    def _encoding_arg(self):
        return {} if self.encoding.name == DEFAULT_ENCODING else {"encoding": self.encoding.name}

    def _set_scope(self, scope):
        self.scope = check_option("scope", scope, SCOPES)

    def _scope_arg(self):
        return {} if self.scope == "global" else {"scope": self.scope}

    def exchange(self, grads, network, *, collective="ring", workers=None):
        """As :meth:`Compressor.exchange`, but indexed messages stay sparse: the sum adds each
        worker's decoded entries in worker order (the plain sum's order, so the same float32
        result), and the :class:`Exchange` carries the entries rather than dense rows."""
        if self.allreduce_compatible:                 # random-k: shared indices, summed while compressed
            return super().exchange(grads, network, collective=collective, workers=workers)
        msg = self.compress(grads, workers=workers)
        entries = _decode_entries(msg)
        total = np.zeros(msg.shape[1], dtype=np.float32)
        for idx, val in entries:
            total[idx] += val                         # indices are distinct within a message
        r = allgather(msg, network, total=total)
        return Exchange(r.result, None, msg.nbytes, r.bytes_sent, r.time_s, entries=entries)


class Compressor:
    """Base class of compressors; subclasses implement ``compress`` and ``decompress``.

    ``keeps_residual`` is True for compressors with their own error feedback (DGC,
    PowerSGD), which the trainer's ``error_feedback=True`` must not double.
    """

    name = "compressor"
    allreduce_compatible = False
    keeps_residual = False

    def bind(self, n_workers, layout):
        """Called once by the trainer before training: the number of workers and the gradient layout."""
        self.n_workers, self.layout = n_workers, layout
        return self

    def compress(self, grads, *, workers=None):
        raise NotImplementedError

    def decompress(self, message):
        raise NotImplementedError

    def exchange(self, grads, network, *, collective="ring", workers=None):
        """Compress, communicate (all-reduce or all-gather) and sum: an :class:`Exchange`."""
        msg = self.compress(grads, workers=workers)
        sent = self.decompress(msg)
        if self.allreduce_compatible:
            r = COLLECTIVES[collective](sent, network, nbytes=int(msg.nbytes[0]))
        else:
            r = allgather(msg, network, decompressed=sent)
        return Exchange(r.result, sent, msg.nbytes, r.bytes_sent, r.time_s)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._args().items())
        return f"{type(self).__name__}({args})"

    def _args(self):
        return {}


_REGISTRY = Registry(Compressor, "prunekit.distributed.Compressor")


def register_compressor(name, cls=None, *, overwrite=False):
    """Add a :class:`Compressor` subclass to the registry under ``name`` (usable as a decorator)."""
    return _REGISTRY.register(name, cls, overwrite=overwrite)


def available_compressors():
    """Names of the registered compressors."""
    return _REGISTRY.names()


def get_compressor(compressor):
    """None, a :class:`Compressor` instance, or a registered name (built with its defaults)."""
    return _REGISTRY.get(compressor, "compressor", allow_none=True)


@register_compressor("topk")
class TopK(_Sparsifier, Compressor):
    """Keep the ``ratio`` fraction of values largest in magnitude, send them with their indices
    (``encoding``: a registered name such as ``"gap16+float16"``, or an :class:`Encoding`).
    ``scope``: ``"global"`` (one top-k over the flat gradient) or ``"tensor"`` (each tensor of
    the bound :class:`Layout` keeps its own ``ratio``, at least one value; one message)."""

    def __init__(self, ratio=0.01, encoding=DEFAULT_ENCODING, scope="global"):
        self.ratio = _check_ratio(ratio)
        self._set_encoding(encoding)
        self._set_scope(scope)

    def _args(self):
        return {"ratio": self.ratio, **self._encoding_arg(), **self._scope_arg()}

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        idx = _select(g, self.ratio, _scope_layout(self, g.shape[1]), self.scope)
        return _encoded(self, g.shape, idx, np.take_along_axis(g, idx, 1))

    def decompress(self, message):
        return _decode_sparse(message)


@register_compressor("randomk")
class RandomK(_Sparsifier, Compressor):
    """Keep ``ratio`` of the values at random indices; all workers draw the same indices from a
    shared seed, so only the values (in the ``encoding``'s value type) and the 8-byte seed travel,
    and the messages can be all-reduced. ``message["indices"]`` is what the seed stands for."""

    allreduce_compatible = True

    def __init__(self, ratio=0.01, seed=0, encoding=DEFAULT_ENCODING):
        self.ratio = _check_ratio(ratio)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._set_encoding(encoding)

    def _args(self):
        return {"ratio": self.ratio, "seed": self.seed, **self._encoding_arg()}

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        d = g.shape[1]
        k = _k(self.ratio, d)
        idx = np.sort(self.rng.choice(d, size=k, replace=False)).astype(np.int32)
        buffers = [self.encoding.encode_values(row) for row in g[:, idx]]
        return Message(self, g.shape, [len(b) + 8 for b in buffers], indices=idx, buffers=buffers)

    def decompress(self, message):
        out = np.zeros(message.shape, dtype=np.float32)
        out[:, message["indices"]] = [self.encoding.decode_values(b) for b in message["buffers"]]
        return out


@register_compressor("threshold")
class Threshold(_Sparsifier, Compressor):
    """Send every value with |g| >= ``tau``, with its index (the count varies by worker;
    ``encoding`` as for :class:`TopK`)."""

    def __init__(self, tau=1e-3, encoding=DEFAULT_ENCODING):
        self.tau = float(check_number("tau", tau, 0, None))
        self._set_encoding(encoding)

    def _args(self):
        return {"tau": self.tau, **self._encoding_arg()}

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        idx = [np.flatnonzero(np.abs(row) >= self.tau) for row in g]
        return _encoded(self, g.shape, idx, [row[i] for row, i in zip(g, idx)])

    def decompress(self, message):
        return _decode_sparse(message)


@register_compressor("qsgd")
class QSGD(Compressor):
    """Quantise each value to one of ``levels`` steps of its bucket's L2 norm, rounding at random
    so the result is unbiased: l = floor(|g| s / ||g_bucket|| + u), u ~ U[0, 1); sent value
    ||g_bucket|| sign(g) l / s. Buckets of ``bucket_size`` values (None: the whole vector)
    keep the variance in check, as in the paper's experiments; each costs a 4-byte norm."""

    def __init__(self, levels=4, bucket_size=512, seed=0):
        self.levels = check_int("levels", levels, 1, 32767)
        self.bucket_size = None if bucket_size is None else check_int("bucket_size", bucket_size, 1)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def _args(self):
        return {"levels": self.levels, "bucket_size": self.bucket_size, "seed": self.seed}

    @property
    def bits(self):
        """Bits per value: one for the sign, ceil(log2(levels + 1)) for the level."""
        return 1 + math.ceil(math.log2(self.levels + 1))

    def _buckets(self, g):
        n, d = g.shape
        b = d if self.bucket_size is None else min(self.bucket_size, d)
        nb = -(-d // b)
        padded = np.zeros((n, nb * b), dtype=np.float32)
        padded[:, :d] = g
        return padded.reshape(n, nb, b)

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        buckets = self._buckets(g)
        norms = np.linalg.norm(buckets.astype(np.float64), axis=2)
        safe = np.where(norms > 0, norms, 1.0)
        scaled = np.abs(buckets) / safe[..., None] * self.levels
        level = np.minimum(np.floor(scaled + self.rng.random(buckets.shape, dtype=np.float32)), self.levels)
        codes = (np.sign(buckets) * level).astype(np.int8 if self.levels < 128 else np.int16)
        return Message(self, g.shape, math.ceil(g.shape[1] * self.bits / 8) + VALUE_BYTES * norms.shape[1],
                       norms=norms.astype(np.float32), codes=codes.reshape(g.shape[0], -1)[:, :g.shape[1]])

    def decompress(self, message):
        n, d = message.shape
        norms = message["norms"]
        b = -(-d // norms.shape[1])
        scale = np.repeat(norms / np.float32(self.levels), b, axis=1)[:, :d]
        return (message["codes"] * scale).astype(np.float32)


@register_compressor("signsgd")
class SignSGD(Compressor):
    """One bit per value (its sign, zero counted as +) and one scale, the mean |g| of the worker."""

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        scale = np.abs(g).mean(axis=1, dtype=np.float64).astype(np.float32)
        return Message(self, g.shape, math.ceil(g.shape[1] / 8) + VALUE_BYTES,
                       bits=np.packbits(g >= 0, axis=1), scale=scale)

    def decompress(self, message):
        bits = np.unpackbits(message["bits"], axis=1, count=message.shape[1])
        return (bits.astype(np.float32) * 2 - 1) * message["scale"][:, None]


@register_compressor("fp16")
class FP16(Compressor):
    """Every value in half precision (2 bytes); overflow (|g| > 65504) is an error, not an inf."""

    allreduce_compatible = True

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        if np.abs(g).max(initial=0) > np.finfo(np.float16).max:
            fail("grads", "values within float16's range (|g| <= 65504)", f"max |g| = {np.abs(g).max():g}")
        return Message(self, g.shape, g.shape[1] * 2, values=g.astype(np.float16))

    def decompress(self, message):
        return message["values"].astype(np.float32)


def _dgc_accumulate_reference(u, v, g, m, nesterov):
    """DGC's momentum correction in place on flat float32 arrays: u <- m u + g, then
    v <- v + u, or with Nesterov v <- v + g + m u."""
    u *= m
    u += g
    if nesterov:
        v += g
        v += m * u
    else:
        v += u


@njit(reference=_dgc_accumulate_reference)
def _dgc_accumulate_kernel(u, v, g, m, nesterov):
    """:func:`_dgc_accumulate_reference` in one pass over memory instead of three or four
    (u, v and g are each 8.5 MB for 8 workers of LeNet-300-100); the same float32 operations
    in the same order, so the same values."""
    if nesterov:
        for i in range(u.size):
            ui = m * u[i] + g[i]
            u[i] = ui
            v[i] = (v[i] + g[i]) + m * ui
    else:
        for i in range(u.size):
            ui = m * u[i] + g[i]
            u[i] = ui
            v[i] = v[i] + ui


@register_compressor("dgc")
class DGC(_Sparsifier, Compressor):
    """Deep Gradient Compression (Lin et al. 2018): top-k of a momentum-corrected accumulation.

    Per worker, each step: clip the gradient to norm ``clip_norm / sqrt(N)`` (local gradient
    clipping; N the number of gradients summed this step, so ``clip_norm`` bounds their sum
    when they are independent); u <- m u + g; v <- v + u (momentum correction); send the top
    ``ratio`` of |v| and zero u and v there (momentum factor masking); what is not sent stays
    in v, so the error feedback is built in. Sparsity warm-up: over the first ``warmup_steps``
    the kept fraction falls geometrically from 25% to ``ratio`` (the paper's 75%, 93.75%, ...
    per epoch). ``nesterov=True``: v <- v + g + m u instead (Nesterov's look-ahead, the option
    of the paper's reference implementation; PyTorch's formulation, as :class:`prunekit.optim.SGD`).
    Use it with plain SGD (no optimizer momentum): the momentum lives here. Exact
    top-k replaces the paper's sampled threshold. ``scope``: ``"global"`` (one top-k over the
    flat vector, the default) or ``"tensor"`` (each tensor of the bound :class:`Layout` keeps
    its own ``ratio`` of values, at least one, as the paper's reference implementation
    selects; all in one message). ``encoding`` as for :class:`TopK`; v keeps what the
    *decoded* message did not deliver (with ``"gap16+float16"``, the float16 rounding).

    Two switches; their defaults give the paper's algorithm:

    - ``momentum_masking=False`` keeps u where v is sent. With masking, a coordinate sent every
      step has its momentum zeroed every step (at ``ratio=1`` DGC is plain SGD); without, DGC is
      top-k with error feedback applied to each worker's momentum-SGD update, and equals dense
      momentum SGD at ``ratio=1`` (the reference implementation has the same switch).
    - ``scale_by_lr=True`` accumulates the update instead of the gradient: u <- m u + (lr / lr_ref) g,
      with lr the optimizer's rate at that step and lr_ref the first nonzero rate seen
      (:attr:`lr_ref`; the values stay about as large as gradients, where float16 messages are
      accurate). :class:`DataParallelTrainer` sets :attr:`lr` before each step and applies
      lr_ref times the summed message as the update itself, so it needs plain SGD. Under a
      decaying schedule a value held back for many steps is then applied with the rates of the
      steps it came from, not with the (smaller) rate of the step that sends it.
    """

    keeps_residual = True

    def __init__(self, ratio=0.001, momentum=0.9, clip_norm=None, warmup_steps=0, encoding=DEFAULT_ENCODING,
                 scope="global", nesterov=False, momentum_masking=True, scale_by_lr=False):
        self.ratio = _check_ratio(ratio)
        self._set_encoding(encoding)
        self._set_scope(scope)
        self.momentum = float(check_number("momentum", momentum, 0, 1, "[)"))
        if nesterov and self.momentum == 0:
            fail("nesterov", "False when momentum is 0 (Nesterov needs momentum)", nesterov)
        self.nesterov = bool(nesterov)
        self.clip_norm = None if clip_norm is None else float(check_number("clip_norm", clip_norm, 0, None, "(]"))
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.momentum_masking = bool(momentum_masking)
        self.scale_by_lr = bool(scale_by_lr)
        self.lr = None                                # set every step by the trainer when scale_by_lr
        self.lr_ref = None                            # the first nonzero lr: the unit of u and v
        self.step = 0
        self.u = self.v = None

    def _args(self):
        return {"ratio": self.ratio, "momentum": self.momentum, "clip_norm": self.clip_norm,
                "warmup_steps": self.warmup_steps, **self._encoding_arg(), **self._scope_arg(),
                **({"nesterov": True} if self.nesterov else {}),
                **({} if self.momentum_masking else {"momentum_masking": False}),
                **({"scale_by_lr": True} if self.scale_by_lr else {})}

    def density(self, step):
        """The fraction of values sent at ``step`` (warm-up then ``ratio``)."""
        if step >= self.warmup_steps or self.ratio >= 0.25:
            return self.ratio
        return 0.25 * (self.ratio / 0.25) ** (step / self.warmup_steps)

    def bind(self, n_workers, layout):
        super().bind(n_workers, layout)
        self.u = np.zeros((n_workers, layout.size), dtype=np.float32)
        self.v = np.zeros_like(self.u)
        self.step = 0
        self.lr_ref = None
        return self

    def compress(self, grads, *, workers=None):
        g = _rows(grads)
        if self.u is None or self.u.shape[1] != g.shape[1]:
            self.bind(g.shape[0], Layout.flat(g.shape[1]))
        if self.clip_norm is not None:                # N: the gradients summed this step (backups dropped)
            limit = self.clip_norm / math.sqrt(len(g))
            norms = np.linalg.norm(g, axis=1)
            g = g * np.minimum(1.0, limit / np.maximum(norms, 1e-30))[:, None].astype(np.float32)
        if self.scale_by_lr:                          # accumulate the update lr g, not the gradient
            if self.lr is None:
                fail("lr", "the learning rate of this step, set on DGC(scale_by_lr=True) before compress() "
                     "(DataParallelTrainer does it)", None)
            if self.lr_ref is None and self.lr > 0:
                self.lr_ref = float(self.lr)
            g = g * np.float32(self.lr / self.lr_ref if self.lr_ref else 0.0)
        every = _every_row(workers, len(self.u)) and g.shape == self.u.shape
        if every:                                     # in place, one pass: no full-size temporaries
            u, v = self.u, self.v
        else:                                         # backup workers: only their rows, copied
            w = np.asarray(workers)
            u, v = self.u[w], self.v[w]
        g = np.ascontiguousarray(g, dtype=np.float32)
        _dgc_accumulate_kernel(u.reshape(-1), v.reshape(-1), g.reshape(-1), np.float32(self.momentum),
                               self.nesterov)
        idx = _select(v, self.density(self.step), self.layout, self.scope)
        msg = _encoded(self, g.shape, idx, np.take_along_axis(v, idx, 1))
        for row, buf in zip(v, msg["buffers"]):       # keep what the decoded message does not deliver
            sent_idx, sent_val = self.encoding.decode(buf)
            row[sent_idx] -= sent_val
        if self.momentum_masking:
            np.put_along_axis(u, idx, 0, axis=1)      # momentum factor masking
        if not every:
            self.u[w], self.v[w] = u, v
        self.step += 1
        return msg

    def decompress(self, message):
        return _decode_sparse(message)


@register_compressor("powersgd")
class PowerSGD(Compressor):
    """PowerSGD (Vogels et al. 2019): a rank-``rank`` approximation of each weight matrix by one
    step of power iteration, with error feedback and a warm start.

    Per matrix M (n x m, the gradient plus the worker's residual): P_i = M_i Q; all-reduce
    P; orthonormalise it; Q_i = M_i^T P; all-reduce Q; the sum of the gradients is taken
    to be P Q^T, and each worker keeps M_i - P Q_i^T as its residual. Q is reused at the
    next step (warm start). As PyTorch's DDP hook, a tensor is compressed only where
    (n + m) r < n m (vectors and tiny matrices go dense, in the same all-reduce as the Ps).
    """

    allreduce_compatible = True
    keeps_residual = True

    def __init__(self, rank=1, warm_start=True, seed=0):
        self.rank = check_int("rank", rank, 1)
        self.warm_start = bool(warm_start)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.residual = None
        self._before = self._after = 0

    def _args(self):
        return {"rank": self.rank, "warm_start": self.warm_start, "seed": self.seed}

    def bind(self, n_workers, layout):
        super().bind(n_workers, layout)
        self.residual = np.zeros((n_workers, layout.size), dtype=np.float32)
        self.matrices, self.dense = [], []
        for name, shape, off, size in layout.entries:
            n = shape[0] if len(shape) >= 2 else 0
            m = size // n if n else 0
            if n and (n + m) * self.rank < n * m:
                q = self.rng.standard_normal((m, self.rank)).astype(np.float32)
                self.matrices.append([off, n, m, q])
            else:
                self.dense.append(np.arange(off, off + size))
        self.dense = np.concatenate(self.dense) if self.dense else np.zeros(0, dtype=np.intp)
        self._before = self._after = 0
        return self

    def compression_stats(self):
        """Values before and after compression so far, over the compressed tensors (as the DDP hook)."""
        return CompressionStats(self._before, self._after)

    def exchange(self, grads, network, *, collective="ring", workers=None):
        g = _rows(grads)
        if self.residual is None or self.residual.shape[1] != g.shape[1]:
            self.bind(g.shape[0], Layout.flat(g.shape[1]))
        every = _every_row(workers, len(self.residual)) and g.shape == self.residual.shape
        w = slice(None) if every else np.asarray(workers)
        reduce = COLLECTIVES[collective]
        nw, r = g.shape[0], self.rank
        if every:                                     # in place: M is the residual buffer until the end
            self.residual += g
            M = self.residual
        else:
            M = g + self.residual[w]
        sent = np.zeros_like(M)
        total = np.zeros(M.shape[1], dtype=np.float32)
        blocks = [M[:, off:off + n * m].reshape(nw, n, m) for off, n, m, _ in self.matrices]
        ps = [b @ q for b, (_, _, _, q) in zip(blocks, self.matrices)]
        phase1 = np.concatenate([M[:, self.dense]] + [p.reshape(nw, -1) for p in ps], axis=1)
        r1 = reduce(phase1, network)
        nd = len(self.dense)
        total[self.dense] = r1.result[:nd]
        sent[:, self.dense] = M[:, self.dense]
        pos, phats, qs = nd, [], []
        for b, (off, n, m, _) in zip(blocks, self.matrices):
            phat = np.linalg.qr(r1.result[pos:pos + n * r].reshape(n, r).astype(np.float64))[0].astype(np.float32)
            pos += n * r
            phats.append(phat)
            qs.append(np.swapaxes(b, 1, 2) @ phat)              # (nw, m, r)
        time_s, bytes_sent, message = r1.time_s, r1.bytes_sent, phase1[0].nbytes
        if self.matrices:
            r2 = reduce(np.concatenate([q.reshape(nw, -1) for q in qs], axis=1), network)
            time_s, bytes_sent = time_s + r2.time_s, bytes_sent + r2.bytes_sent
            message += sum(q[0].nbytes for q in qs)
            pos = 0
            for spec, phat, qi in zip(self.matrices, phats, qs):
                off, n, m, _ = spec
                qsum = r2.result[pos:pos + m * r].reshape(m, r)
                pos += m * r
                total[off:off + n * m] = (phat @ qsum.T).reshape(-1)
                np.matmul(phat, np.swapaxes(qi, 1, 2), out=sent[:, off:off + n * m].reshape(nw, n, m))  # in place
                fresh = not self.warm_start or not np.any(qsum)   # a zero Q would stay zero
                spec[3] = self.rng.standard_normal((m, r)).astype(np.float32) if fresh else qsum.copy()
                self._before += n * m
                self._after += (n + m) * r
        if every:
            np.subtract(M, sent, out=M)
        else:
            self.residual[w] = M - sent
        return Exchange(total, sent, np.full(nw, message), bytes_sent, time_s)

    def compress(self, grads, *, workers=None):
        fail("compressor", "used through exchange() (PowerSGD needs two all-reduces per step)", "PowerSGD.compress()")

    decompress = compress
