"""Write docs/api.md, the API reference, from prunekit's docstrings.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is stale (tests/test_docs.py runs this)

Every public name (each module's ``__all__``) gets its signature and its docstring's
first paragraph; a public name without a docstring is an error, so none can be added
silently.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "api.md"

MODULES = [
    "prunekit", "prunekit.tensor", "prunekit.functional", "prunekit.nn", "prunekit.optim", "prunekit.data",
    "prunekit.models", "prunekit.train", "prunekit.pruning", "prunekit.sparse", "prunekit.quant",
    "prunekit.distributed", "prunekit.viz", "prunekit.widgets",
]


def _first_paragraph(doc):
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ")


def _signature(obj):
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _entries(module):
    """(name, kind, signature, summary) for each public name defined by ``module``."""
    out, missing = [], []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue  # subpackages get their own section
        if not (inspect.isclass(obj) or callable(obj)):
            continue  # constants are documented in their module's text
        doc = inspect.getdoc(obj)
        if not doc:
            missing.append(f"{module.__name__}.{name}")
            continue
        kind = "class" if inspect.isclass(obj) else "function"
        out.append((name, kind, _signature(obj), _first_paragraph(doc)))
    return out, missing


def render():
    """The text of api.md, and the public names that lack a docstring."""
    lines = ["# prunekit API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand "
             "(`tests/test_docs.py` fails when it is stale).", ""]
    missing = []
    for modname in MODULES:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError:
            continue  # a package that is not in this checkout yet
        entries, miss = _entries(module)
        missing += miss
        if not entries:
            continue
        lines += [f"## `{modname}`", "", _first_paragraph(module.__doc__ or ""), ""]
        for name, kind, sig, summary in entries:
            lines += [f"- **`{name}{sig}`** ({kind}): {summary}"]
        lines.append("")
    return "\n".join(lines), missing


def main(argv):
    text, missing = render()
    if missing:
        print("public names without a docstring:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run `python docs/gen_api.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
