"""A new token as the tool (``from_command_line``) and the HTTP API (``from_json``) ask for it:
the same checks of its owner's and its own name, its lifetime and its cap, one sentence each,
and a fresh secret of which only the hash is stored."""

from __future__ import annotations

import hashlib

import pytest

from tokend.access_tokens.lifetimes import DAY, DEFAULT_LIFETIME
from tokend.access_tokens.new_token import (
    MAX_NAME,
    NewTokenError,
    from_command_line,
    from_json,
)
from tokend.access_tokens.secrets import parse


def test_the_command_lines_token() -> None:
    asked = from_command_line("alice", "ci-deploy", "30d", ["team/*:pull,push", "lib/**:pull"])
    assert (asked.owner, asked.name, asked.lifetime) == ("alice", "ci-deploy", 30 * DAY)
    assert asked.stored_cap() == {"team/*": ("pull", "push"), "lib/**": ("pull",)}
    assert parse(asked.secret) is not None
    assert asked.hashed == hashlib.sha256(asked.secret.encode()).hexdigest()
    assert asked.secret not in repr(asked)
    other = from_command_line("alice", "ci-deploy", "30d", ["team/*:pull"])
    assert other.secret != asked.secret


def test_without_expires_a_token_lives_90_days_or_the_maximum_when_shorter() -> None:
    assert from_command_line("a", "n", None, ["x:pull"]).lifetime == DEFAULT_LIFETIME
    assert from_command_line("a", "n", None, ["x:pull"], max_ttl=DAY).lifetime == DAY


@pytest.mark.parametrize(
    ("owner", "name", "expires", "scopes", "said"),
    [
        ("", "n", None, ["x:pull"], "a token's owner must be a non-empty string"),
        ("a", "", None, ["x:pull"], "a token's name must be a non-empty string"),
        ("a", " n", None, ["x:pull"], "a token's name must be printable"),
        ("a", "n\x07", None, ["x:pull"], "a token's name must be printable"),
        ("a", "n" * (MAX_NAME + 1), None, ["x:pull"], f"a token's name has at most {MAX_NAME}"),
        ("a", "n", "1y", ["x:pull"], "expected a lifetime such as 90d"),
        ("a", "n", "30s", ["x:pull"], "expected a lifetime such as 90d"),
        ("a", "n", "400d", ["x:pull"], "a token lives at most 365d"),
        ("a", "n", None, [], ""),
        ("a", "n", None, ["x"], "expected PATTERN:ACTIONS"),
        ("a", "n", None, ["x:pul"], ""),
    ],
)
def test_a_command_line_token_that_cannot_be_made_is_one_sentence(
    owner: str, name: str, expires: str | None, scopes: list[str], said: str
) -> None:
    with pytest.raises(NewTokenError) as error:
        from_command_line(owner, name, expires, scopes)
    message = str(error.value)
    assert said in message and "\n" not in message and message


def test_the_apis_token_with_a_cap_or_scopes_and_seconds_or_a_lifetime() -> None:
    asked = from_json("alice", {"name": "ci", "expires_in": 3600, "cap": {"team/*": ["pull"]}})
    assert (asked.owner, asked.name, asked.lifetime) == ("alice", "ci", 3600)
    assert asked.stored_cap() == {"team/*": ("pull",)}
    same = from_json("alice", {"name": "ci", "expires_in": "1h", "scopes": ["team/*:pull"]})
    assert (same.lifetime, same.stored_cap()) == (3600, asked.stored_cap())
    assert from_json("alice", {"name": "ci", "scopes": ["x:pull"]}).lifetime == DEFAULT_LIFETIME
    assert from_json("bob", {"name": "ci", "owner": "bob", "scopes": ["x:pull"]}).owner == "bob"


@pytest.mark.parametrize(
    ("document", "said"),
    [
        (["name"], "expected a JSON object"),
        ({"name": "n", "cap": {"x": ["pull"]}, "secret": "s"}, "unknown field 'secret'"),
        ({"name": "n"}, "give the token's cap (or its scopes), once"),
        ({"name": "n", "cap": {"x": ["pull"]}, "scopes": ["x:pull"]}, "once"),
        ({"name": "n", "scopes": "x:pull"}, "scopes: expected a list"),
        ({"name": "n", "scopes": [1]}, "scopes: expected a list"),
        ({"name": 5, "scopes": ["x:pull"]}, "a token's name must be a non-empty string"),
        ({"scopes": ["x:pull"]}, "a token's name must be a non-empty string"),
        ({"name": "n", "scopes": ["x:pull"], "expires_in": True}, "whole seconds"),
        ({"name": "n", "scopes": ["x:pull"], "expires_in": 1.5}, "whole seconds"),
        ({"name": "n", "scopes": ["x:pull"], "expires_in": 59}, "at least one minute"),
        ({"name": "n", "scopes": ["x:pull"], "expires_in": 10**12}, "at most 365d"),
        ({"name": "n", "cap": ["x"]}, "cap"),
        ({"name": "n", "cap": {"x": "pull"}}, "cap"),
    ],
)
def test_an_api_token_that_cannot_be_made_is_one_sentence(document: object, said: str) -> None:
    with pytest.raises(NewTokenError) as error:
        from_json("alice", document)
    message = str(error.value)
    assert said in message and "\n" not in message
