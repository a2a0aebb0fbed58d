"""A toy way in, for the acceptance test of issue #22: an API key looked up in a dict.

Everything a new kind of credential needs is in this module; it is registered in one place
(``logins_for(more=[...])``), and neither the web layer, ``Logins`` nor ``Identity`` changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tokend.login.identity import EntryGate, Identity, Login
from tokend.policy.model import Policy


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str


class ApiKeys:
    """Keys, each standing for a users.json account: the key's holder gets that account's
    rights, as written in users.json."""

    credential_types: tuple[type, ...] = (ApiKey,)
    source = "api keys"
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def __init__(self, keys: Mapping[str, str], current: Callable[[], Policy]) -> None:
        self.keys = keys
        self.asked: list[str] = []
        self._current = current

    def answers(self, credentials: object, policy: Policy) -> object | None:
        return credentials

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        return None

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        assert isinstance(credentials, ApiKey)
        self.asked.append(credentials.key)
        account = self.keys.get(credentials.key)
        if account is None:
            return None
        return Login(Identity(account, self.source), self._current())
