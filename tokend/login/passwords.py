"""Password verification with bcrypt, off the reactor thread, in constant shape.

Unknown users are checked against a dummy hash at a cost the policy picks for that name from its
own mix of costs (:meth:`tokend.policy.Policy.dummy_cost`), so the response time does not tell
which accounts exist.
"""

from __future__ import annotations

import bcrypt
from twisted.logger import Logger

from tokend.policy.model import MAX_BCRYPT_COST, MIN_BCRYPT_COST, Policy
from tokend.threads import ThreadRunner

MAX_PASSWORD_BYTES = 72
"""bcrypt only reads 72 bytes; bcrypt 5 raises on longer input instead of truncating."""

_DUMMY_SALT_AND_HASH = "Xz3Tq0lV9wY2cB5nM8kJ1eHG6fD4sA7pL0oI9uY3tR2eW1qZ8xC5v"
"""A valid salt (its 22nd character, ``e``, is one bcrypt accepts) and a hash part no password
produces. The prefix ($2b$ here, $2a$ or $2y$ in users.json) does not change the work done."""


def dummy_hash(cost: int) -> bytes:
    """A well-formed hash no password matches, costing the same as a real one of ``cost``."""
    if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
        raise ValueError(f"bcrypt cost {cost} out of range ({MIN_BCRYPT_COST}-{MAX_BCRYPT_COST})")
    return f"$2b${cost:02d}${_DUMMY_SALT_AND_HASH}".encode("ascii")


def check_cost(policy: Policy, account: str) -> int:
    """The bcrypt cost a wrong password for ``account`` costs: its users.json hash's, else the
    dummy cost the policy draws for the name (a robot's too: it has no hash)."""
    user = policy.users.get(account)
    if user is None or user.robot:
        return policy.dummy_cost(account)
    return int(user.pass_hash[4:6])


def _checkpw(password: bytes, pass_hash: bytes) -> bool:
    return bcrypt.checkpw(password, pass_hash)


class PasswordChecker:
    log = Logger()

    def __init__(self, threads: ThreadRunner) -> None:
        self._threads = threads

    async def verify(self, pass_hash: bytes | None, password: bytes, dummy_cost: int) -> bool:
        """True only when ``pass_hash`` is a real hash and ``password`` matches it.

        A stored hash bcrypt refuses (loading should have kept it out) counts as no match and
        is logged: a login must end in 401, never in an error page. A password longer than
        bcrypt reads never matches; the realm refuses it before it gets here, and counts it.
        """
        if len(password) > MAX_PASSWORD_BYTES:
            return False
        try:
            checked = pass_hash if pass_hash is not None else dummy_hash(dummy_cost)
            matches = await self._threads.run(_checkpw, password, checked)
        except ValueError as e:
            self.log.error(
                "bcrypt refused a {kind} hash ({reason}); the login is refused as a wrong "
                "password: replace the hash with one from `tokend hash-password`",
                kind="stored" if pass_hash is not None else "dummy",
                reason=str(e),
            )
            return False
        return matches and pass_hash is not None

    async def pad(self, cost: int) -> None:
        """One bcrypt at ``cost`` against a hash nothing matches, through the same threads: a
        refusal that cost no bcrypt of its own takes as long as one that did.
        :class:`tokend.threads.Overloaded` passes through."""
        await self._threads.run(_checkpw, b"", dummy_hash(cost))
