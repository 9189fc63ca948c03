"""The communicator: how gradients travel between workers, and what that costs.

Cost model (alpha-beta, Hockney 1994): sending ``b`` bytes over one link takes
``alpha + b / beta`` seconds, with ``alpha`` the latency and ``beta`` the bandwidth.
A :class:`Network` holds the two numbers, a :class:`Cluster` adds the number of
workers, their speeds and the time one sample's gradient takes.

Every collective takes one row per worker (``arrays[i]`` is worker ``i``'s vector)
and returns a :class:`CollectiveResult`: the reduced vector, the simulated time and
the bytes each worker sent. The arithmetic is the algorithm's own (the ring sums
each chunk in ring order, the tree level by level), so its NumPy reference is the
plain sum :func:`plain_sum`, which the tests compare against.

==================  =================================  ===========================
collective          time for N workers, b bytes each    bytes sent by a worker
==================  =================================  ===========================
ring_allreduce      2 (N-1) (alpha + b / (N beta))      2 (N-1) b / N
tree_allreduce      2 ceil(log2 N) (alpha + b / beta)   b up + b per child down
parameter_server    2 (alpha + N b / beta)              b (the server sends N b)
allgather (ring)    sum over N-1 steps of the largest   every message but one
                    message in flight (alpha + m/beta)
==================  =================================  ===========================

The ring is bandwidth-optimal (Patarasuk & Yuan 2009): its bytes per worker do not
grow with N, while a parameter server's link carries N times the model.
"""
from __future__ import annotations

import math
import numpy as np

from .._validate import check_int, check_number, fail

__all__ = ["Network", "Cluster", "RandomSpeeds", "SlowNode", "CollectiveResult", "plain_sum",
           "ring_allreduce", "tree_allreduce", "parameter_server", "allgather", "COLLECTIVES",
           "allreduce_time", "allreduce_bytes"]


class Network:
    """A link of ``latency_s`` seconds (alpha) and ``bandwidth_Bps`` bytes per second (beta).

    The default is a 10 Gbit/s Ethernet with 10 microseconds of latency.
    """

    def __init__(self, latency_s=1e-5, bandwidth_Bps=1.25e9):
        self.latency_s = float(check_number("latency_s", latency_s, 0, None))
        self.bandwidth_Bps = float(check_number("bandwidth_Bps", bandwidth_Bps, 0, None, "(]"))

    def transfer_time(self, nbytes):
        """Seconds to send ``nbytes`` over one link: alpha + bytes / beta."""
        return self.latency_s + np.asarray(nbytes, dtype=np.float64) / self.bandwidth_Bps

    def __repr__(self):
        return f"Network(latency_s={self.latency_s:g}, bandwidth_Bps={self.bandwidth_Bps:g})"


class RandomSpeeds:
    """Each worker's speed drawn afresh every step, uniformly in ``[low, high]`` (seeded)."""

    def __init__(self, low=0.5, high=1.0, seed=0):
        self.low = float(check_number("low", low, 0, None, "(]"))
        self.high = float(check_number("high", high, self.low, None))
        self.seed = seed

    def speeds(self, n_workers, n_steps):
        """An ``(n_steps, n_workers)`` table of speeds."""
        rng = np.random.default_rng(self.seed)
        return rng.uniform(self.low, self.high, size=(n_steps, n_workers))

    def __repr__(self):
        return f"RandomSpeeds(low={self.low}, high={self.high}, seed={self.seed})"


class SlowNode:
    """Worker ``worker`` runs at ``factor`` times its speed from step ``start_step`` on (a node that degrades)."""

    def __init__(self, worker=0, factor=0.25, start_step=0, base=None):
        self.worker = check_int("worker", worker, 0)
        self.factor = float(check_number("factor", factor, 0, None, "(]"))
        self.start_step = check_int("start_step", start_step, 0)
        self.base = base

    def speeds(self, n_workers, n_steps):
        """An ``(n_steps, n_workers)`` table of speeds."""
        if self.worker >= n_workers:
            fail("worker", f"a worker index below n_workers={n_workers}", self.worker)
        table = _speed_table(self.base, n_workers, n_steps)
        table[self.start_step:, self.worker] *= self.factor
        return table

    def __repr__(self):
        return f"SlowNode(worker={self.worker}, factor={self.factor}, start_step={self.start_step})"


def _speed_table(speeds, n_workers, n_steps):
    if speeds is None:
        return np.ones((n_steps, n_workers))
    if hasattr(speeds, "speeds"):
        return np.array(speeds.speeds(n_workers, n_steps), dtype=np.float64)
    return np.tile(np.asarray(speeds, dtype=np.float64), (n_steps, 1))


class Cluster:
    """``n_workers`` simulated workers joined by a :class:`Network`.

    ``speeds``: None (all 1), one number per worker (fixed), or a speed model such as
    :class:`RandomSpeeds` or :class:`SlowNode`. A worker of speed ``s`` computes the
    gradient of ``n`` samples in ``n * sample_time_s / s`` simulated seconds.
    """

    def __init__(self, n_workers, network=None, speeds=None, *, sample_time_s=1e-4):
        self.n_workers = check_int("n_workers", n_workers, 1)
        if network is not None and not isinstance(network, Network):
            fail("network", "a prunekit.distributed.Network or None", type(network).__name__, TypeError)
        self.network = network if network is not None else Network()
        if speeds is not None and not hasattr(speeds, "speeds"):
            arr = np.asarray(speeds, dtype=np.float64) if not isinstance(speeds, str) else None
            if arr is None or arr.shape != (self.n_workers,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                fail("speeds", f"None, a speed model, or {self.n_workers} positive numbers (one per worker)",
                     speeds)
        if isinstance(speeds, SlowNode) and speeds.worker >= self.n_workers:
            fail("speeds", f"a SlowNode whose worker is below n_workers={self.n_workers}", speeds)
        self.speeds = speeds
        self.sample_time_s = float(check_number("sample_time_s", sample_time_s, 0, None))

    def speed_table(self, n_steps):
        """``(n_steps, n_workers)`` speeds, one row per step."""
        return _speed_table(self.speeds, self.n_workers, n_steps)

    def __repr__(self):
        return f"Cluster(n_workers={self.n_workers}, network={self.network!r}, speeds={self.speeds!r})"


class CollectiveResult:
    """What a collective returns: ``result`` (the reduced vector), ``time_s`` (simulated
    seconds) and ``bytes_sent`` (one number per worker)."""

    def __init__(self, result, time_s, bytes_sent, name):
        self.result = result
        self.time_s = float(time_s)
        self.bytes_sent = np.asarray(bytes_sent, dtype=np.int64)
        self.name = name

    def __repr__(self):
        return (f"CollectiveResult({self.name}: {self.result.size} values, {self.time_s * 1e3:.3f} ms, "
                f"{int(self.bytes_sent.max()):,} bytes sent by the busiest worker)")


def plain_sum(arrays):
    """The NumPy reference of every collective: the element-wise sum over workers."""
    return np.asarray(arrays).sum(axis=0)


def _rows(arrays):
    a = np.asarray(arrays)
    if a.ndim != 2 or a.shape[0] < 1:
        fail("arrays", "an (n_workers, n) array: one row per worker", f"shape {a.shape}")
    return a


def _payload(nbytes, a):
    """Each worker's payload in bytes: the array's own size unless a compressor says otherwise."""
    return int(a[0].nbytes) if nbytes is None else int(check_number("nbytes", nbytes, 0, None))


def allreduce_time(kind, n_workers, nbytes, network):
    """Simulated seconds of an all-reduce of ``nbytes`` per worker (see the module table)."""
    n, a, b = n_workers, network.latency_s, network.bandwidth_Bps
    if n == 1:
        return 0.0
    if kind == "ring":
        return 2 * (n - 1) * (a + nbytes / (n * b))
    if kind == "tree":
        return 2 * math.ceil(math.log2(n)) * (a + nbytes / b)
    if kind == "parameter_server":
        return 2 * (a + n * nbytes / b)
    fail("kind", "one of 'ring', 'tree', 'parameter_server'", kind)


def allreduce_bytes(kind, n_workers, nbytes):
    """Bytes each worker sends in an all-reduce of ``nbytes`` per worker (see the module table)."""
    n = n_workers
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if kind == "ring":
        return np.full(n, 2 * (n - 1) * -(-int(nbytes) // n), dtype=np.int64)
    if kind == "tree":
        children = np.array([(2 * i + 1 < n) + (2 * i + 2 < n) for i in range(n)])
        return int(nbytes) * ((np.arange(n) > 0) + children)   # one message up, one down to each child
    if kind == "parameter_server":
        return np.full(n, int(nbytes), dtype=np.int64)
    fail("kind", "one of 'ring', 'tree', 'parameter_server'", kind)


def ring_allreduce(arrays, network, *, nbytes=None):
    """Ring all-reduce: a reduce-scatter then an all-gather, each N-1 steps around the ring.

    The vector is cut into N chunks; chunk c starts at worker c+1 and collects one
    worker's contribution per step, so after N-1 steps worker c holds its sum.
    ``nbytes`` is each worker's payload (default: ``arrays[0].nbytes``; a compressor passes its own).
    """
    a = _rows(arrays)
    n, d = a.shape
    size = _payload(nbytes, a)
    if n == 1:
        return CollectiveResult(a[0].copy(), 0.0, [0], "ring_allreduce")
    q = d // n                                      # chunk c = values [c q, (c + 1) q); the last
    blocks = a[:, :n * q].reshape(n, n, q)          # chunk also takes the d % n values left over
    owner = np.arange(n)
    acc = blocks[(owner + 1) % n, owner]            # chunk c starts at worker c + 1
    for s in range(2, n + 1):                       # ... and travels round the ring
        np.add(acc, blocks[(owner + s) % n, owner], out=acc)
    tail = a[0, n * q:].copy()                      # (the last chunk starts at worker 0)
    for i in range(1, n):
        tail += a[i, n * q:]
    result = np.concatenate([acc.reshape(-1), tail])  # all-gather: every worker receives every chunk
    return CollectiveResult(result, allreduce_time("ring", n, size, network), allreduce_bytes("ring", n, size),
                            "ring_allreduce")


def tree_allreduce(arrays, network, *, nbytes=None):
    """Binary-tree all-reduce: partial sums flow up a heap-ordered tree to worker 0, then back down.

    Worker i's children are 2i+1 and 2i+2. Each level waits for the one below:
    ceil(log2 N) steps up and as many down, each sending the whole vector.
    """
    a = _rows(arrays)
    n, _ = a.shape
    size = _payload(nbytes, a)
    partial = a.copy()
    depth = np.floor(np.log2(np.arange(n) + 1)).astype(int)
    for level in range(int(depth.max()), 0, -1):    # deepest level first
        kids = np.flatnonzero(depth == level)
        left, right = kids[kids % 2 == 1], kids[kids % 2 == 0]
        partial[(left - 1) // 2] += partial[left]
        partial[(right - 1) // 2] += partial[right]
    return CollectiveResult(partial[0], allreduce_time("tree", n, size, network), allreduce_bytes("tree", n, size),
                            "tree_allreduce")


def parameter_server(arrays, network, *, nbytes=None):
    """A central server receives every worker's vector, sums them in worker order, sends the sum back.

    The server's link carries N messages each way, so time grows linearly with N.
    ``bytes_sent`` counts the workers' uploads; the server itself sends ``N * nbytes``.
    """
    a = _rows(arrays)
    n, _ = a.shape
    size = _payload(nbytes, a)
    total = a[0].copy()
    for i in range(1, n):
        total += a[i]
    return CollectiveResult(total, allreduce_time("parameter_server", n, size, network),
                            allreduce_bytes("parameter_server", n, size), "parameter_server")


def allgather(message, network, *, decompressed=None, total=None):
    """Ring all-gather of compressed messages; every worker decompresses all of them and sums.

    For messages that cannot be summed while compressed (top-k's indices differ from
    worker to worker). In step s worker i forwards the message of worker i - s, so it
    sends every message but its successor's; a step lasts as long as its largest message.
    ``decompressed`` saves decompressing again when the caller already did; ``total``
    saves the sum too (a sparse message's caller adds its entries instead).
    """
    sizes = np.asarray(message.nbytes, dtype=np.int64)
    n = len(sizes)
    if total is not None:
        result = total
    else:
        result = plain_sum(message.decompress() if decompressed is None else decompressed)
    if n == 1:
        return CollectiveResult(result, 0.0, [0], "allgather")
    sent = sizes.sum() - np.roll(sizes, -1)
    time = 0.0
    idx = np.arange(n)
    for s in range(n - 1):
        time += network.latency_s + sizes[(idx - s) % n].max() / network.bandwidth_Bps
    return CollectiveResult(result, time, sent, "allgather")


COLLECTIVES = {"ring": ring_allreduce, "tree": tree_allreduce, "parameter_server": parameter_server}
"""All-reduce algorithms by name (what ``DataParallelTrainer(collective=...)`` accepts)."""
