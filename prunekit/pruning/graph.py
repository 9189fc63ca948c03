"""Which channels must be removed together: a dependency graph traced from one forward pass.

Removing filter ``j`` of a convolution is only half of the job: every layer that
reads that channel must lose its input channel ``j`` too, a BatchNorm in between
loses entry ``j``, and a channel that is *added* to another one (a residual
shortcut) can only go if the other one goes as well. Rather than asking the user to
describe the architecture, we run the model once and watch the data flow:

* every output channel of a Linear or Conv2d (a *producer*) gets a label;
* labels travel with the channels through ReLU, pooling, BatchNorm, global
  average pooling and dropout, are repeated ``H*W`` times by a flatten (each
  channel becomes ``H*W`` input columns of the next Linear), and are laid side by
  side by a concatenation;
* an addition ``a + b`` glues label ``a[j]`` to label ``b[j]`` (union-find): the two
  channels become one *unit* that is scored and removed as a whole;
* a Linear or Conv2d that reads labelled channels is a *consumer* of them.

Channels that reach the model's output, the model's input channels, and channels
that pass through an operation we cannot follow (a transpose, an index, a sigmoid
whose value at 0 is not 0, adding a non-zero constant...) are *frozen*: never
removed, so the surgery stays exact. Producers that share a unit form one
:class:`DependencyGroup`.

The trace uses the autograd graph of :mod:`prunekit.tensor` (each Tensor's
``_parents`` and ``_op``) between layers, and records the input and output of every
Linear, Conv2d and BatchNorm call (Torch-Pruning, Fang et al. 2023, builds the same
kind of graph from PyTorch's autograd graph).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

from .. import nn
from .._table import Col, html_table
from .._validate import fail
from ..tensor import Tensor, enable_grad
from ._targets import check_model

__all__ = ["DependencyGroup", "DependencyGraph", "dependency_groups", "plot_dependency_graph"]

PRODUCERS = (nn.Linear, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# ops that act on each channel separately and keep 0 at 0 (so a removed channel stays exactly 0)
_PER_CHANNEL = {"relu", "tanh", "abs", "astype", "max_pool2d", "avg_pool2d", "clip"}


@contextlib.contextmanager
def _record_calls(model, types):
    """Record ``(name, module, input, output)`` of every call of a module of ``types``.

    Wraps the module's ``forward`` for the duration (an instance attribute that
    shadows the class method; removed afterwards, even on error).
    """
    calls, patched = [], []
    for name, m in model.named_modules():
        if isinstance(m, types):
            def forward(x, *args, _orig=m.forward, _name=name, _m=m, **kwargs):
                out = _orig(x, *args, **kwargs)
                calls.append((_name, _m, x, out))
                return out
            object.__setattr__(m, "forward", forward)
            patched.append(m)
    try:
        yield calls
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def example_array(model, example_input):
    """The trace input: ``example_input`` as float32, or (MLPs) a 2-row input for the first Linear."""
    if example_input is None:
        first = next((m for m in model.modules() if isinstance(m, PRODUCERS)), None)
        if isinstance(first, nn.Linear):
            return np.random.default_rng(0).standard_normal((2, first.in_features)).astype(np.float32)
        fail("example_input", "an input batch for a model whose first layer is not a Linear "
             "(e.g. np.zeros((1, 1, 28, 28), np.float32))", None)
    x = example_input.data if isinstance(example_input, Tensor) else np.asarray(example_input)
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        fail("example_input", "a numeric array with a batch axis (at least 2-D)", f"shape {x.shape}, dtype {x.dtype}")
    return x.astype(np.float32, copy=False) if x.dtype.kind != "f" else x


class _Labels:
    """Union-find over channel labels (ints); some labels are frozen."""

    def __init__(self):
        self.parent = []
        self.frozen = set()

    def new(self, n, frozen=False):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        block = np.arange(start, start + n)
        if frozen:
            self.frozen.update(block.tolist())
        return block

    def find(self, e):
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:
            self.parent[e], e = root, self.parent[e]
        return root

    def union(self, a, b):
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, block):
        if block is not None:
            self.frozen.update(int(e) for e in block)

    def roots(self, block):
        return np.array([self.find(int(e)) for e in block], dtype=np.int64)


def _channels_vary(other, out):
    """True if a constant operand ``other`` has a different value per channel of ``out``."""
    shape = (1,) * (out.ndim - other.ndim) + tuple(other.shape)
    return out.ndim >= 2 and len(shape) == out.ndim and shape[1] != 1


def _topological(out, by_out):
    """Tensors from the input to ``out``; a recorded module call is one step (its input -> its output)."""
    order, seen, stack = [], set(), [(out, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        preds = [by_out[id(t)][2]] if id(t) in by_out else [p for p in t._parents if p is not None]
        for p in preds:
            if id(p) not in seen:
                stack.append((p, False))
    return order


def _op_labels(t, parents, labels, uf):
    """Labels of the channels of ``t`` from its parents' labels (None: no channel structure)."""
    op = t._op
    ls = [labels.get(id(p)) for p in parents]
    if op in _PER_CHANNEL or (op.startswith("**") and float(op[2:]) > 0):
        return ls[0] if ls[0] is not None and t.ndim >= 2 and t.shape[:2] == parents[0].shape[:2] else _stop(ls, uf)
    if op in ("+", "*"):
        (a, b), (la, lb) = parents, ls
        if la is not None and lb is not None:
            if len(la) == len(lb) == t.shape[1]:
                for x, y in zip(la, lb):   # a[j] + b[j]: one unit
                    uf.union(x, y)
                return la
            return _stop(ls, uf)
        if la is None and lb is None:
            return None
        known, other = (la, b) if la is not None else (lb, a)
        if _channels_vary(other, t) or len(known) != t.shape[1]:
            return _stop(ls, uf)
        if op == "+" and np.any(other.data != 0):   # a removed channel would become the constant
            return _stop(ls, uf)
        return known
    if op == "reshape" and ls[0] is not None:
        p = parents[0]
        if t.shape == p.shape:
            return ls[0]
        per = int(np.prod(p.shape[2:])) if p.ndim > 2 else 1
        if t.ndim == 2 and t.shape[0] == p.shape[0] and t.shape[1] == len(ls[0]) * per:
            return np.repeat(ls[0], per)   # flatten: channel c becomes columns c*H*W ... (c+1)*H*W - 1
        return _stop(ls, uf)
    if op == "sum" and ls[0] is not None:
        p = parents[0]
        if t.ndim >= 2 and t.shape[:2] == p.shape[:2]:
            return ls[0]   # a sum over the spatial axes (global average pooling)
        return _stop(ls, uf)
    if op == "cat":
        if t.ndim >= 2 and all(p.ndim == t.ndim and p.shape[0] == t.shape[0] for p in parents) \
                and sum(p.shape[1] for p in parents) == t.shape[1]:
            return np.concatenate([l if l is not None else uf.new(p.shape[1], frozen=True)
                                   for p, l in zip(parents, ls)])
        return _stop(ls, uf)
    return _stop(ls, uf)


def _stop(ls, uf):
    """An operation the trace cannot follow: its inputs' channels are frozen."""
    for l in ls:
        uf.freeze(l)
    return None


def _trace(model, example_input):
    """Run one forward pass; return the label bookkeeping of producers, consumers and norms."""
    check_model(model)
    x = example_array(model, example_input)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()   # batch norm must not update its running statistics
    try:
        with enable_grad(), _record_calls(model, PRODUCERS + NORMS) as calls:
            inp = Tensor(x, requires_grad=True)
            out = model(inp)
    finally:
        for m, flag in flags:
            object.__setattr__(m, "training", flag)
    if not isinstance(out, Tensor):
        fail("model", "a model whose forward returns a Tensor", type(out).__name__, TypeError)
    by_out, called = {}, set()
    for call in calls:
        if call[0] in called:
            fail("model", "a model that calls each Linear, Conv2d and BatchNorm once per forward pass "
                 "(shared layers cannot be pruned apart)", f"layer {call[0]!r} called twice")
        called.add(call[0])
        by_out[id(call[3])] = call
    uf = _Labels()
    labels = {id(inp): uf.new(x.shape[1], frozen=True)}
    producers, consumers, norms = OrderedDict(), OrderedDict(), OrderedDict()
    for t in _topological(out, by_out):
        if id(t) in labels:
            continue
        if id(t) in by_out:
            name, m, xin, _ = by_out[id(t)]
            lin = labels.get(id(xin))
            if isinstance(m, PRODUCERS):
                n_in = m.weight.shape[1]
                if lin is None or len(lin) != n_in or xin.ndim != (2 if isinstance(m, nn.Linear) else 4):
                    uf.freeze(lin)
                    lin = uf.new(n_in, frozen=True)
                consumers[name] = lin
                producers[name] = labels[id(t)] = uf.new(m.weight.shape[0])
            else:
                if lin is not None and len(lin) == m.num_features:
                    norms[name] = lin
                labels[id(t)] = lin
        elif not t._parents:
            labels[id(t)] = None   # a constant or a parameter used directly
        else:
            labels[id(t)] = _op_labels(t, [p for p in t._parents if p is not None], labels, uf)
    uf.freeze(labels.get(id(out)))   # the model's outputs stay
    return uf, producers, consumers, norms


class DependencyGroup:
    """Producers (Linear/Conv2d) whose output channels are coupled, and who reads those channels.

    The group has ``n_units`` units; a unit is one channel of each coupled producer
    (several of them after a residual addition) and is scored and removed as one.

    * ``producers[name]``: unit index of each output channel of that layer (an int array).
    * ``consumers[name]``, ``norms[name]``: ``(positions, units)``: the input columns
      (or BatchNorm entries) of that layer that carry the group's channels, and their units.
    * ``frozen``: bool per unit, True if it can never be removed (reaches the output, ...).
    """

    def __init__(self, index, kinds, producers, consumers, norms, frozen):
        self.index = index
        self.kinds = kinds
        self.producers = producers
        self.consumers = consumers
        self.norms = norms
        self.frozen = frozen
        self.n_units = len(frozen)

    @property
    def layers(self):
        """Names of every layer the group touches (producers, norms, consumers)."""
        return list(OrderedDict.fromkeys([*self.producers, *self.norms, *self.consumers]))

    @property
    def kind(self):
        """"channel" if a Conv2d produces the channels, else "neuron"."""
        return "channel" if "Conv2d" in self.kinds.values() else "neuron"

    @property
    def coupled(self):
        """True if more than one layer produces each unit (a residual addition)."""
        return len(self.producers) > 1

    def __repr__(self):
        frozen = int(self.frozen.sum())
        return (f"DependencyGroup({self.index}: {self.n_units} units ({frozen} frozen), producers "
                f"{list(self.producers)}, norms {list(self.norms)}, consumers {list(self.consumers)})")


class DependencyGraph:
    """The :class:`DependencyGroup` list of a model, plus the data-flow edges between its layers.

    Iterate over it, index it, or look a group up by layer name with :meth:`group_of`.
    """

    def __init__(self, groups, layers, edges):
        self.groups = groups
        self.layers = layers   # OrderedDict name -> type name, in model order
        self.edges = edges     # list of (from_layer, to_layer)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        return self.groups[i]

    def group_of(self, layer):
        """The group whose units ``layer`` produces (a layer name)."""
        for g in self.groups:
            if layer in g.producers:
                return g
        names = [name for g in self.groups for name in g.producers]
        fail("layer", f"the name of a Linear or Conv2d of the model (one of {names})", layer, KeyError)

    def __repr__(self):
        lines = [f"DependencyGraph: {len(self.groups)} groups"]
        for g in self.groups:
            lines.append(f"  {g!r}")
        return "\n".join(lines)

    _COLUMNS = (Col("group", lambda g: g.index), Col("producers", lambda g: ", ".join(g.producers)),
                Col("norms", lambda g: ", ".join(g.norms)), Col("consumers", lambda g: ", ".join(g.consumers)),
                Col("units", lambda g: g.n_units), Col("frozen", lambda g: int(g.frozen.sum())))

    def _repr_html_(self):
        return html_table(self._COLUMNS, self.groups)

    def plot(self, ax=None):
        """Draw the graph (see :func:`plot_dependency_graph`)."""
        return _draw(self, ax)


def dependency_groups(model, example_input=None):
    """Trace one forward pass of ``model`` on ``example_input`` and return its :class:`DependencyGraph`.

    ``example_input`` may be omitted for a model whose first layer is a Linear.
    Groups come in model order of their first producer.
    """
    uf, producers, consumers, norms = _trace(model, example_input)
    frozen_roots = {uf.find(e) for e in uf.frozen}
    modules = dict(model.named_modules())
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    by_order = lambda d: OrderedDict(sorted(d.items(), key=lambda kv: order[kv[0]]))  # noqa: E731
    producers, consumers, norms = by_order(producers), by_order(consumers), by_order(norms)
    proots = OrderedDict((n, uf.roots(b)) for n, b in producers.items())
    # producers that share a root belong to one group (a tiny union-find over layer names)
    owner, link = {}, {n: n for n in proots}

    def top(n):
        while link[n] != n:
            n = link[n]
        return n
    for n, roots in proots.items():
        for r in roots.tolist():
            if r in owner and top(owner[r]) != top(n):
                link[top(n)] = top(owner[r])
            owner.setdefault(r, n)
    comps = OrderedDict()
    for n in proots:
        comps.setdefault(top(n), []).append(n)
    groups = []
    for members in comps.values():
        unit = OrderedDict()
        for n in members:
            for r in proots[n].tolist():
                unit.setdefault(r, len(unit))
        prod = OrderedDict((n, np.array([unit[r] for r in proots[n].tolist()])) for n in members)

        def where(blocks):
            out = OrderedDict()
            for name, block in blocks.items():
                roots = uf.roots(block)
                pos = np.flatnonzero([r in unit for r in roots.tolist()])
                if pos.size:
                    out[name] = (pos, np.array([unit[r] for r in roots[pos].tolist()]))
            return out
        frozen = np.array([r in frozen_roots for r in unit], dtype=bool)
        kinds = OrderedDict((n, type(modules[n]).__name__) for n in members)
        groups.append(DependencyGroup(len(groups), kinds, prod, where(consumers), where(norms), frozen))
    # edges for drawing: producer -> norm / consumer that reads its channels
    layers = OrderedDict((n, type(m).__name__) for n, m in model.named_modules()
                         if n in producers or n in norms)
    edges = []
    for g in groups:
        for p in g.producers:
            edges += [(p, c) for c in [*g.norms, *g.consumers] if (p, c) not in edges]
    return DependencyGraph(groups, layers, edges)


def plot_dependency_graph(model, example_input=None, ax=None):
    """Draw the layers of ``model`` as nodes (model order, top to bottom), one colour per coupled group.

    A node is coloured by the group whose channels it produces (Linear, Conv2d) or
    normalises (BatchNorm); grey if all its channels are frozen (e.g. the output
    layer). Arrows go from a producer to every layer that reads its channels.
    """
    graph = model if isinstance(model, DependencyGraph) else dependency_groups(model, example_input)
    return _draw(graph, ax)


def _draw(graph, ax):
    import matplotlib.pyplot as plt

    names = list(graph.layers)
    n = len(names)
    if ax is None:
        ax = plt.subplots(figsize=(6, max(3.0, 0.38 * n + 1)))[1]
    y = {name: -i for i, name in enumerate(names)}
    cmap = plt.get_cmap("tab10")
    colour = {}
    for g in graph.groups:
        c = "lightgrey" if g.frozen.all() else cmap(g.index % 10)
        for name in [*g.producers, *g.norms]:
            colour.setdefault(name, c)
    for a, b in graph.edges:
        rad = 0.0 if y[a] - y[b] == 1 else 0.35   # skips over layers (shortcuts) bend
        ax.annotate("", xy=(0, y[b]), xytext=(0, y[a]),
                    arrowprops=dict(arrowstyle="->", color="0.4", lw=1,
                                    connectionstyle=f"arc3,rad={rad}", shrinkA=7, shrinkB=7))
    for name in names:
        ax.scatter([0], [y[name]], s=180, color=colour.get(name, "lightgrey"), edgecolor="k", zorder=3)
        ax.text(0.12, y[name], f"{name}  ({graph.layers[name]})", va="center", fontsize=8)
    ax.set_xlim(-1.2, 2.5)
    ax.set_ylim(-n + 0.3, 0.7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"dependency graph: {len(graph.groups)} groups (one colour each, grey = frozen)")
    return ax
