"""A stored access token as people and scripts see it: its state and its one JSON form, which
never holds the secret's hash."""

from __future__ import annotations

import json

from tokend.access_tokens.record import AccessToken, rfc3339

HASH = "ab" * 32


def _token(**changed: object) -> AccessToken:
    values: dict[str, object] = {
        "id": "0123456789abcdef",
        "owner": "alice",
        "name": "ci-deploy",
        "secret_hash": HASH,
        "cap": {"team/*": ("pull", "push"), "team/secret": ()},
        "created_at": 1_700_000_000,
        "expires_at": 1_700_000_600,
    }
    values.update(changed)
    return AccessToken(**values)  # type: ignore[arg-type]


def test_a_token_is_active_until_it_expires_and_revoked_whatever_its_expiry() -> None:
    token = _token()
    assert [token.state(t) for t in (1_700_000_000, 1_700_000_599, 1_700_000_600)] == [
        "active",
        "active",
        "expired",
    ]
    assert [token.usable_at(t) for t in (1_700_000_599, 1_700_000_600)] == [True, False]
    revoked = _token(revoked_at=1_700_000_100)
    assert revoked.state(1_700_000_200) == revoked.state(1_800_000_000) == "revoked"
    assert not revoked.usable_at(1_700_000_200)


def test_the_json_form_names_everything_but_the_hash() -> None:
    token = _token(last_used_at=1_700_000_060, last_used_from="192.0.2.7")
    shown = token.as_json(1_700_000_100)
    assert shown == {
        "id": "0123456789abcdef",
        "owner": "alice",
        "name": "ci-deploy",
        "state": "active",
        "cap": {"team/*": ["pull", "push"], "team/secret": []},
        "scopes": ["team/*:pull,push", "team/secret:"],
        "created_at": "2023-11-14T22:13:20Z",
        "expires_at": "2023-11-14T22:23:20Z",
        "revoked_at": None,
        "last_used_at": "2023-11-14T22:14:20Z",
        "last_used_from": "192.0.2.7",
    }
    assert HASH not in json.dumps(shown)
    assert HASH not in repr(token)


def test_times_are_rfc3339_utc() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(None) is None
