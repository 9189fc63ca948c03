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


def interactive_plot(draw, figsize=(6, 3.5), **controls):
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
