"""The course's live sliders, in a real JupyterLab in headless Chromium: drag one, see the figure change.

For each (notebook, slider description) case: copy the notebook to a temporary
folder (the repository's file is never touched), start JupyterLab there with the
project's settings (as `make lab` installs them), run all cells from the menu,
check that every code cell ran, find the ipywidgets slider whose description label
matches, drag its handle with the mouse, and check that the slider's readout and
the figure in the same cell output changed (the rendered pixels of its images /
canvases, not just their URLs). Before/after screenshots of the cell go to
tests/e2e/artifacts/. And: no first-run "news" question appeared.

PRUNEKIT_UPDATE_SCREENSHOTS=1 also writes the README's picture of the pruning
explorer (docs/img/pruning_explorer.png) from notebook 04, after the drag.
"""
import json
import os
import re
import shutil
import time

import pytest

from labtools import ARTIFACTS, REPO, news_question_shown, open_notebook, run_all_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# (notebook, slider description regex). 05 and 08 are guesses made before those notebooks
# exist: their sliders must have a description matching these (e.g. "channels", "keep ratio", "bits").
CASES = [
    ("04_weight_pruning", r"^sparsity$"),
    ("05_structured_pruning", r"channel|ratio|keep"),
    ("08_edge_quantization", r"bits?\b"),
]
README_SCREENSHOT = {"04_weight_pruning": REPO / "docs" / "img" / "pruning_explorer.png"}
RUN_TIMEOUT = 420        # seconds for Run All (notebook 04 trains several small networks)


def _code_cells(path):
    return sum(c["cell_type"] == "code" for c in json.loads(path.read_text())["cells"])


def _wait_all_ran(page, n_code, timeout):
    """Wait until no cell runs (three polls in a row); fail unless every code cell has an execution number."""
    deadline, quiet = time.monotonic() + timeout, 0
    while True:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()  # offscreen cells too
        numbered = sum(bool(re.fullmatch(r"\s*\[\d+\]:?\s*", p)) for p in prompts)
        running = any("*" in p for p in prompts)
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        quiet = quiet + 1 if idle and not running else 0
        if quiet >= 3:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"Run All did not finish in {timeout} s: {numbered} of {n_code} code cells ran")
        page.wait_for_timeout(1_000)
    if numbered != n_code:
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        pytest.fail(f"Run All stopped after {numbered} of {n_code} code cells (an error?):\n"
                    + "\n".join(t[-1500:] for t in errors.all_text_contents()))


def _slider(page, description):
    """The first ipywidgets slider whose description label matches the regex, and its cell."""
    sliders = page.locator(".jp-OutputArea-output .widget-slider")
    labels = [sliders.nth(i).locator(".widget-label").first.text_content() for i in range(sliders.count())]
    for i, label in enumerate(labels):
        if re.search(description, label.strip(), re.IGNORECASE):
            slider = sliders.nth(i)
            cell = page.locator(".jp-CodeCell").filter(has=slider).last
            return slider, cell
    pytest.fail(f"no slider with a description matching {description!r}; slider descriptions on the page: {labels}")


def _figures(cell, attempts=20):
    """Screenshots (PNG bytes) of every image / canvas in the cell's output.

    Retried when an image is replaced while being photographed (an ``interact`` output
    clears and redraws its figure on every slider value).
    """
    from playwright.sync_api import Error

    figs = cell.locator(".jp-OutputArea-output img, .jp-OutputArea-output canvas")
    for _ in range(attempts):
        try:
            return [figs.nth(i).screenshot(timeout=10_000) for i in range(figs.count()) if figs.nth(i).is_visible()]
        except Error:
            cell.page.wait_for_timeout(500)
    pytest.fail(f"the figures of the cell kept changing for {attempts} attempts to photograph them")


def _drag(page, slider):
    """Drag the slider's handle by a third of its track, towards the side with more room; returns +1 or -1."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    track = slider.locator(".slider").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    room_right = track["x"] + track["width"] - x
    dx = track["width"] / 3 * (1 if room_right > track["width"] / 2 else -1)
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x + dx * k / 10, y)
    page.mouse.up()
    return 1 if dx > 0 else -1


def _number(readout):
    """The first number in a slider's readout ("95%", "4", "0.50")."""
    found = re.search(r"-?\d+(?:\.\d+)?", readout)
    assert found, f"no number in the slider readout {readout!r}"
    return float(found.group())


@pytest.mark.parametrize("notebook, description", CASES, ids=[c[0] for c in CASES])
def test_slider_moves_readout_and_figure(notebook, description, lab_server, browser_page, tmp_path):
    source = REPO / "notebooks" / f"{notebook}.ipynb"
    if not source.is_file():
        pytest.skip(f"notebooks/{notebook}.ipynb is not in the repository yet; this case runs once it lands "
                    f"(it needs a slider whose description matches {description!r})")
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    base, token = lab_server(root)
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        open_notebook(page, base, token, source.name)
        run_all_cells(page)
        _wait_all_ran(page, _code_cells(source), RUN_TIMEOUT)
        assert page.locator("text=Error displaying widget").count() == 0

        slider, cell = _slider(page, description)
        slider.scroll_into_view_if_needed()
        readout = slider.locator(".widget-readout").first
        before_text = readout.text_content().strip()  # not inner_text: empty while the browser skips offscreen content
        before_figs = _figures(cell)
        assert before_figs, f"no figure (img or canvas) in the output of the cell holding the {description!r} slider"
        cell.screenshot(path=str(ARTIFACTS / f"{notebook}_before.png"))

        direction = _drag(page, slider)
        deadline = time.monotonic() + 60
        while True:                      # the kernel recomputes and sends a new image
            after_text = readout.text_content().strip()
            after_figs = _figures(cell)
            if after_text != before_text and after_figs != before_figs:
                break
            if time.monotonic() > deadline:
                break
            page.wait_for_timeout(500)
        settle = time.monotonic() + 30
        while time.monotonic() < settle:  # a drag can send several values: wait for the last redraw
            page.wait_for_timeout(1_000)
            now = (readout.text_content().strip(), _figures(cell))
            if now == (after_text, after_figs):
                break
            after_text, after_figs = now
        cell.screenshot(path=str(ARTIFACTS / f"{notebook}_after.png"))
        assert after_text != before_text, f"the readout stayed {before_text!r} after dragging the slider"
        assert (_number(after_text) - _number(before_text)) * direction > 0, \
            f"dragged {'right' if direction > 0 else 'left'}, but the readout went {before_text!r} -> {after_text!r}"
        assert after_figs != before_figs, "the figure did not change after dragging the slider"
        assert not news_question_shown(page), "JupyterLab asked about news despite the project's settings"
        if notebook in README_SCREENSHOT and os.environ.get("PRUNEKIT_UPDATE_SCREENSHOTS") == "1":
            README_SCREENSHOT[notebook].parent.mkdir(parents=True, exist_ok=True)
            cell.locator(".jp-OutputArea").first.screenshot(path=str(README_SCREENSHOT[notebook]))
    except BaseException:  # also pytest.fail
        page.screenshot(path=str(ARTIFACTS / f"{notebook}_failure.png"), full_page=True)
        raise
