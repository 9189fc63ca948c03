"""Every exercise check accepts its reference solution and rejects a wrong answer; stubs are 'not yet'."""
import pytest

from prunekit import exercises

from exercise_solutions import SOLUTIONS

IDS = list(exercises.registered())


def test_every_exercise_has_a_reference_solution():
    assert set(IDS) == set(SOLUTIONS)


@pytest.mark.parametrize("id", IDS)
def test_check_accepts_the_reference_and_rejects_a_wrong_answer(id):
    right, wrong = SOLUTIONS[id]
    verdict = exercises.check(id, right)
    assert verdict.ok, verdict.message
    verdict = exercises.check(id, wrong)
    assert not verdict.ok and "not yet" in verdict.message


@pytest.mark.parametrize("id", IDS)
def test_an_unanswered_stub_is_not_an_error(id):
    def stub(*args):
        raise NotImplementedError
    assert not exercises.check(id, None).ok
    verdict = exercises.check(id, stub)
    assert not verdict.ok and "not answered yet" in verdict.message


def test_unknown_id_is_a_clear_error():
    with pytest.raises(ValueError, match=r"check\(\): id must be one of"):
        exercises.check("99.9", 1)
