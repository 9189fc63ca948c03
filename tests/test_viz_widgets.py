"""Tests of the notebook helpers in prunekit.viz and prunekit.widgets: what is drawn is what was given."""
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from prunekit import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_import_prunekit_loads_neither_matplotlib_nor_ipywidgets():
    code = ("import sys, prunekit; "
            "bad = [m for m in ('matplotlib', 'ipywidgets', 'IPython') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lazy_attributes_are_the_modules():
    import prunekit

    assert prunekit.viz is viz
    assert prunekit.widgets.__name__ == "prunekit.widgets"
    assert callable(prunekit.widgets.interactive_plot)


# ------------------------------------------------------------------ plot_curves
def test_plot_curves_draws_each_curve_with_its_data_and_labels():
    y = np.array([3.0, 2.0, 1.5, 1.2])
    x2 = np.array([0.0, 2.0, 4.0])
    ax = viz.plot_curves({"a": y, "b": (x2, [5.0, 4.0, 3.0])}, xlabel="epoch", ylabel="MSE")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    np.testing.assert_array_equal(lines[0].get_xdata(), np.arange(4))
    np.testing.assert_array_equal(lines[0].get_ydata(), y)
    np.testing.assert_array_equal(lines[1].get_xdata(), x2)
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "MSE"
    assert ax.get_legend() is not None


def test_plot_curves_smooth_is_a_trailing_moving_average():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(50)
    ax = viz.plot_curves({"noisy": y}, smooth=5)
    line = ax.get_lines()[0]
    reference = np.convolve(y, np.ones(5) / 5, mode="valid")
    np.testing.assert_allclose(line.get_ydata(), reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(4, 50))


def test_plot_curves_log_scale_leaves_out_nonpositive_and_nonfinite_points():
    y = np.array([1.0, 10.0, 100.0, np.inf, np.nan, 0.0])
    ax = viz.plot_curves({"diverging": y}, logy=True)
    assert ax.get_yscale() == "log"
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [0, 1, 2])


def test_plot_curves_draws_into_a_given_axes():
    fig, ax = plt.subplots()
    assert viz.plot_curves({"a": [1, 2]}, ax=ax) is ax
    assert len(ax.get_lines()) == 1


@pytest.mark.parametrize("curves, exc", [({}, TypeError), ([1, 2], TypeError),
                                         ({"a": ([0, 1, 2], [1, 2])}, ValueError),
                                         ({"a": np.ones((2, 2))}, ValueError)])
def test_plot_curves_rejects_bad_input_naming_it(curves, exc):
    with pytest.raises(exc, match="curves"):
        viz.plot_curves(curves)


# ----------------------------------------------------------------- loss_contour
def _quadratic(W1, W2):
    return (W1 - 1.0) ** 2 + 10.0 * (W2 + 2.0) ** 2


def test_loss_contour_evaluates_on_the_grid_and_draws_paths_where_given():
    calls = []

    def loss(W1, W2):
        calls.append((W1.copy(), W2.copy()))
        return _quadratic(W1, W2)

    path = np.array([[3.0, 0.0], [2.0, -1.0], [1.0, -2.0]])
    ax = viz.loss_contour(loss, center=(1.0, -2.0), span=(3.0, 2.5), paths={"GD": path}, n=21,
                          xlabel="bmi weight", ylabel="bp weight")
    assert len(calls) == 1
    W1, W2 = calls[0]
    assert W1.shape == (21, 21)
    np.testing.assert_allclose(W1[0, [0, -1]], [-2.0, 4.0])
    np.testing.assert_allclose(W2[[0, -1], 0], [-4.5, 0.5])
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["GD"].get_xdata(), path[:, 0])
    np.testing.assert_array_equal(lines["GD"].get_ydata(), path[:, 1])
    np.testing.assert_array_equal(lines["minimum"].get_xydata(), [[1.0, -2.0]])
    assert ax.get_xlim() == (-2.0, 4.0) and ax.get_ylim() == (-4.5, 0.5)
    assert ax.get_xlabel() == "bmi weight" and ax.get_ylabel() == "bp weight"


def test_loss_contour_log_levels_are_geometric_above_the_minimum():
    ax = viz.loss_contour(_quadratic, center=(1.0, -2.0), span=2.0, n=41, levels=9)
    levels = np.asarray(ax.collections[0].levels)
    zmin = _quadratic(*np.meshgrid(np.linspace(-1, 3, 41), np.linspace(-4, 0, 41))).min()
    gaps = levels - zmin
    assert np.all(gaps > 0)
    np.testing.assert_allclose(gaps[1:] / gaps[:-1], (gaps[-1] / gaps[0]) ** (1 / 8), rtol=1e-9)


def test_loss_contour_rejects_a_loss_of_the_wrong_shape_and_bad_span():
    with pytest.raises(ValueError, match="loss must be"):
        viz.loss_contour(lambda a, b: a.sum(), center=(0, 0), span=1.0)
    with pytest.raises(ValueError, match="span must be"):
        viz.loss_contour(_quadratic, center=(0, 0), span=0.0)
    with pytest.raises(ValueError, match="center must be"):
        viz.loss_contour(_quadratic, center=(0, 0, 0), span=1.0)
    with pytest.raises(ValueError, match="paths"):
        viz.loss_contour(_quadratic, center=(0, 0), span=1.0, paths={"p": np.zeros(3)})


# ------------------------------------------------------------------ show_images
def test_show_images_titles_each_panel_and_marks_mistakes_in_red():
    rng = np.random.default_rng(1)
    images = rng.random((5, 16))  # flattened 4x4
    labels, predictions = np.array([0, 1, 2, 1, 0]), np.array([0, 2, 2, 1, 1])
    fig = viz.show_images(images, labels, predictions, class_names=["cat", "dog", "fox"], ncols=3)
    axes = fig.axes
    assert len(axes) == 6  # 2 rows of 3, the last panel empty
    shown = [ax for ax in axes if ax.images]
    assert len(shown) == 5
    np.testing.assert_array_equal(shown[3].images[0].get_array(), images[3].reshape(4, 4))
    titles = [ax.get_title() for ax in shown]
    assert titles[1] == "dog\n-> fox" and titles[0] == "cat\n-> cat"
    red = mcolors.to_rgba("tab:red")
    wrong = [mcolors.to_rgba(ax.title.get_color()) == red for ax in shown]
    assert wrong == [False, True, False, False, True]


def test_show_images_accepts_nchw_and_labels_only():
    images = np.zeros((3, 1, 8, 8))
    fig = viz.show_images(images, labels=[7, 8, 9])
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["7", "8", "9"]
    assert shown[0].images[0].get_array().shape == (8, 8)


def test_show_images_rejects_non_square_flat_images_and_length_mismatch():
    with pytest.raises(ValueError, match="image_shape"):
        viz.show_images(np.zeros((2, 10)))
    assert len([ax for ax in viz.show_images(np.zeros((2, 10)), image_shape=(2, 5)).axes if ax.images]) == 2
    with pytest.raises(ValueError, match="labels"):
        viz.show_images(np.zeros((2, 4, 4)), labels=[1])


# --------------------------------------------------------------- interactive_plot
ipywidgets = pytest.importorskip("ipywidgets")


def test_interactive_plot_draws_once_then_on_every_change():
    from prunekit.widgets import interactive_plot

    calls = []

    def draw(ax, lr, steps):
        calls.append((lr, steps))
        ax.plot(np.arange(steps) * lr)
        return lr * steps

    lr = ipywidgets.FloatLogSlider(value=0.1, min=-3, max=0)
    steps = ipywidgets.IntSlider(value=10, min=1, max=100)
    box = interactive_plot(draw, lr=lr, steps=steps)
    assert calls == [(0.1, 10)]
    assert box.result == pytest.approx(1.0)
    assert isinstance(box, ipywidgets.VBox)
    assert box.children[:2] == (lr, steps) and isinstance(box.children[2], ipywidgets.Output)

    steps.value = 20  # what a reader does with the mouse
    assert calls[-1] == (0.1, 20) and box.result == pytest.approx(2.0)

    assert box.redraw(lr=0.01, steps=5) == pytest.approx(0.05)
    assert calls[-1] == (0.01, 5)
    assert len(calls) == 3  # redraw sets both values and draws once
    assert lr.value == pytest.approx(0.01)
    box.redraw()
    assert calls[-1] == (0.01, 5)


def test_interactive_plot_gives_draw_a_fresh_axes_each_time():
    from prunekit.widgets import interactive_plot

    axes = []
    box = interactive_plot(lambda ax, k: axes.append(ax) or len(ax.get_lines()),
                           k=ipywidgets.IntSlider(value=1))
    box.redraw(k=2)
    assert len(axes) == 2 and axes[0] is not axes[1]
    assert box.result == 0


def test_interactive_plot_rejects_bad_arguments():
    from prunekit.widgets import interactive_plot

    with pytest.raises(TypeError, match="draw must be"):
        interactive_plot(42, lr=ipywidgets.FloatSlider())
    with pytest.raises(TypeError, match="controls must be"):
        interactive_plot(lambda ax: None)
    with pytest.raises(TypeError, match="lr must be"):
        interactive_plot(lambda ax, lr: None, lr=0.1)
    box = interactive_plot(lambda ax, lr: lr, lr=ipywidgets.FloatSlider(value=0.5))
    with pytest.raises(ValueError, match="values must be"):
        box.redraw(momentum=0.9)
