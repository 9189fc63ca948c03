"""The course's requirements, checked on every notebook in notebooks/ (issue 13).

Each notebook must be stored without outputs; open with a title, learning objectives,
prerequisites and an estimated time; have a live widget, asserts after its claims, at least
two exercises whose check cells use registered ids of that notebook, stubs that do not hold
the solution, and a References section with papers and years. Every requirement is one test
per notebook, so a failure names the notebook and what it lacks.

(Running the notebooks themselves is nbval's job: `pytest --nbval-lax notebooks`.)
"""
import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

import prunekit as pk
from prunekit import exercises

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _params():
    return [pytest.param(p, id=p.stem) for p in PATHS]


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell):
    return "".join(cell["source"])


def _markdown(path):
    return [_src(c) for c in _cells(path) if c["cell_type"] == "markdown"]


def _code(path):
    return [_src(c) for c in _cells(path) if c["cell_type"] == "code"]


CHECK_CALL = re.compile(r"""exercises\.check\(\s*["'](\d\d\.\d+)["']\s*,\s*([A-Za-z_]\w*)""")


def _exercise_cells(path):
    """(id, answer name, check cell source, stub cell source) for every check cell."""
    code = _code(path)
    found = []
    for i, src in enumerate(code):
        for m in CHECK_CALL.finditer(src):
            name = m.group(2)
            defining = [s for s in code[:i + 1] if re.search(rf"(?m)^(def {name}\(|{name}\s*=)", s)]
            found.append((m.group(1), name, src, defining[-1] if defining else None))
    return found


def test_the_course_has_its_notebooks():
    numbers = {p.name[:2] for p in PATHS}
    assert {"00", "01", "02", "03", "04", "07", "08"} <= numbers, sorted(numbers)


@pytest.mark.parametrize("path", _params())
def test_stored_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path))
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; "
                       f"run `jupyter nbconvert --clear-output --inplace {path.name}`.")


@pytest.mark.parametrize("path", _params())
def test_opens_with_title_objectives_prerequisites_and_time(path):
    md = _markdown(path)
    assert md and re.match(r"# \S", md[0]), f"{path.name}: the first cell should be a markdown '# title'."
    head = "\n".join(md[:3])
    for what, pattern in (("learning objectives", r"(?i)objectives"), ("prerequisites", r"(?i)prerequisite"),
                          ("estimated time", r"(?i)estimated time")):
        assert re.search(pattern, head), f"{path.name}: no {what} in the first markdown cells."


@pytest.mark.parametrize("path", _params())
def test_has_a_live_widget(path):
    code = "\n".join(_code(path))
    assert re.search(r"ipywidgets|widgets\.\w+\(|interact\(|pk\.widgets\.|prunekit\.widgets", code), (
        f"{path.name}: no ipywidgets or prunekit widget (a slider where a threshold or knob matters).")


@pytest.mark.parametrize("path", _params())
def test_claims_are_asserted(path):
    code = _code(path)
    n = sum(len(re.findall(r"(?m)^\s*assert\b", s)) for s in code)
    assert n >= 5, f"{path.name}: only {n} asserts; every claim should be checked by an assert."


@pytest.mark.parametrize("path", _params())
def test_figures_have_labelled_axes(path):
    code = "\n".join(_code(path))
    if "plt.subplots(" in code or "plt.figure(" in code:
        assert "set_xlabel" in code or "xlabel=" in code or "plt.xlabel" in code, (
            f"{path.name}: it draws figures but labels no axis.")


@pytest.mark.parametrize("path", _params())
def test_has_two_exercises_with_registered_check_cells(path):
    found = _exercise_cells(path)
    ids = [id for id, *_ in found]
    registered = exercises.registered()
    assert len(set(ids)) >= 2, f"{path.name}: {len(set(ids))} exercise check cells (exercises.check(...)); need 2."
    for id, name, check_src, stub in found:
        assert id in registered, f"{path.name}: exercise id {id!r} is not registered in prunekit._exercise_checks."
        assert id.split(".")[0] == path.name[:2], f"{path.name}: exercise {id!r} belongs to another notebook."
        last = ast.parse(check_src).body[-1]
        assert isinstance(last, ast.Expr) and "exercises.check" in ast.unparse(last), (
            f"{path.name}: exercise {id}'s check call should be the last line of its cell, so its verdict shows.")
        assert stub is not None, f"{path.name}: exercise {id}: no cell defines {name!r} before its check."
        assert stub != check_src, f"{path.name}: exercise {id}: the stub {name!r} needs its own cell."


@pytest.mark.parametrize("path", _params())
def test_every_exercise_registered_for_the_notebook_is_in_it(path):
    mine = {id for id in exercises.registered() if id.split(".")[0] == path.name[:2]}
    asked = {id for id, *_ in _exercise_cells(path)}
    assert mine <= asked, f"{path.name}: exercises {sorted(mine - asked)} are registered but have no check cell."


@pytest.mark.parametrize("path", _params())
def test_stubs_do_not_contain_the_solution(path):
    for id, name, _, stub in _exercise_cells(path):
        assert stub is not None and re.search(r"NotImplementedError|None", stub), (
            f"{path.name}: exercise {id}: the stub of {name!r} should raise NotImplementedError or return None.")
        body = [line for line in stub.splitlines() if line.strip() and not line.strip().startswith("#")]
        assert len(body) <= 6, f"{path.name}: exercise {id}: the stub of {name!r} looks like a solution:\n{stub}"


@pytest.mark.parametrize("path", _params())
def test_as_stored_every_exercise_is_not_answered_yet(path):
    found = _exercise_cells(path)
    assert found, f"{path.name}: no exercises."
    for id, name, _, stub in found:
        ns = {"np": np, "pk": pk, "exercises": exercises}
        exec(compile(stub, f"{path.name}: stub of {id}", "exec"), ns)
        verdict = exercises.check(id, ns[name])
        assert not verdict.ok and "not answered yet" in verdict.message, (
            f"{path.name}: exercise {id} as stored should say 'not answered yet', says: {verdict.message}")


@pytest.mark.parametrize("path", _params())
def test_has_references_with_years(path):
    refs = [s for s in _markdown(path) if re.search(r"(?m)^#+\s*References", s)]
    assert refs, f"{path.name}: no '## References' section."
    years = re.findall(r"\b(?:19[5-9]\d|20[0-3]\d)\b", refs[-1])
    assert len(years) >= 2, f"{path.name}: the References should cite papers with their years ({len(years)} found)."
