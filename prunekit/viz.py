"""Plots used by the course notebooks: loss curves, loss surfaces with descent paths, image grids.

Each function draws one idea into a matplotlib ``Axes`` (made for you if you pass
none) and returns it, so a notebook can add to the picture or test what was drawn.
matplotlib is imported inside the functions only: ``import prunekit`` never loads it.

Functions here are self-contained (no shared state), so new helpers can be added
without touching the existing ones.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._validate import check_int, check_number, fail

__all__ = ["plot_curves", "loss_contour", "show_images"]


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive values ("valid" part only, length n - window + 1)."""
    c = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    return (c[window:] - c[:-window]) / window


def plot_curves(curves, ax=None, xlabel="step", ylabel="loss", logy=False, smooth=1, title=None,
                figsize=(6, 3.5)):
    """Draw several curves (e.g. training losses) on one labelled Axes and return it.

    ``curves`` maps a legend label to either a 1-D array ``y`` (plotted against
    0, 1, 2, ...) or a pair ``(x, y)``. With ``smooth=k > 1`` each curve is replaced
    by its moving average over ``k`` points (drawn at the window's last x), which
    makes noisy per-batch losses readable. ``logy=True`` uses a log scale; points
    that are not finite or (on a log scale) not positive are left out, so a
    diverging run is drawn up to where it blew up.
    """
    if not isinstance(curves, dict) or not curves:
        fail("curves", "a non-empty dict {label: y or (x, y)}", type(curves).__name__, TypeError)
    smooth = check_int("smooth", smooth, 1)
    ax = _new_axes(ax, figsize)
    for label, c in curves.items():
        if isinstance(c, tuple) and len(c) == 2:
            x, y = np.asarray(c[0], dtype=np.float64), np.asarray(c[1], dtype=np.float64)
        else:
            y = np.asarray(c, dtype=np.float64)
            x = np.arange(len(y), dtype=np.float64)
        if y.ndim != 1 or x.shape != y.shape:
            fail(f"curves[{label!r}]", "a 1-D array or a pair (x, y) of 1-D arrays of equal length",
                 f"shapes {x.shape} and {y.shape}")
        if smooth > 1 and len(y) >= smooth:
            y, x = _moving_average(y, smooth), x[smooth - 1:]
        keep = np.isfinite(y) & ((y > 0) if logy else True)
        ax.plot(x[keep], y[keep], label=str(label))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(True, alpha=0.3)
    return ax


def loss_contour(loss, center, span, paths=None, ax=None, n=101, levels=20, log_levels=True,
                 xlabel="$w_1$", ylabel="$w_2$", title=None, figsize=(5, 4.5)):
    """Contour lines of a function of two weights, with optional descent paths on top.

    ``loss(W1, W2)`` is called once with two (n, n) grids (``numpy.meshgrid``
    over ``center +- span``) and must return the (n, n) array of losses.
    ``span`` is a number or a pair (one half-width per axis). ``paths`` maps a
    legend label to a (k, 2) array of points (w1, w2), drawn as a line with dots
    from its first point (a circle) to its last. ``log_levels=True`` spaces the
    contour levels geometrically above the minimum of the grid, so the valley
    floor is resolved as well as the walls. ``center`` is marked with a star.
    Returns the Axes.
    """
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (2,):
        fail("center", "a pair (w1, w2)", center.tolist() if center.ndim else center.item())
    spans = np.broadcast_to(np.asarray(span, dtype=np.float64), (2,))
    if not np.all(np.isfinite(spans)) or np.any(spans <= 0):
        fail("span", "a positive number or a pair of positive numbers", span)
    n = check_int("n", n, 3)
    ax = _new_axes(ax, figsize)
    w1 = np.linspace(center[0] - spans[0], center[0] + spans[0], n)
    w2 = np.linspace(center[1] - spans[1], center[1] + spans[1], n)
    W1, W2 = np.meshgrid(w1, w2)
    Z = np.asarray(loss(W1, W2), dtype=np.float64)
    if Z.shape != W1.shape:
        fail("loss", f"a function returning an array of the grid's shape {W1.shape}", f"shape {Z.shape}")
    if log_levels and isinstance(levels, numbers.Integral):
        lo, hi = float(Z.min()), float(Z.max())
        gap = max(hi - lo, 1e-300)
        levels = lo + np.geomspace(gap * 1e-4, gap, int(levels))
    ax.contour(W1, W2, Z, levels=levels, cmap="viridis", linewidths=0.8)
    ax.plot(*center, marker="*", markersize=14, color="black", linestyle="none", label="minimum")
    for label, p in (paths or {}).items():
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2:
            fail(f"paths[{label!r}]", "a (k, 2) array of points", f"shape {p.shape}")
        line, = ax.plot(p[:, 0], p[:, 1], marker=".", markersize=4, linewidth=1.2, label=str(label))
        ax.plot(p[0, 0], p[0, 1], marker="o", markersize=7, color=line.get_color(), linestyle="none")
    ax.set_xlim(w1[0], w1[-1])
    ax.set_ylim(w2[0], w2[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return ax


def show_images(images, labels=None, predictions=None, class_names=None, ncols=8, image_shape=None,
                cmap="gray_r", scale=1.3, title=None):
    """A grid of small images with their labels; wrong predictions are titled in red.

    ``images`` is (N, H, W), (N, 1, H, W) or flattened (N, H*W) with square
    images (or give ``image_shape``). ``labels`` and ``predictions`` are N
    integer classes (or None); ``class_names[k]`` names class ``k``. Each panel
    is titled with the label, or with "label -> prediction" when predictions are
    given. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if images.ndim not in (2, 3, 4) or len(images) == 0:
        fail("images", "a non-empty array of shape (N, H, W), (N, 1, H, W) or (N, H*W)", f"shape {images.shape}")
    ncols = check_int("ncols", ncols, 1)
    check_number("scale", scale, 0, None, "(]")
    if image_shape is None:
        if images.ndim == 2:
            side = int(round(np.sqrt(images.shape[1])))
            if side * side != images.shape[1]:
                fail("image_shape", "(H, W) for flattened images that are not square", None)
            image_shape = (side, side)
        else:
            image_shape = images.shape[-2:]
    images = images.reshape(len(images), *image_shape)
    n = len(images)
    for name, arr in (("labels", labels), ("predictions", predictions)):
        if arr is not None and len(arr) != n:
            fail(name, f"one class per image ({n})", f"{len(arr)} values")

    def name(k):
        k = int(k)
        return class_names[k] if class_names is not None else str(k)

    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap=cmap)
        if labels is not None and predictions is not None:
            wrong = int(labels[i]) != int(predictions[i])
            ax.set_title(f"{name(labels[i])}\n-> {name(predictions[i])}", fontsize=8,
                         color="tab:red" if wrong else "black")
        elif labels is not None:
            ax.set_title(name(labels[i]), fontsize=8)
        elif predictions is not None:
            ax.set_title(f"-> {name(predictions[i])}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Pruning plots (notebooks 03 and 04, and the pruning explorer in widgets.py)
# ---------------------------------------------------------------------------------------------
__all__ += ["plot_score_vs_oracle", "plot_sparsity_curves", "plot_weight_histogram", "plot_mask",
            "plot_layer_sparsity"]


def _flat_values(values):
    """A dict of arrays (concatenated in order) or one array, as a flat float64 vector."""
    if isinstance(values, dict):
        if not values:
            fail("scores", "a non-empty dict {name: array} or an array", "an empty dict")
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values.values()])
    return np.asarray(values, dtype=np.float64).reshape(-1)


def plot_score_vs_oracle(score, oracle, ax=None, name="score", log=True, rho=None, max_points=20000,
                         seed=0, ylabel="exact |loss change| when removed", figsize=(4, 3.5)):
    """Scatter of a cheap importance score (x) against the exact loss change (y), one dot per weight.

    ``score`` and ``oracle`` are arrays of the same size, or dicts ``{name: array}``
    with the same keys (as :func:`prunekit.pruning.compute_scores` returns). A perfect
    score lies on an increasing curve: only the *order* matters for pruning, which is
    what Spearman's rank correlation ``rho`` (shown in the title; computed here if not
    given) measures. With ``log=True`` both axes are logarithmic and the weights where
    either value is not positive (e.g. exactly 0) are left out; the legend says how
    many. ``log="symlog"`` keeps every weight, signs included, on symmetric-log axes
    (linear within the 5th percentile of the nonzero magnitudes, logarithmic beyond). At most ``max_points`` dots are drawn (a seeded random sample). ``ylabel``
    names the reference (e.g. the signed change, with ``log=False``). Returns the Axes.
    """
    x, y = _flat_values(score), _flat_values(oracle)
    if x.shape != y.shape:
        fail("oracle", f"as many values as score ({x.size})", y.size)
    if rho is None:
        from .pruning import spearman

        rho = spearman(x, y)
    ax = _new_axes(ax, figsize)
    if log not in (True, False, "symlog"):
        fail("log", "True, False or 'symlog'", log)
    keep = np.isfinite(x) & np.isfinite(y)
    if log is True:
        keep &= (x > 0) & (y > 0)
    idx = np.flatnonzero(keep)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    left_out = x.size - int(keep.sum())
    label = f"{idx.size:,} weights" + (f" ({left_out:,} at 0, not shown)" if left_out else "")
    ax.scatter(x[idx], y[idx], s=4, alpha=0.35, linewidths=0, label=label)
    if log is True:
        ax.set_xscale("log")
        ax.set_yscale("log")
    elif log == "symlog":
        for v, axis, set_scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
            nonzero = np.abs(v[keep & (v != 0)])
            if not nonzero.size:
                continue
            linthresh = float(np.percentile(nonzero, 5))
            set_scale("symlog", linthresh=linthresh)
            # at most ~3 labelled decades per sign, or the labels run into each other
            lo, hi = int(np.ceil(np.log10(linthresh))), int(np.ceil(np.log10(nonzero.max())))
            step = max(1, -(-(hi - lo) // 3))
            powers = 10.0 ** np.arange(hi, lo - 1, -step)
            axis.set_ticks(np.concatenate([-powers, [0.0], powers[::-1]]))
    ax.set_xlabel(f"{name} score")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name}: Spearman rho = {rho:.2f}")
    ax.legend(fontsize="x-small", loc="upper left", markerscale=3)
    return ax


def plot_sparsity_curves(curves, ax=None, baseline=None, ylabel="test accuracy", title=None,
                         styles=None, figsize=(6, 4)):
    """Accuracy (or any metric) against sparsity, one line per method, the dense model dashed.

    ``curves`` maps a legend label to a pair ``(sparsities, values)``, sparsities as
    fractions in [0, 1] (drawn in %). ``baseline`` (e.g. the dense accuracy) is drawn
    as a horizontal dashed line. ``styles`` optionally maps a label to keyword
    arguments for ``ax.plot`` (e.g. ``{"random": {"color": "gray", "linestyle": ":"}}``).
    Returns the Axes.
    """
    if not isinstance(curves, dict) or not curves:
        fail("curves", "a non-empty dict {label: (sparsities, values)}", type(curves).__name__, TypeError)
    ax = _new_axes(ax, figsize)
    for label, c in curves.items():
        if not (isinstance(c, (tuple, list)) and len(c) == 2):
            fail(f"curves[{label!r}]", "a pair (sparsities, values)", type(c).__name__, TypeError)
        s, v = np.asarray(c[0], dtype=np.float64), np.asarray(c[1], dtype=np.float64)
        if s.ndim != 1 or s.shape != v.shape:
            fail(f"curves[{label!r}]", "two 1-D arrays of equal length", f"shapes {s.shape} and {v.shape}")
        if np.any((s < 0) | (s > 1)):
            fail(f"curves[{label!r}]", "sparsities as fractions in [0, 1]", f"values up to {s.max():g}")
        kw = {"marker": "o", "markersize": 4, **((styles or {}).get(label, {}))}
        ax.plot(100 * s, v, label=str(label), **kw)
    if baseline is not None:
        ax.axhline(float(baseline), color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel("sparsity (% of weights removed)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_weight_histogram(weights, mask, ax=None, bins=80, threshold=None, logy=True, title=None,
                          figsize=(5, 3.5)):
    """Histogram of a layer's weights, the kept ones and the pruned ones stacked in two colours.

    ``weights`` are the values *before* pruning; ``mask`` is 1 (kept) / 0 (pruned), same
    shape. ``threshold`` (magnitude pruning) draws the cut at ``+-threshold``: every
    weight inside the band is pruned. ``logy`` shows the counts on a log scale, so the
    few large weights stay visible. Returns the Axes.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    m = np.asarray(mask).reshape(-1)
    if w.shape != m.shape:
        fail("mask", f"an array with as many entries as weights ({w.size})", m.size)
    check_int("bins", bins, 1)
    ax = _new_axes(ax, figsize)
    edges = np.histogram_bin_edges(w, bins=bins)
    kept, _ = np.histogram(w[m != 0], bins=edges)
    pruned, _ = np.histogram(w[m == 0], bins=edges)
    ax.stairs(kept + pruned, edges, fill=True, color="tab:red", alpha=0.75, label=f"pruned ({(m == 0).mean():.1%})")
    ax.stairs(kept, edges, fill=True, color="tab:blue", label="kept")
    if threshold is not None:
        for t in (-threshold, threshold):
            ax.axvline(t, color="black", linestyle="--", linewidth=1)
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
    ax.set_xlabel("weight value (before pruning)")
    ax.set_ylabel("number of weights" + (" (log)" if logy else ""))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_mask(mask, ax=None, image_shape=None, title=None, cmap="Greys", figsize=(6, 3)):
    """A layer's mask as an image: dark = kept, white = pruned.

    For a ``Linear`` weight (out, in) each row is an output neuron and each column an
    input. With ``image_shape`` (e.g. (28, 28) for the first layer of an MNIST model)
    it shows instead, for every input pixel, how many of its outgoing connections are
    kept: where in the image the pruned network still looks. Returns the Axes.
    """
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim < 2:
        fail("mask", "a 2-D (or higher) mask array", f"shape {m.shape}")
    m = m.reshape(m.shape[0], -1)
    ax = _new_axes(ax, figsize)
    if image_shape is not None:
        if int(np.prod(image_shape)) != m.shape[1]:
            fail("image_shape", f"a shape with {m.shape[1]} pixels (the layer's inputs)", image_shape)
        img = ax.imshow(m.sum(axis=0).reshape(image_shape), cmap="viridis", vmin=0)
        ax.figure.colorbar(img, ax=ax, label=f"kept connections (of {m.shape[0]})")
        ax.set_xlabel("pixel column")
        ax.set_ylabel("pixel row")
    else:
        # "antialiased": a mask larger than its on-screen size is shown as local density (grey), not aliased
        ax.imshow(m, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="antialiased")
        ax.set_xlabel("input index")
        ax.set_ylabel("output neuron")
    ax.set_title(title if title is not None else f"mask: {m.mean():.1%} of the weights kept")
    return ax


def plot_layer_sparsity(reports, ax=None, title=None, figsize=(6, 3.5)):
    """Grouped bars: the sparsity of every layer, for one or several pruning runs.

    ``reports`` maps a legend label to a :class:`prunekit.pruning.SparsityReport` or a
    dict ``{layer: sparsity}`` (a ``"total"`` key is drawn as its own group).
    Returns the Axes.
    """
    if not isinstance(reports, dict) or not reports:
        fail("reports", "a non-empty dict {label: SparsityReport or {layer: sparsity}}",
             type(reports).__name__, TypeError)
    table = {label: (r.as_dict() if hasattr(r, "as_dict") else dict(r)) for label, r in reports.items()}
    layers = list(next(iter(table.values())))
    ax = _new_axes(ax, figsize)
    width = 0.8 / len(table)
    xs = np.arange(len(layers))
    for i, (label, d) in enumerate(table.items()):
        missing = [k for k in layers if k not in d]
        if missing:
            fail(f"reports[{label!r}]", f"the layers {layers}", f"missing {missing}")
        ax.bar(xs + (i - (len(table) - 1) / 2) * width, [100 * d[k] for k in layers], width, label=str(label))
    ax.set_xticks(xs, layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("sparsity (% pruned)")
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))   # beside the bars, not on them
    ax.grid(True, axis="y", alpha=0.3)
    return ax


__all__ += ["plot_dependency_graph"]


def plot_dependency_graph(model, example_input, ax=None):
    """Draw the layers of ``model`` as nodes, each group of coupled channels in one colour.

    See :func:`prunekit.pruning.plot_dependency_graph` (this is the same function).
    """
    from .pruning.graph import plot_dependency_graph as draw

    return draw(model, example_input, ax=ax)
