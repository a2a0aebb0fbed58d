"""Rule keys match in time linear in the name, whatever the key, with the meaning they always had.

The reference below is the translation to a regular expression that tokend used to match with:
``*`` is ``[^/]*``, a ``**`` component is ``.+``. Python's engine backtracks on it, so a key with
many ``*`` in one component took time of the order of the name's length to the number of stars.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.policy.rules import (
    ACCOUNT,
    DOUBLE_STAR,
    EVERYTHING,
    PatternError,
    bind_account,
    compile_pattern,
)


def reference(key: str) -> re.Pattern[str]:
    if key in (EVERYTHING, DOUBLE_STAR):
        return re.compile(".+")
    return re.compile(
        "/".join(
            ".+" if part == DOUBLE_STAR else "[^/]*".join(map(re.escape, part.split("*")))
            for part in key.split("/")
        )
    )


def compiles(key: str) -> bool:
    try:
        compile_pattern(key)
    except PatternError:
        return False
    return True


# Keys and names over a tiny alphabet, so that pieces of a key occur often, and in many places,
# in a name. Names need not be repository names: the matcher must agree on any text.
_PART = st.one_of(st.just(DOUBLE_STAR), st.text("a-*", min_size=1, max_size=7))
_KEYS = st.lists(_PART, min_size=1, max_size=5).map("/".join).filter(compiles)
_NAMES = st.text("a-/", max_size=16)


@settings(max_examples=1000, deadline=None, database=None)
@given(_KEYS, st.lists(_NAMES, max_size=8))
def test_any_name_is_matched_as_the_regular_expression_did(key: str, names: list[str]) -> None:
    pattern, expected = compile_pattern(key), reference(key)
    for name in names:
        assert pattern.matches(name) == (expected.fullmatch(name) is not None), name


def _name_for(key: str, data: st.DataObject) -> str:
    """A name built from the key itself: each ``*`` and ``**`` replaced by some text."""
    parts = []
    for part in key.split("/"):
        if part == DOUBLE_STAR:
            parts.append(data.draw(st.text("a-/", min_size=1, max_size=8)))
        else:
            pieces = part.split("*")
            stars = [data.draw(st.text("a-", max_size=4)) for _ in pieces[1:]]
            parts.append(pieces[0] + "".join(s + p for s, p in zip(stars, pieces[1:], strict=True)))
    return "/".join(parts)


@settings(max_examples=1000, deadline=None, database=None)
@given(_KEYS, st.data())
def test_names_built_from_the_key_are_matched_as_the_regular_expression_did(
    key: str, data: st.DataObject
) -> None:
    pattern, expected = compile_pattern(key), reference(key)
    name = _name_for(key, data)
    # Near misses too: one character taken out of the name or put into it.
    at = data.draw(st.integers(0, len(name)))
    put = data.draw(st.sampled_from("a-/"))
    for near in (name, name[:at] + name[at + 1 :], name[:at] + put + name[at:]):
        assert pattern.matches(near) == (expected.fullmatch(near) is not None), near


_ACCOUNT_KEYS = st.lists(
    st.one_of(_PART, st.just(ACCOUNT), st.just("a-" + ACCOUNT + "*")), min_size=1, max_size=4
).map("/".join)


@settings(max_examples=500, deadline=None, database=None)
@given(
    _ACCOUNT_KEYS.filter(lambda key: ACCOUNT in key and compiles(key)),
    st.sampled_from(["a", "a-a", "aa"]),
    st.data(),
)
def test_a_bound_account_key_matches_as_the_key_with_the_name_written_in(
    key: str, account: str, data: st.DataObject
) -> None:
    pattern = bind_account(key, account)
    assert pattern is not None
    written = key.replace(ACCOUNT, account)
    expected = reference(written)
    for name in [_name_for(written, data), *data.draw(st.lists(_NAMES, max_size=4))]:
        assert pattern.matches(name) == (expected.fullmatch(name) is not None), name


def test_many_stars_in_one_component_match_a_long_name_at_once() -> None:
    """Issue #20.9: ``nightly/*-*-*-*-debug`` stalled the reactor for seconds on one request.

    With the backtracking regex each of these calls would run for hours (the number of ways to
    place eight stars among 250 dashes); now they take microseconds. The work runs in a child
    process so that a regression fails after the cap instead of hanging the suite; the cap is
    a bound on "at all", not a measurement.
    """
    program = textwrap.dedent(
        """
        from tokend.policy.rules import bind_account, compile_pattern

        pattern = compile_pattern("nightly/*-*-*-*-*-*-*-*-debug")
        assert not pattern.matches("nightly/" + "-" * 250 + "x")
        assert pattern.matches("nightly/" + "-" * 250 + "debug")
        deep = compile_pattern("nightly/**/*-*-*-*-*-*-*-*/**/debug")
        assert not deep.matches("nightly/" + "/".join(["-" * 30] * 8) + "/x")
        bound = bind_account("${account}/*-*-*-*-*-*-*-*-debug", "alice")
        assert bound is not None and not bound.matches("alice/" + "-" * 248 + "x")
        print("done")
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=20, check=True
    )
    assert finished.stdout == "done\n"
