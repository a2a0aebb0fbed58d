"""What a new access token is asked to be, checked once for the tool and the HTTP API alike:
its name, its lifetime and its cap. Whether its owner exists is the caller's question (users.json
or the directory, which only the caller can ask)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tokend.access_tokens.cap import Cap, CapError, cap_from_json, parse_cap
from tokend.access_tokens.lifetimes import (
    DEFAULT_MAX_TTL,
    LifetimeError,
    checked_lifetime,
    parse_lifetime,
)
from tokend.access_tokens.secrets import new_secret, secret_hash

MAX_NAME = 100
"""A token's name is a label for people (``ci-deploy``), not a document."""


class NewTokenError(ValueError):
    """A token that cannot be made as asked, as one sentence naming the part at fault."""


@dataclass(frozen=True, slots=True)
class NewToken:
    """A checked request for a token, with its secret drawn: ``hashed`` is what the database
    keeps (hex SHA-256), ``secret`` what is shown once."""

    owner: str
    name: str
    lifetime: int
    cap: Cap
    secret: str = field(repr=False)

    @property
    def hashed(self) -> str:
        return secret_hash(self.secret).hex()

    def stored_cap(self) -> dict[str, tuple[str, ...]]:
        """The cap as the store takes it."""
        return {pattern: tuple(actions) for pattern, actions in self.cap.to_json().items()}


def checked_name(name: object, what: str = "name") -> str:
    """A token's (or an owner's) name: printable, 1 to :data:`MAX_NAME` characters, no spaces
    at its ends."""
    if not isinstance(name, str) or not name:
        raise NewTokenError(f"a token's {what} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise NewTokenError(f"a token's {what} has at most {MAX_NAME} characters")
    if not name.isprintable() or name != name.strip():
        raise NewTokenError(
            f"a token's {what} must be printable, without spaces at its ends: {name[:40]!r}"
        )
    return name


def from_command_line(
    owner: str,
    name: str,
    expires: str | None,
    scopes: Iterable[str],
    max_ttl: int = DEFAULT_MAX_TTL,
) -> NewToken:
    """``tokend token create``'s ``--owner``, ``--name``, ``--expires 30d`` and ``--scope
    PATTERN:ACTIONS`` (repeated)."""
    try:
        return NewToken(
            checked_name(owner, "owner"),
            checked_name(name),
            parse_lifetime(expires, max_ttl),
            parse_cap(scopes),
            new_secret(),
        )
    except (LifetimeError, CapError) as e:
        raise NewTokenError(str(e)) from None


def from_json(owner: str, document: object, max_ttl: int = DEFAULT_MAX_TTL) -> NewToken:
    """The HTTP API's body: ``{"name": …, "expires_in": SECONDS or "30d", "cap": {PATTERN:
    [ACTIONS]}}`` (``"scopes": ["PATTERN:ACTIONS", …]`` instead of ``cap`` too), for
    ``owner`` (the API decides whose)."""
    if not isinstance(document, dict):
        raise NewTokenError("expected a JSON object with name, expires_in and cap")
    unknown = sorted(set(document) - {"name", "expires_in", "cap", "scopes", "owner"})
    if unknown:
        raise NewTokenError(f"unknown field {unknown[0]!r} (known: name, expires_in, cap, owner)")
    if ("cap" in document) == ("scopes" in document):
        raise NewTokenError("give the token's cap (or its scopes), once")
    expires = document.get("expires_in")
    try:
        if expires is None or isinstance(expires, str):
            lifetime = parse_lifetime(expires, max_ttl)
        else:
            lifetime = checked_lifetime(expires, max_ttl)
        if "cap" in document:
            cap = cap_from_json(document["cap"], "cap")
        else:
            scopes = document["scopes"]
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise NewTokenError('scopes: expected a list such as ["team/*:pull,push"]')
            cap = parse_cap(scopes)
    except (LifetimeError, CapError) as e:
        raise NewTokenError(str(e)) from None
    return NewToken(
        checked_name(owner, "owner"),
        checked_name(document.get("name")),
        lifetime,
        cap,
        new_secret(),
    )
