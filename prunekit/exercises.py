"""Exercises of the course: each notebook's check cells call :func:`check`.

A notebook exercise is three cells: a markdown cell with the task, a code cell where the
learner writes the answer (it starts as a stub that raises ``NotImplementedError``, or
sets the answer to ``None``), and a check cell whose last line is the check, so that its
verdict shows::

    from prunekit import exercises
    exercises.check("04.1", global_magnitude_masks)

``check`` says whether the answer is right, and why not when it is not. It never
raises for a wrong or missing answer (the notebook keeps running, and the course's tests
run every notebook top to bottom with the stubs in place); it returns True or False.

Each checker is registered here with :func:`exercise` under the notebook's number and the
exercise's number. The tests hold every checker to a reference solution (which it must
accept) and to a wrong answer (which it must reject); the reference solutions live in
``tests/exercise_solutions.py``, away from the notebooks.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

__all__ = ["check", "exercise", "Exercise", "registered", "Verdict"]


class Exercise(NamedTuple):
    """A registered exercise: its id ("04.1"), one-line task, and checker ``answer -> None or complaint``."""

    id: str
    task: str
    checker: Callable


class Verdict(NamedTuple):
    """What :func:`check` found: ``ok``, and the message shown to the learner."""

    ok: bool
    message: str

    def __bool__(self):
        return self.ok

    def _repr_html_(self):
        colour = "#1a7f37" if self.ok else "#cf222e"
        return f'<p style="color:{colour}; font-weight:bold">{self.message}</p>'

    def __repr__(self):
        return self.message


_REGISTRY: "OrderedDict[str, Exercise]" = OrderedDict()


def exercise(id, task):
    """Decorator: register ``checker(answer, **context) -> None (right) or a str (what is wrong)``."""
    if not isinstance(id, str) or not id:
        raise TypeError(f"exercise(): id must be a non-empty string like '04.1', got {id!r}.")

    def add(checker):
        if id in _REGISTRY:
            raise ValueError(f"exercise(): id must be new, got {id!r} (already registered).")
        _REGISTRY[id] = Exercise(id, task, checker)
        return checker

    return add


def registered():
    """The registered exercises, by id (importing the checkers of every notebook first)."""
    from . import _exercise_checks  # noqa: F401  (registers them)

    return OrderedDict(_REGISTRY)


def check(id, answer, **context) -> Verdict:
    """Check the learner's ``answer`` to exercise ``id``; show and return a :class:`Verdict`.

    ``context`` passes what the checker needs from the notebook (e.g. the model the
    answer is about). A missing answer (None) gets a reminder, not an error.
    """
    exercises = registered()
    if id not in exercises:
        raise ValueError(f"check(): id must be one of {list(exercises)}, got {id!r}.")
    ex = exercises[id]
    if answer is None:
        return Verdict(False, f"Exercise {id}: not answered yet ({ex.task}).")
    try:
        complaint = ex.checker(answer, **context)
    except NotImplementedError:  # the stub as the notebook ships it
        return Verdict(False, f"Exercise {id}: not answered yet ({ex.task}).")
    except Exception as e:  # a malformed answer is a wrong answer, explained
        complaint = f"the answer could not be checked ({type(e).__name__}: {e})"
    if complaint:
        return Verdict(False, f"Exercise {id}: not yet. {complaint}")
    return Verdict(True, f"Exercise {id}: correct.")
