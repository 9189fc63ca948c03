"""Parameters, multiply-adds, bytes and *measured* time per layer: MACs are not latency.

    report = pruning.profile(model, (1, 1, 28, 28))
    report            # a table; report.plot() draws MAC share next to time share

MACs count the multiply-adds of Linear and Conv2d layers for the given input shape
(a masked weight still costs its MACs: dense code multiplies the zeros too).
Latency is measured: the model runs ``repeats`` times in ``eval()`` mode without a
graph, each leaf layer's ``forward`` is timed with ``time.perf_counter``, and the
median is kept. The total is the median time of whole forward passes timed
separately (it includes what happens between layers, such as residual additions).
Timings depend on the machine and on what else it is doing.
"""
from __future__ import annotations

import time

import numpy as np

from .. import nn
from .._table import Col, find_row, html_table, text_table
from .._validate import check_int, fail
from ..tensor import no_grad
from ._targets import check_model

__all__ = ["profile", "ProfileReport"]


class ProfileReport:
    """Per-layer ``rows`` (dicts: name, type, output_shape, params, macs, bytes, ms) and totals.

    ``params``, ``macs``, ``bytes`` and ``ms`` (median forward time in milliseconds)
    are the totals; ``input_shape`` the shape profiled.
    """

    def __init__(self, rows, input_shape, total_ms, params, nbytes):
        self.rows = rows
        self.input_shape = tuple(input_shape)
        self.params = params
        self.bytes = nbytes
        self.macs = sum(r["macs"] for r in rows)
        self.ms = total_ms

    _COLUMNS = (Col("layer", "name", "<18"), Col("type", "type", "<12"), Col("output", "output_shape", "<18"),
                Col("params", "params", ">9,d"), Col("MACs", "macs", ">12,d"), Col("bytes", "bytes", ">10,d"),
                Col("ms", "ms", ">8.3f"))

    def __getitem__(self, name):
        return find_row(self.rows, "name", name)

    def _total(self):
        return {"layer": "total", "params": self.params, "MACs": self.macs, "bytes": self.bytes, "ms": self.ms}

    def __repr__(self):
        return f"profile for input {self.input_shape}\n" + text_table(self._COLUMNS, self.rows, total=self._total())

    def _repr_html_(self):
        return f"<p>profile for input {self.input_shape}</p>" + html_table(self._COLUMNS, self.rows,
                                                                         total=self._total())

    def plot(self, ax=None):
        """Share of MACs next to share of measured time, per layer (percent of the layers' sums)."""
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r["macs"] or r["ms"] > 0]
        ax = ax or plt.subplots(figsize=(6, 0.35 * len(rows) + 1.5))[1]
        y = np.arange(len(rows))
        macs = np.array([r["macs"] for r in rows], dtype=float)
        ms = np.array([r["ms"] for r in rows], dtype=float)
        ax.barh(y - 0.2, 100 * macs / max(macs.sum(), 1), height=0.4, label="MACs")
        ax.barh(y + 0.2, 100 * ms / max(ms.sum(), 1e-12), height=0.4, label="measured time")
        ax.set_yticks(y, [f"{r['name']} ({r['type']})" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("share of the model's total (%)")
        ax.set_title("MACs are not latency")
        ax.legend()
        return ax


def _macs(m, out_shape):
    if isinstance(m, nn.Linear):
        return int(np.prod(out_shape)) * m.in_features
    if isinstance(m, nn.Conv2d):
        return int(np.prod(out_shape)) * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    return 0


def profile(model, input_shape, *, repeats=20, seed=0):
    """Profile ``model`` on a random input of ``input_shape`` (batch axis included); return a :class:`ProfileReport`."""
    check_model(model)
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) >= 2
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape)):
        fail("input_shape", "a tuple of at least two positive ints (batch first), e.g. (1, 1, 28, 28)", input_shape)
    check_int("repeats", repeats, 1)
    x = np.random.default_rng(seed).standard_normal(tuple(input_shape)).astype(np.float32)
    leaves = [(n, m) for n, m in model.named_modules() if not m._modules and n]
    if not leaves and not model._modules:
        leaves = [("", model)]
    times = {n: [] for n, _ in leaves}
    shapes = {}
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for name, m in leaves:
            def forward(inp, *args, _orig=m.forward, _name=name, **kwargs):
                t0 = time.perf_counter()
                out = _orig(inp, *args, **kwargs)
                times[_name].append(time.perf_counter() - t0)
                shapes[_name] = out.shape
                return out
            object.__setattr__(m, "forward", forward)
        try:
            with no_grad():
                for _ in range(repeats + 1):   # the first run warms caches and compiles kernels
                    model(x)
        finally:
            for _, m in leaves:
                m.__dict__.pop("forward", None)
        totals = []
        with no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                totals.append(time.perf_counter() - t0)
    finally:
        for m, flag in flags:
            object.__setattr__(m, "training", flag)
    rows = []
    for name, m in leaves:
        if name not in shapes:
            continue   # not called in forward
        own = list(m._parameters.values())
        params = sum(p.size for p in own if p is not None)
        nbytes = sum(p.data.nbytes for p in own if p is not None) + sum(np.asarray(getattr(m, b)).nbytes
                                                                       for b in m._buffers)
        rows.append({"name": name, "type": type(m).__name__, "output_shape": tuple(shapes[name]),
                     "params": params, "macs": _macs(m, shapes[name]), "bytes": nbytes,
                     "ms": 1e3 * float(np.median(times[name][1:]))})
    total_bytes = sum(p.data.nbytes for p in model.parameters()) + sum(np.asarray(b).nbytes
                                                                      for _, b in model.named_buffers())
    return ProfileReport(rows, input_shape, 1e3 * float(np.median(totals)), model.num_parameters(), total_bytes)
