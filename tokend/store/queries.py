"""The queries on access tokens, synchronous: :mod:`tokend.store.runner` runs them on the store's
thread pool, the ``tokend`` tool calls them directly.

Each raises :class:`~tokend.store.database.DatabaseUnavailable` when the database cannot answer.
The caller hashes secrets (:func:`secret_hash`) and passes times in whole seconds since the
epoch, so the queries never read a clock or see a secret.
"""

from __future__ import annotations

import builtins
import hmac
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, Row, and_, insert, or_, select, update

from tokend.access_tokens.record import TOUCH_INTERVAL, AccessToken, Cap
from tokend.access_tokens.secrets import secret_hash as hashed_secret
from tokend.store.database import Location, guarded
from tokend.store.schema import access_tokens

T = TypeVar("T")

REMEMBERED_TOUCHES = 4096
"""Tokens whose last write this process remembers before forgetting those older than a minute."""
MAX_NAME = 256
MAX_ADDRESS = 64


def secret_hash(secret: str) -> str:
    """What is kept of a secret: its SHA-256 (:func:`tokend.access_tokens.secrets.secret_hash`),
    hex, as the ``secret_hash`` column holds it."""
    return hashed_secret(secret).hex()


def _cap_text(cap: Cap) -> str:
    return json.dumps({pattern: list(actions) for pattern, actions in sorted(cap.items())})


def _token(row: Row[Any]) -> AccessToken:
    cap = json.loads(row.cap)
    return AccessToken(
        id=row.id,
        owner=row.owner,
        name=row.name,
        secret_hash=row.secret_hash,
        cap={pattern: tuple(actions) for pattern, actions in cap.items()},
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        last_used_from=row.last_used_from,
    )


def _checked(what: str, value: str, longest: int) -> str:
    if not value or len(value) > longest:
        raise ValueError(f"a token's {what} must have 1 to {longest} characters")
    return value


class AccessTokens:
    """The access_tokens table, through one engine. Safe to call from several threads."""

    def __init__(self, engine: Engine, location: Location) -> None:
        self._engine = engine
        self._location = location
        self._touched: dict[str, int] = {}
        self._touched_lock = threading.Lock()

    def _guarded(self, function: Callable[..., T], *args: Any) -> T:
        return guarded(self._location, function, *args)

    def create(
        self,
        owner: str,
        name: str,
        hashed: str,
        cap: Cap,
        created_at: int,
        expires_at: int,
    ) -> AccessToken:
        """A new token with an id of its own; ``hashed`` is :func:`secret_hash` of its secret."""
        if expires_at <= created_at:
            raise ValueError("a token must expire after its creation")
        token = AccessToken(
            id=secrets.token_hex(8),
            owner=_checked("owner", owner, MAX_NAME),
            name=_checked("name", name, MAX_NAME),
            secret_hash=hashed,
            cap=dict(cap),
            created_at=created_at,
            expires_at=expires_at,
        )
        values = {
            "id": token.id,
            "owner": token.owner,
            "name": token.name,
            "secret_hash": hashed,
            "cap": _cap_text(cap),
            "created_at": created_at,
            "expires_at": expires_at,
        }
        self._guarded(self._write, insert(access_tokens).values(**values))
        return token

    def list(self, owner: str | None = None) -> builtins.list[AccessToken]:
        """Every token (or ``owner``'s), oldest first, revoked and expired ones included."""
        query = select(access_tokens).order_by(access_tokens.c.created_at, access_tokens.c.id)
        if owner is not None:
            query = query.where(access_tokens.c.owner == owner)
        return [_token(row) for row in self._guarded(self._read, query)]

    def get(self, token_id: str) -> AccessToken | None:
        rows = self._guarded(
            self._read, select(access_tokens).where(access_tokens.c.id == token_id)
        )
        return _token(rows[0]) if rows else None

    def find_by_hash(self, hashed: str) -> AccessToken | None:
        """The token whose secret hashes to ``hashed``, compared in constant time."""
        query = select(access_tokens).where(access_tokens.c.secret_hash == hashed)
        rows = self._guarded(self._read, query)
        if rows and hmac.compare_digest(rows[0].secret_hash, hashed):
            return _token(rows[0])
        return None

    def revoke(self, token_id: str, now: int) -> AccessToken | None:
        """Revoke a token (its first revocation's time is kept); None if there is none."""
        query = (
            update(access_tokens)
            .where(and_(access_tokens.c.id == token_id, access_tokens.c.revoked_at.is_(None)))
            .values(revoked_at=now)
        )
        self._guarded(self._write, query)
        return self.get(token_id)

    def touch(self, token_id: str, now: int, address: str | None) -> bool:
        """Record a use, unless one was recorded less than a minute ago (by this process, which
        then writes nothing, or by another, which the database's condition sees): True when
        this call wrote."""
        if address is not None:
            address = address[:MAX_ADDRESS]
        with self._touched_lock:
            if now - self._touched.get(token_id, now - TOUCH_INTERVAL) < TOUCH_INTERVAL:
                return False
            if len(self._touched) >= REMEMBERED_TOUCHES:
                self._touched = {k: t for k, t in self._touched.items() if now - t < TOUCH_INTERVAL}
            self._touched[token_id] = now
        query = (
            update(access_tokens)
            .where(
                and_(
                    access_tokens.c.id == token_id,
                    or_(
                        access_tokens.c.last_used_at.is_(None),
                        access_tokens.c.last_used_at <= now - TOUCH_INTERVAL,
                    ),
                )
            )
            .values(last_used_at=now, last_used_from=address)
        )
        try:
            return self._guarded(self._write, query) > 0
        except Exception:
            with self._touched_lock:
                self._touched.pop(token_id, None)  # not written: the next use tries again
            raise

    def _read(self, query: Any) -> builtins.list[Row[Any]]:
        with self._engine.connect() as connection:
            return list(connection.execute(query))

    def _write(self, query: Any) -> int:
        with self._engine.begin() as connection:
            return int(connection.execute(query).rowcount)
