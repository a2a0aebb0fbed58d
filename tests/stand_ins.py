"""The common half of the in-memory directories tests put behind the door, where the real one
(slapd) is not the point: they answer the names users.json does not hold, spelled as the
directory would, and remember nothing unless they say so."""

from __future__ import annotations

from tokend.login.credentials import UsernamePassword
from tokend.login.identity import DIRECTORY, Login, directory_spelling
from tokend.policy.model import Policy


class DirectoryStandIn:
    """Subclasses write ``authenticate`` (and ``at_once`` for a cache)."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = DIRECTORY
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def answers(self, credentials: object, policy: Policy) -> object | None:
        assert isinstance(credentials, UsernamePassword)
        spelled = directory_spelling(credentials.account, policy)
        return None if spelled is None else UsernamePassword(spelled, credentials.password)

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        return None
