"""docs/api.md is generated from the docstrings and must match them (so it cannot go stale)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current_and_every_public_name_has_a_docstring():
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr + run.stdout
