"""Notebooks 05 and 06 as a course: the parts issue 13 asks of every notebook, and their exercises' cells.

The notebooks themselves run under nbval (`pytest --nbval-lax notebooks`); this file reads them as JSON
(no kernel): stored without outputs; title, objectives, prerequisites, estimated time near the top; a live
ipywidgets control; asserts; at least two exercises whose stub cell and check cell agree with the registry
(the stub is 'not answered yet', the reference solution is 'correct' under the same name); references.
"""
import ast
import inspect
import json
import re
from pathlib import Path

import pytest

from prunekit import exercises

from exercise_solutions_05_06 import SOLUTIONS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = {"05": "05_structured_pruning.ipynb", "06": "06_sparse_kernels.ipynb"}
CHECK = re.compile(r'^exercises\.check\("(\d\d\.\d)", (\w+)\)$')


def cells(number):
    return json.loads((NOTEBOOKS / NAMES[number]).read_text())["cells"]


def source(cell):
    return "".join(cell["source"])


def code_cells(number):
    return [source(c) for c in cells(number) if c["cell_type"] == "code"]


def check_cells(number):
    """(id, name of the answer, index among the code cells) of every check cell: the check is its last line."""
    found = []
    for i, src in enumerate(code_cells(number)):
        last = src.strip().splitlines()[-1] if src.strip() else ""
        if (m := CHECK.match(last)):
            found.append((m.group(1), m.group(2), i))
    return found


@pytest.mark.parametrize("number", NAMES)
def test_stored_without_outputs(number):
    for c in cells(number):
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None


@pytest.mark.parametrize("number", NAMES)
def test_opens_with_title_objectives_prerequisites_and_time(number):
    top = source(cells(number)[0])
    assert top.startswith(f"# {number} · ")
    for part in ("**Objectives.**", "**Prerequisites.**", "**Estimated time.**"):
        assert part in top, part


@pytest.mark.parametrize("number", NAMES)
def test_has_a_live_widget_asserts_labelled_figures_and_references(number):
    code = "\n".join(code_cells(number))
    assert re.search(r"widgets\.(FloatSlider|IntSlider)\(", code)
    assert len(re.findall(r"^\s*assert ", code, flags=re.M)) >= 20
    for src in code_cells(number):   # every matplotlib figure made in a cell labels its axes
        if "plt.subplots(" in src:
            assert re.search(r"set_[xy]label|sparsity_axis\(", src), src[:80]   # bar charts: categories on the other axis
    refs = [source(c) for c in cells(number) if source(c).startswith("## References")]
    assert len(refs) == 1 and len(re.findall(r"\((19|20)\d\d\)", refs[0])) >= 5


@pytest.mark.parametrize("number", NAMES)
def test_two_exercises_each_with_a_stub_and_a_check_cell(number):
    found = check_cells(number)
    assert [id for id, _, _ in found] == [f"{number}.1", f"{number}.2"]
    code = code_cells(number)
    for id, name, at in found:
        # the stub is the cell that defines `name`, before the check, and raises NotImplementedError
        stubs = [i for i, src in enumerate(code[:at]) if re.search(rf"^def {name}\(", src, flags=re.M)]
        assert len(stubs) == 1, (id, name)
        namespace = {}
        exec(compile(code[stubs[0]], f"<{id} stub>", "exec"), namespace)
        assert "raise NotImplementedError" in code[stubs[0]]
        assert "not answered yet" in exercises.check(id, namespace[name]).message
        # the reference solution takes the stub's arguments and passes the same check
        right, wrong = SOLUTIONS[id]
        assert len(inspect.signature(namespace[name]).parameters) == len(inspect.signature(right).parameters)
        assert exercises.check(id, right).ok and not exercises.check(id, wrong).ok
        # the task is stated in a markdown cell that names the function
        assert any(f"`{name}(" in source(c) for c in cells(number) if c["cell_type"] == "markdown"), name


def test_notebook_05_no_longer_defines_its_own_checks():
    code = "\n".join(code_cells("05"))
    assert "def check_exercise" not in code
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("check")]
