"""Password verification with bcrypt, off the reactor thread, in constant shape.

Unknown users are checked against a dummy hash of the policy's usual cost, so the response time
does not tell which accounts exist.
"""

from __future__ import annotations

import bcrypt

from tokend.workers import Workers

MAX_PASSWORD_BYTES = 72
"""bcrypt only reads 72 bytes; bcrypt 5 raises on longer input instead of truncating."""

_DUMMY_SALT_AND_HASH = "Xz3Tq0lV9wY2cB5nM8kJ1eHG6fD4sA7pL0oI9uY3tR2eW1qZ8xC5v"


class PasswordTooLong(ValueError):
    """Longer than bcrypt can check; never a valid password here."""


def dummy_hash(cost: int) -> bytes:
    """A well-formed hash no password matches, costing the same as a real one of ``cost``."""
    return f"$2b${cost:02d}${_DUMMY_SALT_AND_HASH}".encode("ascii")


def _checkpw(password: bytes, pass_hash: bytes) -> bool:
    return bcrypt.checkpw(password, pass_hash)


class PasswordChecker:
    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    async def verify(self, pass_hash: bytes | None, password: bytes, dummy_cost: int) -> bool:
        """True only when ``pass_hash`` is a real hash and ``password`` matches it."""
        if len(password) > MAX_PASSWORD_BYTES:
            raise PasswordTooLong(f"passwords are limited to {MAX_PASSWORD_BYTES} bytes")
        checked = pass_hash if pass_hash is not None else dummy_hash(dummy_cost)
        matches = await self._workers.run(_checkpw, password, checked)
        return matches and pass_hash is not None
