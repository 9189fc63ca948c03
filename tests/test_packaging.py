"""The install promises: Binder's environment.yml and pyproject.toml's extras name the same things."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement):
    """'dask[array]>=2024.1' -> 'dask'."""
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower()


def _environment_entries():
    """(conda dependencies, pip lines) of environment.yml, read without a YAML library."""
    conda, pip, in_pip = [], [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        item = re.match(r"^(\s*)- (.+?)\s*(#.*)?$", line)
        if not item:
            in_pip = in_pip and line.startswith(" " * 6)
            continue
        indent, value = len(item.group(1)), item.group(2)
        if value == "pip:":
            in_pip = True
        elif in_pip and indent > 2:
            pip.append(value)
        else:
            in_pip = False
            conda.append(value)
    return conda, pip


def test_binder_environment_installs_the_lab_extra_of_this_repository():
    """Binder gets exactly pyproject's runtime + `lab` dependencies: it installs `-e .[lab]` itself,
    or else lists every one of them."""
    conda, pip = _environment_entries()
    project = _pyproject()["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["lab"]}
    if any(re.fullmatch(r"-e \.\[(.*,)?lab(,.*)?\]", p) for p in pip):
        return
    listed = {_name(p) for p in pip} | {_name(c) for c in conda}
    assert wanted <= listed, f"environment.yml lacks {sorted(wanted - listed)}"


def test_binder_python_satisfies_requires_python():
    conda, _ = _environment_entries()
    pythons = [c for c in conda if c.startswith("python")]
    assert pythons, "environment.yml must pin python"
    version = tuple(int(v) for v in pythons[0].split("=")[-1].split(".")[:2])
    low = tuple(int(v) for v in re.search(r">=\s*([\d.]+)", _pyproject()["project"]["requires-python"])
                .group(1).split(".")[:2])
    assert version >= low


def test_every_optional_extra_is_in_the_test_extra():
    """`make test` installs `.[lab,test]`, so every optional component must be in `test` to be tested."""
    extras = _pyproject()["project"]["optional-dependencies"]
    test = {_name(r) for r in extras["test"]}
    for extra in set(extras) - {"test", "bench", "lab"}:
        missing = {_name(r) for r in extras[extra]} - test
        assert not missing, f"extra {extra!r}: {sorted(missing)} not in the test extra"
