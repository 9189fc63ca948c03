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
