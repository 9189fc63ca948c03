"""Notebook 09 (capstone): stored clean, its exercises wired to the right checkers, FULL mode in step with the benchmarks.

Running the notebook itself is nbval's job (``pytest --nbval-lax notebooks/09_capstone.ipynb``); these
tests check what a run at the default size cannot see.
"""
import json
import re
from pathlib import Path

from prunekit import exercises

from exercise_solutions import SOLUTIONS

ROOT = Path(__file__).resolve().parents[1]
NB = json.loads((ROOT / "notebooks" / "09_capstone.ipynb").read_text())
CODE = ["".join(c["source"]) for c in NB["cells"] if c["cell_type"] == "code"]


def test_stored_without_outputs_and_small_by_default():
    for c in NB["cells"]:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None
    assert any(re.search(r"^FULL = False$", src, re.M) for src in CODE)


def test_each_exercise_stub_defines_what_its_check_cell_checks():
    """The stub cell defines a function; the next code cell checks that function; the reference passes in its place."""
    checked = []
    for stub, check in zip(CODE, CODE[1:]):
        m = re.fullmatch(r'exercises\.check\("(\d\d\.\d)", (\w+)\)', check.strip())
        if not m:
            continue
        ex_id, name = m.groups()
        namespace = {}
        exec(stub, namespace)                                    # the stub as shipped: defines `name`
        assert not exercises.check(ex_id, namespace[name]).ok    # ... and is not an answer yet
        assert exercises.check(ex_id, SOLUTIONS[ex_id][0]).ok
        checked.append(ex_id)
    assert checked == ["09.1", "09.2"]


def _flag(text, name):
    return int(re.search(rf"--{name} (\d+)", text).group(1))


def test_full_mode_uses_the_structured_benchmark_settings_recorded_in_benchmarks_md():
    recorded = (ROOT / "benchmarks" / "BENCHMARKS.md").read_text()
    command = next(line for line in recorded.splitlines()
                   if "benchmarks/structured.py --models lenet5 vgg" in line)
    full_cell = next(src for src in CODE if "structured_bench.run(" in src)
    args = re.search(r"argparse\.Namespace\((.*)\)", full_cell).group(1)
    assert f"epochs={_flag(command, 'epochs')}," in args
    assert f"finetune={_flag(command, 'finetune')}," in args
    assert f"reps={_flag(command, 'reps')})" in args + ")"
    assert f"[:{_flag(command, 'train'):_}]" in full_cell
    assert 'compression_bench.run(["lenet300", "lenet5"])' in full_cell   # the script's default models


def test_full_mode_namespace_runs_the_structured_benchmark(tmp_path):
    # FULL = True once failed deep inside structured.run (the Namespace lacked an attribute it read): run the
    # cell's own Namespace, with only its sizes made tiny, through the benchmark on a few images.
    import argparse
    import sys

    import prunekit as pk
    full_cell = next(src for src in CODE if "structured_bench.run(" in src)
    ns = eval(re.search(r"(argparse\.Namespace\(.*\))", full_cell).group(1), {"argparse": argparse})
    for key, tiny in {"amounts": [0.5], "epochs": 1, "finetune": 1, "reps": 1}.items():
        assert hasattr(ns, key)
        setattr(ns, key, tiny)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import structured
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    (x, y), (xt, yt) = pk.data.load_fashion_mnist(flatten=False)
    data = ((x.reshape(-1, 1, 28, 28)[:256], y[:256]), (xt.reshape(-1, 1, 28, 28)[:64], yt[:64]))
    structured.run("lenet5", data, ns)
