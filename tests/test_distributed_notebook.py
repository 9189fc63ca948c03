"""Notebook 07's exercise checks accept a reference solution, reject wrong ones, and wait
politely for an unanswered exercise (the notebook itself runs under nbval)."""
import json
from pathlib import Path

import numpy as np
import pytest

from prunekit import distributed as dist

NB = Path(__file__).resolve().parents[1] / "notebooks" / "07_distributed_training.ipynb"


@pytest.fixture(scope="module")
def checks():
    cells = json.loads(NB.read_text())["cells"]
    [src] = ["".join(c["source"]) for c in cells
             if c["cell_type"] == "code" and "".join(c["source"]).startswith("# Checks for the exercises")]
    ns = {"np": np, "dist": dist}
    exec(compile(src, "checks", "exec"), ns)
    return ns


def ring_time(n, nbytes, latency_s, bandwidth_Bps):
    return 0.0 if n == 1 else 2 * (n - 1) * (latency_s + nbytes / (n * bandwidth_Bps))


def shards(n_samples, speeds):
    s = np.asarray(speeds, float)
    exact = n_samples * s / s.sum()
    sizes = np.floor(exact).astype(int)
    sizes[np.argsort(-(exact - sizes), kind="stable")[:n_samples - sizes.sum()]] += 1
    return sizes


def ef_topk(g, residual, k):
    corrected = g + residual
    keep = np.argsort(np.abs(corrected), kind="stable")[len(g) - k:]
    sent = np.zeros_like(corrected)
    sent[keep] = corrected[keep]
    return sent, corrected - sent


def test_checks_accept_the_reference_solutions(checks):
    assert checks["check_ring_time"](ring_time) is True
    assert checks["check_shards"](shards) is True
    assert checks["check_ef_topk"](ef_topk) is True


def test_checks_reject_wrong_solutions(checks):
    with pytest.raises(AssertionError, match="ring_time"):                    # forgot the 2 (reduce-scatter only)
        checks["check_ring_time"](lambda n, b, a, bw: 0.0 if n == 1 else (n - 1) * (a + b / (n * bw)))
    with pytest.raises(AssertionError, match="adds up to"):                   # plain rounding loses samples
        checks["check_shards"](lambda n, s: np.round(n * np.asarray(s) / np.sum(s)).astype(int))
    with pytest.raises(AssertionError, match="integers"):
        checks["check_shards"](lambda n, s: n * np.asarray(s, float) / np.sum(s))
    with pytest.raises(AssertionError, match="exactly"):                      # forgets the old residual
        checks["check_ef_topk"](lambda g, r, k: (ef_topk(g, r, k)[0], g - ef_topk(g, r, k)[0]))
    with pytest.raises(AssertionError, match="largest"):                      # top-k of g, not of g + residual
        checks["check_ef_topk"](lambda g, r, k: (ef_topk(g, 0 * r, k)[0], g + r - ef_topk(g, 0 * r, k)[0]))


def test_checks_wait_for_an_answer(checks, capsys):
    assert checks["check_ring_time"](lambda *a: None) is None
    assert checks["check_shards"](lambda *a: None) is None
    assert checks["check_ef_topk"](lambda *a: None) is None
    assert capsys.readouterr().out.count("not answered yet") == 3
