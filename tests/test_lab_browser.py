"""End to end, as a learner sees it: JupyterLab from this environment, in a real browser.

Starts `jupyter lab` on 127.0.0.1 with a throwaway notebook, opens it in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright), runs all cells from
the menu and checks what appears on the page: prunekit imported with this
environment's Python, an ipywidgets slider rendered by the front end, and an
inline matplotlib figure. Skipped when Chromium or Playwright is missing.
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab_server(tmp_path):
    """A JupyterLab server from this Python, with its own config and data dirs in tmp_path."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "demo.ipynb").write_text(json.dumps(_notebook(CELLS)))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # let the kernel use the inline backend, as a learner's would
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_all_cells(page, timeout_error, attempts=15):
    """Run > Run All Cells, as a person would; retried until the first cell starts.

    Right after the page loads, the menu item can be disabled, or a click can land
    before the kernel connection is ready and do nothing; a person would click again.
    """
    item = page.locator(".lm-Menu-item[data-command='runmenu:run-all']").first
    started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first
    for _ in range(attempts):
        try:
            page.keyboard.press("Escape")  # close a menu left open by the previous attempt
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=5_000)
            item.wait_for(timeout=5_000)
            if "lm-mod-disabled" not in (item.get_attribute("class") or ""):
                item.click(timeout=5_000)
                started.wait_for(timeout=10_000)
                return
        except timeout_error:
            pass
        page.wait_for_timeout(1_000)
    pytest.fail(f"Run All Cells did not start the notebook after {attempts} attempts")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_course_notebook_runs_in_jupyterlab_in_a_browser(lab_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token = lab_server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(f"{base}/lab/tree/demo.ipynb?token={token}", timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            _run_all_cells(page, sync_api.TimeoutError)

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
        finally:
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)  # for a human to look at
            browser.close()
