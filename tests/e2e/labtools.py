"""Helpers of the browser tests: JupyterLab settings, opening and running a notebook, the news toast.

(A module of its own, not conftest.py: tests import from it, and tests/ has two conftest.py files.)
"""
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = pathlib.Path(__file__).resolve().parent / "artifacts"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
NEWS_QUESTION = "official Jupyter news"   # JupyterLab 4's first-run toast: "Would you like to get notified about ..."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_lab_settings(settings_dir):
    """Install the project's JupyterLab settings into ``settings_dir`` the way `make lab` does."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "lab-settings",
                           f"LAB_SETTINGS_DIR={settings_dir}", f"PY={sys.executable}"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def open_notebook(page, base, token, path, timeout=90):
    """Open ``path`` (relative to the server root) and wait until the page is connected to an idle kernel.

    The page's own indicator says "idle" also before it has a kernel, and Run All at
    that moment makes JupyterLab ask which kernel to start; so also wait until the
    server reports the notebook's kernel idle with a connection from the page.
    """
    page.goto(f"{base}/lab/tree/{path}?token={token}", timeout=timeout * 1000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as r:
            sessions = [x for x in json.load(r) if x.get("path", "").endswith(path) and x.get("kernel")]
        if any(x["kernel"].get("execution_state") == "idle" and x["kernel"].get("connections", 0) > 0
               for x in sessions):
            page.wait_for_timeout(1_000)
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the kernel of {path} was not idle and connected after {timeout} s: {sessions}")
        time.sleep(0.5)


def run_all_cells(page, attempts=15):
    """Run > Run All Cells, as a person would; retried until the first cell starts.

    Right after the page loads, the menu item can be disabled, or a click can land
    before the kernel connection is ready and do nothing, or (on a busy machine) make
    JupyterLab ask which kernel to start; a person would accept the proposed kernel
    (Python 3) and click again.
    """
    from playwright.sync_api import TimeoutError

    item = page.locator(".lm-Menu-item[data-command='runmenu:run-all']").first
    started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first
    select_kernel = page.locator(".jp-Dialog", has_text="Select Kernel").locator(".jp-mod-accept")
    for _ in range(attempts):
        try:
            if select_kernel.count():
                select_kernel.first.click(timeout=5_000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.keyboard.press("Escape")  # close a menu left open by the previous attempt
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=5_000)
            item.wait_for(timeout=5_000)
            if "lm-mod-disabled" not in (item.get_attribute("class") or ""):
                item.click(timeout=5_000)
                started.wait_for(timeout=10_000)
                return
        except TimeoutError:
            pass
        page.wait_for_timeout(1_000)
    pytest.fail(f"Run All Cells did not start the notebook after {attempts} attempts")


def news_question_shown(page):
    """Whether JupyterLab's first-run "get notified about official Jupyter news?" toast is on the page."""
    return page.get_by_text(NEWS_QUESTION).count() > 0
