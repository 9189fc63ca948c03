"""End to end, as a learner sees it: JupyterLab from this environment, in a real browser.

Starts `jupyter lab` on 127.0.0.1 with a throwaway notebook, opens it in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright), runs all cells from
the menu and checks what appears on the page: prunekit imported with this
environment's Python, an ipywidgets slider rendered by the front end, and an
inline matplotlib figure. This server runs with JupyterLab's own defaults (not the
project's settings), so the first-run news question must show up: that proves the
check in test_notebook_sliders.py (no such question with `make lab`'s settings)
can fail. Skipped when Chromium or Playwright is missing.
"""
import json
import os
import sys

import pytest

from labtools import ARTIFACTS, news_question_shown, open_notebook, run_all_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import sys\nfrom prunekit.data import load_digits\n(x, y), _ = load_digits()\n"
    "print('PK-OK', x.shape, sys.executable)",
    "import ipywidgets as widgets\nwidgets.IntSlider(value=7, min=0, max=10, description='sparsity')",
    "import matplotlib.pyplot as plt\nplt.plot([0, 1, 4, 9])\nplt.xlabel('step')\nplt.show()",
]


def _notebook(cells):
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
    }


def test_course_notebook_runs_in_jupyterlab_in_a_browser(lab_server, browser_page, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "demo.ipynb").write_text(json.dumps(_notebook(CELLS)))
    base, token = lab_server(root, project_settings=False)
    page = browser_page
    try:
        open_notebook(page, base, token, "demo.ipynb")
        run_all_cells(page)

        text = page.locator(".jp-OutputArea-output", has_text="PK-OK")
        text.wait_for(timeout=90_000)
        printed = text.inner_text()
        assert "(1438, 64)" in printed
        assert sys.executable in printed or os.path.realpath(sys.executable) in printed, printed
        slider = page.locator(".jp-OutputArea-output .widget-slider")
        slider.first.wait_for(timeout=60_000)
        assert "sparsity" in page.locator(".jp-OutputArea-output .widget-label").first.inner_text()
        page.locator(".jp-OutputArea-output img").first.wait_for(timeout=60_000)  # inline figure
        assert page.locator("text=Error displaying widget").count() == 0
        # JupyterLab's defaults ask about news on first run (the project's settings switch it off).
        page.get_by_text("official Jupyter news").first.wait_for(timeout=30_000)
        assert news_question_shown(page)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "smoke_jupyterlab.png"), full_page=True)  # for a human to look at
