"""An access token's lifetime: 90d, 12h or 30m; 90 days unless said; a minute to the maximum."""

from __future__ import annotations

import pytest
from support import REPO

from tokend.access_tokens.lifetimes import (
    DEFAULT_LIFETIME,
    DEFAULT_MAX_TTL,
    MIN_LIFETIME,
    LifetimeError,
    checked_lifetime,
    parse_lifetime,
    shown_lifetime,
)
from tokend.settings.options import ACCESS_TOKEN_MAX_TTL, ACCESS_TOKENS, DAEMON

DAY = 86_400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * DAY), ("12h", 12 * 3600), ("30m", 1800), ("1m", 60), ("365d", 365 * DAY)],
)
def test_days_hours_and_minutes(text: str, seconds: int) -> None:
    assert parse_lifetime(text) == seconds


def test_the_defaults_are_90_days_a_minute_and_a_year() -> None:
    assert DEFAULT_LIFETIME == 90 * DAY
    assert MIN_LIFETIME == 60
    assert DEFAULT_MAX_TTL == 365 * DAY
    assert parse_lifetime(None) == DEFAULT_LIFETIME


def test_without_a_lifetime_a_smaller_maximum_is_the_default() -> None:
    assert parse_lifetime(None, max_ttl=30 * DAY) == 30 * DAY


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("", "expected a lifetime such as 90d, 12h or 30m, not ''"),
        ("90", "expected a lifetime such as 90d, 12h or 30m, not '90'"),
        ("90 d", "expected a lifetime such as 90d, 12h or 30m, not '90 d'"),
        ("90D", "expected a lifetime such as 90d, 12h or 30m, not '90D'"),
        ("1.5h", "expected a lifetime such as 90d, 12h or 30m, not '1.5h'"),
        ("-1d", "expected a lifetime such as 90d, 12h or 30m, not '-1d'"),
        ("3w", "expected a lifetime such as 90d, 12h or 30m, not '3w'"),
        ("٣d", "expected a lifetime such as 90d, 12h or 30m, not '٣d'"),
        ("9" * 5000 + "d", "expected a lifetime such as 90d, 12h or 30m, not '" + "9" * 19),
        ("0m", "a token lives at least one minute (1m), not 0m"),
        ("30s", "expected a lifetime such as 90d, 12h or 30m, not '30s'"),
        ("366d", "a token lives at most 365d (--access-token-max-ttl), not 366d"),
        ("8761h", "a token lives at most 365d (--access-token-max-ttl), not 8761h"),
    ],
)
def test_every_refusal_is_one_sentence(text: str, sentence: str) -> None:
    with pytest.raises(LifetimeError) as raised:
        parse_lifetime(text)
    assert str(raised.value).startswith(sentence)
    assert len(str(raised.value)) < 120


def test_the_maximum_is_the_one_given() -> None:
    assert parse_lifetime("7d", max_ttl=7 * DAY) == 7 * DAY
    with pytest.raises(LifetimeError, match=r"^a token lives at most 12h .*, not 13h$"):
        parse_lifetime("13h", max_ttl=12 * 3600)
    with pytest.raises(LifetimeError, match=r"at most 90m .*, not 2h$"):
        parse_lifetime("2h", max_ttl=90 * 60)


def test_seconds_from_the_api_are_checked_alike() -> None:
    assert checked_lifetime(60) == 60
    assert checked_lifetime(DEFAULT_MAX_TTL) == DEFAULT_MAX_TTL
    with pytest.raises(LifetimeError, match=r"^a token lives at least one minute \(1m\), not 59s$"):
        checked_lifetime(59)
    with pytest.raises(LifetimeError, match=r"at most 365d .*, not 31536001s$"):
        checked_lifetime(DEFAULT_MAX_TTL + 1)
    for wrong in (True, 60.0, "60", None):
        with pytest.raises(LifetimeError, match=r"^expected a lifetime in whole seconds"):
            checked_lifetime(wrong)


def test_lifetimes_are_shown_in_the_largest_whole_unit() -> None:
    assert [shown_lifetime(s) for s in (60, 90 * 60, 7200, DAY, 59, 61)] == [
        "1m",
        "90m",
        "2h",
        "1d",
        "59s",
        "61s",
    ]


def test_the_maximum_is_one_option_of_the_daemon_and_the_tool() -> None:
    """Declared once for the daemon and the tool (``tokend token create``)."""
    assert ACCESS_TOKEN_MAX_TTL in ACCESS_TOKENS
    assert {option.name for option in ACCESS_TOKENS} <= set(DAEMON)
    assert ACCESS_TOKEN_MAX_TTL.name == "access-token-max-ttl"
    assert ACCESS_TOKEN_MAX_TTL.default == str(DEFAULT_MAX_TTL)
    assert ACCESS_TOKEN_MAX_TTL.bounds is not None
    assert ACCESS_TOKEN_MAX_TTL.bounds[0] == MIN_LIFETIME
    rows = [
        line
        for line in (REPO / "docs" / "options.md").read_text().splitlines()
        if line.startswith("| `--access-token-max-ttl` |")
    ]
    assert len(rows) == 1
    assert f"| `{DEFAULT_MAX_TTL}` |" in rows[0] and "(coming)" not in rows[0]
