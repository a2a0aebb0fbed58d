"""The access token door's memory of the database: each answer trusted for its ttl from when
it was asked, a bounded number of them."""

from __future__ import annotations

from tokend.login.recent_answers import RecentAnswers


def test_an_answer_holds_from_when_it_was_asked_for_the_ttl_only() -> None:
    answers: RecentAnswers[str] = RecentAnswers(1.0)
    answers.put("k", "v", asked_at=10.0)
    seen = answers.get("k", 10.5)
    assert seen is not None and (seen.value, seen.asked_at) == ("v", 10.0)
    assert answers.get("k", 9.0) is None  # before it was asked: the clock went back
    answers.put("k", "v", asked_at=10.0)
    assert answers.get("k", 11.0) is None
    assert answers.get("k", 10.5) is None, "an expired answer is gone, not kept for later"


def test_a_ttl_of_zero_remembers_nothing() -> None:
    answers: RecentAnswers[str] = RecentAnswers(0)
    answers.put("k", "v", asked_at=10.0)
    assert answers.get("k", 10.0) is None


def test_the_oldest_answers_go_first_beyond_the_bound() -> None:
    answers: RecentAnswers[int] = RecentAnswers(60, remembered=2)
    answers.put("a", 1, 0)
    answers.put("b", 2, 0)
    answers.put("a", 3, 1)  # asked again: now the newest
    answers.put("c", 4, 1)
    assert answers.get("b", 1) is None
    assert [answers.get(k, 1) is not None for k in ("a", "c")] == [True, True]


def test_answers_are_discarded_by_key_or_dropped_by_value() -> None:
    answers: RecentAnswers[int] = RecentAnswers(60)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        answers.put(key, value, 0)
    answers.discard("a")
    answers.discard("missing")
    answers.drop(lambda value: value == 3)
    assert [answers.get(k, 0) is not None for k in ("a", "b", "c")] == [False, True, False]
