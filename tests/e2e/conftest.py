"""What the browser tests share: a JupyterLab server they start and stop, and headless Chromium.

The server runs this Python (so the kernel imports this checkout's prunekit) on
127.0.0.1 with a random port and token, and with its own config, data, runtime and
settings folders under the test's tmp_path, so nothing of the user's Jupyter setup
is read or written. It is always stopped, also when a test fails. Chromium is
Debian's /usr/bin/chromium driven by Playwright; the tests skip, saying why, when
either is missing.

Artifacts (screenshots) go to tests/e2e/artifacts/ (git-ignored).
"""
import os
import secrets
import subprocess
import sys
import time
import urllib.request

import pytest

from labtools import CHROMIUM, CHROMIUM_ARGS, free_port, install_lab_settings


@pytest.fixture
def lab_server(tmp_path):
    """``start(root, project_settings=True) -> (base_url, token)``: a JupyterLab server on ``root``.

    ``project_settings``: install jupyter/overrides.json with `make lab-settings` into the
    server's (temporary) settings folder, as `make lab` does; False: JupyterLab's defaults.
    """
    procs = []

    def start(root, project_settings=True):
        n = len(procs)
        settings = tmp_path / f"lab-settings-{n}"
        settings.mkdir()
        if project_settings:
            install_lab_settings(settings)
        port, token = free_port(), secrets.token_hex(16)
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # the kernel uses the inline backend, as a learner's would
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            env[var] = str(tmp_path / f"{var.lower()}-{n}")
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env.setdefault(var, "1")  # the kernel inherits these: one thread, as in `make test`
        log_path = tmp_path / f"lab-{n}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             f"--LabApp.app_settings_dir={settings}",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                return base, token
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def browser_page():
    """A fresh headless Chromium page, closed after the test (1400 px wide: the explorer shows at its own size)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


