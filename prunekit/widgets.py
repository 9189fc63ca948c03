"""ipywidgets explorers used by the course notebooks: move a slider, see the figure change.

Every explorer also works without a browser: it draws once with the controls'
initial values as soon as it is made, so a notebook run top to bottom by a test
(nbval) shows the figure and can check what was computed. ipywidgets,
IPython and matplotlib are imported inside the functions only: ``import
prunekit`` never loads them.

Functions here are self-contained (no shared state), so new explorers can be
added without touching the existing ones.
"""
from __future__ import annotations

from ._validate import fail

__all__ = ["interactive_plot"]


def interactive_plot(draw, *, figsize=(6, 3.5), **controls):
    """Controls (sliders, dropdowns, ...) above a figure that ``draw`` redraws when one moves.

    ``draw(ax, **values)`` gets a fresh matplotlib Axes and the current value of
    every control, by the keyword it was passed under::

        slider = ipywidgets.FloatLogSlider(value=0.1, min=-3, max=0, description="lr")
        box = interactive_plot(lambda ax, lr: ax.plot(run(lr)), lr=slider)
        box   # display it: moving the slider calls draw(ax, lr=<new value>)

    ``draw`` is called once right away. Returns an ``ipywidgets.VBox`` (the
    controls, then an ``Output`` holding the figure) with two extra attributes:
    ``box.result``, what the last call of ``draw`` returned, and
    ``box.redraw(**values)``, which sets the given controls (if any) and draws
    again, so code and tests can do what a reader does with the mouse.
    """
    import ipywidgets
    from IPython.display import display
    from matplotlib.figure import Figure

    if not callable(draw):
        fail("draw", "a callable draw(ax, **values)", draw, TypeError)
    if not controls:
        fail("controls", "at least one control passed by keyword, e.g. lr=FloatLogSlider(...)", "none", TypeError)
    for key, c in controls.items():
        if not isinstance(c, ipywidgets.ValueWidget):
            fail(key, "an ipywidgets control with a value (a slider, dropdown, checkbox, ...)",
                 type(c).__name__, TypeError)
    out = ipywidgets.Output()
    box = ipywidgets.VBox([*controls.values(), out])
    box.result = None

    def update(change=None):
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.subplots()
        box.result = draw(ax, **{key: c.value for key, c in controls.items()})
        with out:
            out.clear_output(wait=True)
            display(fig)
        return box.result

    def redraw(**values):
        unknown = sorted(set(values) - set(controls))
        if unknown:
            fail("values", f"keywords among the controls {sorted(controls)}", unknown)
        for c in controls.values():  # set every value first, then draw once
            c.unobserve(update, names="value")
        try:
            for key, v in values.items():
                controls[key].value = v
        finally:
            for c in controls.values():
                c.observe(update, names="value")
        return update()

    for c in controls.values():
        c.observe(update, names="value")
    box.redraw = redraw
    update()
    return box


# ---------------------------------------------------------------------------------------------
# Pruning explorer (notebook 04): a sparsity slider that re-prunes a trained model live
# ---------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402  (numpy is imported by prunekit anyway; the GUI libraries stay lazy)

__all__ += ["PruningExplorer", "pruning_explorer"]

EXPLORER_SCORES = ("magnitude", "gradient", "taylor", "random")
EXPLORER_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


class PruningExplorer:
    """Prune a trained model to any sparsity in a few milliseconds, and see what it costs.

    The expensive part of pruning is scoring; the cheap part is thresholding. So the
    explorer scores a *copy* of the model once per score (``compute_scores`` on
    ``score_data``), and from then on an update only

    1. keeps the ``n - round(sparsity * n)`` highest-scored weights, with the thresholding
       :func:`prunekit.pruning.prune` uses (``ranking.layer_masks`` / ``ranking.global_masks``:
       the same counting and tie-breaking),
    2. writes ``dense weights * mask`` into the copy, and
    3. evaluates the copy on a fixed test subset (the first ``n_eval`` samples of ``data``).

    ``data`` and ``score_data`` take any data form (a DataLoader, an ``(x, y)`` pair, a
    dataset, an iterable of batches); a loader's batches are taken in its order.

    The user's model is never modified. ``scope="layer"`` ranks each layer on its own,
    ``"global"`` all weights together. :meth:`update` works without a browser (tests call
    it); displaying the explorer in a notebook shows a slider, a score selector, a
    layer-wise/global toggle and three panels: test accuracy against sparsity (curve
    precomputed on ``grid``, random pruning in grey, the current point marked), the
    histogram of one layer's weights with the pruned ones in red (and the cut for
    magnitude), and that layer's mask as an image.

    Timing: ``last_update_seconds`` is the wall time of the last update (prune +
    evaluate, plus redraw when the widget is shown); ``last_timing`` splits it up.
    """

    def __init__(self, model, data, *, score_data=None, scores=EXPLORER_SCORES, sparsity=0.5, score="magnitude",
                 scope="layer", n_eval=2000, grid=EXPLORER_GRID, layer=None, seed=0,
                 loss="cross_entropy", continuous_update=False):
        import copy

        from . import nn
        from ._validate import check_int, check_option
        from .pruning._targets import select_weights

        if not isinstance(model, nn.Module):
            fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
        x, y = self._pair("data", data)
        check_int("n_eval", n_eval, 1)
        if score_data is not None:
            score_data = self._pair("score_data", score_data)
        if isinstance(scores, str) or not scores:
            fail("scores", "a non-empty list of score names", scores, TypeError)
        self.scores = tuple(scores)
        from .pruning import available_scores

        for s in self.scores:
            check_option("scores", s, tuple(available_scores()))
        self.eval_data = (x[:n_eval], y[:n_eval])
        self.score_data = self.eval_data if score_data is None else score_data
        self.loss, self.seed = loss, seed
        self.grid = tuple(float(self._check_sparsity(s, "grid")) for s in grid)
        self.continuous_update = continuous_update
        self.model = copy.deepcopy(model)          # the user's model stays as it is
        for p in self.model.parameters():          # keep any zeros, forget masks: we set our own
            if p.mask is not None:
                p.data *= p.mask
                p.mask = None
            p.grad = None
        self.params = select_weights(self.model)
        self.dense = {n: p.data.copy() for n, p in self.params.items()}
        names = list(self.params)
        if layer is None:
            layer = names[0]
        elif not isinstance(layer, str) or (layer not in names and f"{layer}.weight" not in names):
            fail("layer", f"one of the prunable weights {names}", layer)
        self.layer = layer if layer in names else f"{layer}.weight"
        self._scores, self._curves = {}, {}
        self._ui = None
        self._syncing = False       # True while update() moves the controls itself
        self.last_update_seconds = None
        self.last_timing = {}
        from .train import evaluate

        self.dense_metrics = evaluate(self.model, self.eval_data, loss=loss)
        self.state = {"sparsity": self._check_sparsity(sparsity), "score": check_option("score", score, self.scores),
                      "scope": check_option("scope", scope, ("layer", "global"))}
        self.result = self.update()

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _pair(name, data):
        from ._glue import as_arrays

        x, y = as_arrays(data, name)
        if len(x) == 0:
            fail(name, "data with at least one sample", "no samples")
        return x, y

    @staticmethod
    def _check_sparsity(s, name="sparsity"):
        from ._validate import check_number

        return float(check_number(name, s, 0, 1))

    # ------------------------------------------------------------------ precomputation
    def scores_for(self, score):
        """Scores of the dense weights, computed once per score and cached."""
        if score not in self._scores:
            from .pruning import compute_scores

            for n, p in self.params.items():      # score the dense model, whatever is shown now
                p.data[...] = self.dense[n]
            self._scores[score] = compute_scores(self.model, score, data=self.score_data, loss=self.loss,
                                                 seed=self.seed)
        return self._scores[score]

    def masks_for(self, sparsity, score, scope):
        """``{name: bool mask}`` removing ``round(sparsity * n)`` weights, as ``prune`` on the dense model.

        The thresholding is :mod:`prunekit.pruning.ranking`'s, the one ``prune`` uses.
        """
        from .pruning import ranking

        s = self.scores_for(score)
        if scope == "layer":
            return ranking.layer_masks(s, sparsity)
        return ranking.global_masks(s, sparsity)

    def _apply(self, masks):
        for n, p in self.params.items():
            np.multiply(self.dense[n], masks[n], out=p.data)

    def _evaluate(self):
        from .train import evaluate

        return evaluate(self.model, self.eval_data, loss=self.loss)

    def curve(self, score, scope):
        """``(grid, metrics)``: the model pruned to each sparsity of ``grid`` and evaluated (cached)."""
        key = (score, scope)
        if key not in self._curves:
            values = []
            for s in self.grid:
                self._apply(self.masks_for(s, score, scope))
                values.append(self._evaluate())
            self._curves[key] = (np.array(self.grid), values)
            self._apply(self.masks)  # back to what is shown
        return self._curves[key]

    # ------------------------------------------------------------------ the update
    def update(self, sparsity=None, score=None, scope=None):
        """Prune the copy to ``sparsity`` with ``score`` and ``scope`` (None: keep the current one).

        Returns a dict: ``sparsity`` (the target), ``reached`` (the fraction of weights
        actually removed), ``layers`` (per-layer sparsity), ``accuracy`` and ``loss``
        on the test subset, ``seconds`` (wall time of this update). Redraws the widget
        if it is shown.
        """
        import time

        from ._validate import check_option

        t0 = time.perf_counter()
        if sparsity is not None:
            self.state["sparsity"] = self._check_sparsity(sparsity)
        if score is not None:
            self.state["score"] = check_option("score", score, self.scores)
        if scope is not None:
            self.state["scope"] = check_option("scope", scope, ("layer", "global"))
        s, sc, scope = self.state["sparsity"], self.state["score"], self.state["scope"]
        fresh = sc not in self._scores
        self.masks = self.masks_for(s, sc, scope)
        self._apply(self.masks)
        t1 = time.perf_counter()
        metrics = self._evaluate()
        t2 = time.perf_counter()
        pruned = {n: 1.0 - float(m.mean()) for n, m in self.masks.items()}
        total = sum(self.params[n].size * v for n, v in pruned.items()) / sum(p.size for p in self.params.values())
        self.result = {"sparsity": s, "score": sc, "scope": scope, "reached": total, "layers": pruned,
                       **metrics}
        self.last_timing = {"prune": t1 - t0, "evaluate": t2 - t1, "draw": 0.0, "first_use": fresh}
        if self._ui is not None:
            self._sync_controls()
            self._draw()
            self.last_timing["draw"] = time.perf_counter() - t2
        self.last_update_seconds = time.perf_counter() - t0
        self.result["seconds"] = self.last_update_seconds
        if self._ui is not None:
            metric = "accuracy" if "accuracy" in self.result else "loss"
            self._ui["status"].value = (
                f"sparsity {total:.1%} &middot; test {metric} {self.result[metric]:.4f} "
                f"(dense {self.dense_metrics[metric]:.4f}) &middot; update {1000 * self.last_update_seconds:.0f} ms")
        return self.result

    # ------------------------------------------------------------------ the picture
    def figure(self):
        """A matplotlib Figure of the current state (three panels), fully drawn, e.g. to save or show."""
        self._build()
        for a in self._dynamic:        # a static figure draws everything
            a.set_animated(False)
        self._built_for = None         # the next widget redraw rebuilds its background
        return self._fig

    def _build(self):
        """Draw the parts that change only with the score or scope; keep handles on the rest.

        A slider move then redraws only the "dynamic" artists (the marker, the kept
        histogram, the cut, the mask image and the titles) over a saved background
        (blitting), which is several times faster than drawing the whole figure.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from . import viz

        if getattr(self, "_fig", None) is None:
            self._fig = Figure(figsize=(13, 3.8), dpi=80, layout="constrained")
            FigureCanvasAgg(self._fig)
            self._axes = self._fig.subplots(1, 3, width_ratios=[1.1, 1, 1.2])
        for ax in self._axes:
            ax.clear()
        ax_curve, ax_hist, ax_mask = self._axes
        sc, scope = self.state["score"], self.state["scope"]
        metric = "accuracy" if "accuracy" in self.result else "loss"
        curves, styles = {}, {}
        if sc != "random" and "random" in self.scores:
            g, vals = self.curve("random", scope)
            curves["random"] = (g, [v[metric] for v in vals])
            styles["random"] = {"color": "gray", "linestyle": ":", "marker": None}
        g, vals = self.curve(sc, scope)
        curves[sc] = (g, [v[metric] for v in vals])
        styles[sc] = {"color": "tab:blue"}
        viz.plot_sparsity_curves(curves, ax=ax_curve, baseline=self.dense_metrics[metric],
                                 ylabel=f"test {metric} ({len(self.eval_data[0])} samples)", styles=styles)
        if metric == "accuracy":
            ax_curve.set_ylim(0, 1)
        ax_curve.set_xlim(0, 100)
        marker, = ax_curve.plot([], [], marker="o", markersize=11, color="tab:red", linestyle="none", zorder=5)
        w = self.dense[self.layer]
        viz.plot_weight_histogram(w, np.zeros(w.shape), ax=ax_hist, title="")  # all red: the dense histogram
        self._edges = np.histogram_bin_edges(w.reshape(-1), bins=80)
        kept = ax_hist.stairs(np.zeros(len(self._edges) - 1), self._edges, fill=True, color="tab:blue")
        cuts = [ax_hist.axvline(0, color="black", linestyle="--", linewidth=1) for _ in range(2)]
        ax_hist.legend(["pruned", "kept"], fontsize="small", loc="upper right")
        viz.plot_mask(self.masks[self.layer], ax=ax_mask, title="")
        image = ax_mask.images[0]
        self._handles = {"marker": marker, "kept": kept, "cuts": cuts, "image": image,
                         "titles": [ax.title for ax in self._axes]}
        self._dynamic = [marker, kept, *cuts, image, *self._handles["titles"]]
        self._built_for = (sc, scope)
        self._refresh_artists()

    def _refresh_artists(self):
        """Put the current state into the dynamic artists (no drawing)."""
        h, r = self._handles, self.result
        metric = "accuracy" if "accuracy" in r else "loss"
        h["marker"].set_data([100 * r["reached"]], [r[metric]])
        w, m = self.dense[self.layer].reshape(-1), self.masks[self.layer]
        h["kept"].set_data(np.histogram(w[m.reshape(-1)], bins=self._edges)[0], self._edges)
        magnitude_cut = self.state["score"] == "magnitude" and not m.all()
        cut = float(np.abs(w[~m.reshape(-1)]).max()) if magnitude_cut else 0.0
        for line, x in zip(h["cuts"], (-cut, cut)):
            line.set_xdata([x, x])
            line.set_visible(magnitude_cut)
        h["image"].set_data(m.astype(np.float32))
        scope = "layer-wise" if self.state["scope"] == "layer" else "global"
        title = h["titles"]
        title[0].set_text(f"{self.state['score']} score, {scope}\n"
                          f"test {metric} {r[metric]:.3f} at {r['reached']:.1%} sparsity")
        title[1].set_text(f"weights of layer {self.layer}\n{1 - m.mean():.1%} pruned"
                          + (f", all with |w| <= {cut:.3g}" if magnitude_cut else ""))
        title[2].set_text(f"mask of layer {self.layer} {tuple(m.shape)}\ndark = kept, white = pruned")

    def _render_png(self):
        """The current state as PNG bytes: a full draw after a score/scope change, else a blit."""
        import io

        from PIL import Image

        if getattr(self, "_built_for", None) != (self.state["score"], self.state["scope"]):
            self._build()
            canvas = self._fig.canvas
            for a in self._dynamic:
                a.set_animated(True)
            canvas.draw()                                   # everything but the dynamic artists
            self._background = canvas.copy_from_bbox(self._fig.bbox)
        else:
            self._refresh_artists()
            canvas = self._fig.canvas
            canvas.restore_region(self._background)
        for a in self._dynamic:
            if a.get_visible():
                self._fig.draw_artist(a)
        buf = io.BytesIO()
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def _draw(self):
        self._ui["image"].value = self._render_png()

    # ------------------------------------------------------------------ the widget
    def _sync_controls(self):
        """Show the current state on the controls without triggering another update."""
        self._syncing = True
        try:
            for key in ("sparsity", "score", "scope"):
                if self._ui[key].value != self.state[key]:
                    self._ui[key].value = self.state[key]
        finally:
            self._syncing = False

    def _on_control(self, key, value):
        if not self._syncing:
            self.update(**{key: value})

    @property
    def widget(self):
        """The ipywidgets box (built on first use): controls, a status line and the figure."""
        if self._ui is None:
            import ipywidgets

            slider = ipywidgets.FloatSlider(value=self.state["sparsity"], min=0.0, max=0.99, step=0.01,
                                            description="sparsity", readout_format=".0%",
                                            continuous_update=self.continuous_update)
            score = ipywidgets.Dropdown(options=list(self.scores), value=self.state["score"], description="score")
            scope = ipywidgets.ToggleButtons(options=[("layer-wise", "layer"), ("global", "global")],
                                             value=self.state["scope"], description="scope")
            status = ipywidgets.HTML()
            image = ipywidgets.Image(format="png")
            self._ui = {"sparsity": slider, "score": score, "scope": scope, "status": status, "image": image}
            for key, control in (("sparsity", slider), ("score", score), ("scope", scope)):
                control.observe(lambda change, key=key: self._on_control(key, change["new"]), names="value")
            self._ui["box"] = ipywidgets.VBox([ipywidgets.HBox([slider, score]), scope, status, image])
            self.update()  # draw once with the current values
        return self._ui["box"]

    def set(self, **values):
        """Move the controls as a reader would (sparsity=, score=, scope=) and return the result."""
        unknown = sorted(set(values) - {"sparsity", "score", "scope"})
        if unknown:
            fail("values", "keywords among sparsity, score, scope", unknown)
        if self._ui is not None:
            self._syncing = True      # move every control first, then update (and draw) once
            try:
                for key, v in values.items():
                    self._ui[key].value = v
            finally:
                self._syncing = False
        return self.update(**values)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def __repr__(self):
        r = self.result
        metric = "accuracy" if "accuracy" in r else "loss"
        return (f"PruningExplorer({self.state['score']}, {self.state['scope']}, sparsity {r['reached']:.1%}: "
                f"test {metric} {r[metric]:.4f}, update {1000 * (self.last_update_seconds or 0):.1f} ms)")


def pruning_explorer(model, data, *, score_data=None, **options):
    """A :class:`PruningExplorer` for ``model`` evaluated on ``data`` (any data form); display it.

    ``score_data`` (default: the test subset) feeds the data-driven scores (gradient,
    Taylor); pass a few hundred training samples. Other options: ``scores``,
    ``sparsity``, ``score``, ``scope``, ``n_eval``, ``grid``, ``layer``, ``seed``, ``loss``,
    ``continuous_update``. Example::

        explorer = pk.widgets.pruning_explorer(model, (x_test, y_test), score_data=(x[:1000], y[:1000]))
        explorer                         # the slider, in a notebook
        explorer.update(0.9, score="taylor", scope="global")["accuracy"]
    """
    return PruningExplorer(model, data, score_data=score_data, **options)
