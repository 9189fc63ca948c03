"""`make lab`'s JupyterLab settings: installed where JupyterLab reads them, and they switch the news question off.

No server and no browser here: the browser tests check the page itself
(test_notebook_sliders.py: no news toast with the settings; test_lab_smoke.py: the
toast with JupyterLab's defaults, so the check can fail).
"""
import json
import os
import subprocess
import sys

import pytest

from labtools import REPO, install_lab_settings

PLUGIN = "@jupyterlab/apputils-extension:notification"


def _effective(app_settings_dir, tmp_path):
    """The notification plugin's settings as JupyterLab's server would hand them to the page."""
    pytest.importorskip("jupyterlab")
    from jupyterlab.commands import get_app_dir
    from jupyterlab_server.settings_utils import get_settings

    user = tmp_path / "user-settings"
    user.mkdir(exist_ok=True)
    result, _ = get_settings(str(app_settings_dir), os.path.join(get_app_dir(), "schemas"), str(user),
                             schema_name=PLUGIN)
    return {k: v["default"] for k, v in result["schema"]["properties"].items()}


def test_make_lab_settings_installs_the_project_overrides(tmp_path):
    target = tmp_path / "settings"
    install_lab_settings(target)
    installed = target / "overrides.d" / "prunekit.json"
    assert json.loads(installed.read_text()) == json.loads((REPO / "jupyter" / "overrides.json").read_text())
    assert _effective(target, tmp_path)["fetchNews"] == "false"
    assert _effective(target, tmp_path)["checkForUpdates"] is False
    # Without them, JupyterLab 4 asks ("none" = ask on first run): the setting is what changes it.
    assert _effective(tmp_path / "empty", tmp_path)["fetchNews"] == "none"


def test_make_lab_settings_defaults_to_the_folder_jupyterlab_reads(tmp_path):
    """Without LAB_SETTINGS_DIR the target asks JupyterLab for its app dir (here moved by JUPYTERLAB_DIR)."""
    pytest.importorskip("jupyterlab")
    app_dir = tmp_path / "app"
    env = {**os.environ, "JUPYTERLAB_DIR": str(app_dir)}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "lab-settings", f"PY={sys.executable}"],
                          env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    code = "from jupyterlab.labapp import LabApp; print(LabApp().app_settings_dir)"
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                           check=True)
    reads = probe.stdout.strip()
    assert reads == str(app_dir / "settings")
    assert (app_dir / "settings" / "overrides.d" / "prunekit.json").is_file()
    assert _effective(reads, tmp_path)["fetchNews"] == "false"


def test_make_lab_opens_the_start_notebook():
    """`make lab` starts JupyterLab on notebooks/00_start_here.ipynb (dry run: nothing is installed or started)."""
    if not (REPO / "notebooks" / "00_start_here.ipynb").is_file():
        pytest.skip("notebooks/00_start_here.ipynb is not in the repository")
    venv = os.path.dirname(os.path.dirname(sys.executable))
    done = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "lab", f"VENV={venv}"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if "jupyter lab" in ln]
    assert lines and lines[-1].split()[-1] == "notebooks/00_start_here.ipynb", done.stdout
    assert "lab-settings" in done.stdout or "overrides.d" in done.stdout, done.stdout

