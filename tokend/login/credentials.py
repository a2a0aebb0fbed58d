"""What a client presents to prove who it is, and the protocol of what checks it (STYLE rule 14).

A credential type is a frozen value; an :class:`Authenticator` accepts some credential types and
turns them into a :class:`tokend.login.identity.Login`, or refuses them. :class:`Logins` asks
an ordered list of them, behind one door (:mod:`tokend.login.logins`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tokend.login.identity import EntryGate, Login
from tokend.policy.model import Policy


@dataclass(frozen=True, slots=True)
class UsernamePassword:
    """A name and its password (HTTP Basic, the OAuth2 password grant). The door throttles the
    name, shares out the bcrypt queue and pays a bcrypt for every refusal that cost none."""

    account: str
    password: bytes

    def __repr__(self) -> str:
        return f"UsernamePassword({self.account!r}, <{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A refresh token this service issued (the OAuth2 refresh_token grant)."""

    token: str

    def __repr__(self) -> str:
        return "RefreshToken(<token>)"


@dataclass(frozen=True, slots=True)
class FederatedToken:
    """A platform's JWT (a CI job's or a pod's): with ``trust`` None, the trust is chosen by the
    token's ``iss`` and ``aud`` (the token-exchange grant); Basic ``TRUST:JWT`` arrives as
    :class:`UsernamePassword` and is answered by the trust of that name."""

    token: str
    trust: str | None = None

    def __repr__(self) -> str:
        return f"FederatedToken(<{len(self.token)} chars>, trust={self.trust!r})"


class Authenticator(Protocol):
    """One way in (a :class:`twisted.cred.checkers.ICredentialsChecker` in spirit).

    Credentials other than :class:`UsernamePassword` name no account before they are checked:
    the door throttles them by the client's address alone.
    """

    @property
    def credential_types(self) -> tuple[type, ...]:
        """The credential types it accepts; the door asks it about no others."""

    @property
    def source(self) -> str:
        """Where its identities come from: the ``source`` of the identities it makes, and the
        name a refresh token issued to one of them gives to ask it again (:meth:`vouch`)."""

    @property
    def refusals_cost_a_bcrypt(self) -> bool:
        """True when a refused password already cost one bcrypt; the door pays one for the
        others, so that response time does not tell where a name lives."""

    @property
    def checks_take_a_place(self) -> bool:
        """True when its checks wait on something every client shares (the bcrypt queue, the
        directory, a program): each takes one of the client's few places among the checks in
        flight, so one client network cannot fill it. False for a check that is a lookup on
        a pool of its own (an access token), which no place limits: a burst of one CI's
        parallel pulls is not refused for a cost it does not have."""

    def answers(self, credentials: object, policy: Policy) -> object | None:
        """The credentials as this authenticator reads them (a name spelled as it knows it)
        when it decides them, or None to leave them to the next one. Raises
        :class:`tokend.login.identity.UnfitName` for a name no one may log in with."""

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        """A login answered with no backend round trip (the credential cache), or None: ask
        :meth:`authenticate`. May raise :class:`tokend.login.identity.LoginRefused`."""

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        """The login, or None (refused). Raises
        :class:`tokend.login.identity.BackendUnavailable` when it cannot tell, or
        ``Overloaded``; asks ``gate`` about the directory entry a name leads to, if any,
        before it checks the password there."""
