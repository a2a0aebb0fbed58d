"""Platform JWTs as a way in (issue #25): a CI job's or a pod's OpenID Connect token, checked
against the issuers.json trust it is presented for (Basic ``TRUST:JWT``) or the one its ``iss``
and ``aud`` choose (the token-exchange grant), becomes a federated identity.

A verified token is remembered until it expires, so a job's repeated token requests cost a
lookup, not a signature check; the trust's conditions and account are read again each time,
so a trust edited live takes effect at once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tokend.login.credentials import FederatedToken, UsernamePassword
from tokend.login.federation.verify import (
    FederatedRefused,
    audiences,
    jwt_fingerprint,
    read_unverified,
    verify,
)
from tokend.login.identity import (
    FEDERATED_SOURCE,
    EntryGate,
    Identity,
    Login,
    LoginRefused,
)
from tokend.policy.model import FEDERATED, Policy
from tokend.policy.trusts import Trust, trust_for, trusts_of

REMEMBERED = 4096
"""Verified tokens remembered at most: a busy CI fleet's jobs each hold one for minutes."""


class IssuersKeys(Protocol):
    """Where a trust's issuer's keys come from
    (:class:`tokend.login.federation.issuer_keys.IssuerKeys`)."""

    async def keys(self, trust: Trust, kid: str | None) -> Mapping[str, Any]:
        """The issuer's JWKS; raises ``IssuerUnavailable`` (a
        :class:`tokend.login.identity.BackendUnavailable`: 503 and ``Retry-After``) when none
        was ever fetched."""


class FederatedLoginRefused(LoginRefused):
    """A platform JWT not accepted: ``trust`` is the trust it was checked against (or named),
    ``jwt`` its fingerprint; neither the token nor its claims beyond the account are logged."""

    def __init__(self, reason: str, trust: str | None, jwt: str, account: str | None = None):
        where = "" if trust is None else f" for trust {trust!r}"
        super().__init__(f"platform token refused{where}: {reason}", account)
        self.trust = trust
        self.jwt = jwt


@dataclass(slots=True)
class _Verified:
    """A token whose signature and issuer, audience and times held under ``checked_by``, and
    the last login it gave (with the policy that login was read against): a job asking again
    under the same policy costs a lookup, not a reading of its claims."""

    checked_by: tuple[object, ...]
    claims: Mapping[str, Any]
    expires_at: float
    last: Login | None = None
    last_trust: Trust | None = None
    last_named: str | None = None
    """The trust the last login was asked under (Basic ``TRUST:JWT``; None: chosen by
    ``iss`` and ``aud``): the same token named for another trust is checked against that one."""


def _checked_by(trust: Trust) -> tuple[object, ...]:
    """What a verification depends on: a trust edited to another issuer, audience or key
    source checks the token anew."""
    return (trust.name, trust.issuer, trust.audience, trust.jwks_uri, trust.jwks_file)


class FederatedAccounts:
    """Answers every :class:`FederatedToken` and the :class:`UsernamePassword` whose name is a
    trust's (the password is the JWT). No bcrypt: a refusal is a failure of the client's
    address alone, never of the trust's name, which every pipeline shares."""

    credential_types: tuple[type, ...] = (UsernamePassword, FederatedToken)
    source = FEDERATED_SOURCE
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True

    def __init__(
        self,
        keys: IssuersKeys,
        current: Callable[[], Policy],
        clock: Callable[[], float],
        remembered: int = REMEMBERED,
    ) -> None:
        self._keys = keys
        self._current = current
        self._now = clock
        self._limit = remembered
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()

    def answers(self, credentials: object, policy: Policy) -> object | None:
        """A trust's name and its JWT as a :class:`FederatedToken` for that trust; every other
        name is someone else's."""
        if isinstance(credentials, FederatedToken):
            return credentials
        assert isinstance(credentials, UsernamePassword)
        if credentials.account not in policy.trusts:
            return None
        return FederatedToken(credentials.password.decode("ascii", "replace"), credentials.account)

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        """The login of a token verified before and not expired, read against the trust as
        it is now; None: check it (:meth:`authenticate`)."""
        assert isinstance(credentials, FederatedToken)
        digest = hashlib.sha256(credentials.token.encode("utf-8", "replace")).digest()
        known = self._verified.get(digest)
        if known is None:
            return None
        if known.expires_at <= now:
            del self._verified[digest]
            return None  # checked anew: refused as expired, with the reason
        last = known.last
        if (
            last is not None
            and last.policy is policy
            and known.last_trust is not None
            and known.last_named == credentials.trust
        ):
            age = known.last_trust.max_token_age
            iat = known.claims.get("iat")
            if age is None or not isinstance(iat, int | float) or now - iat <= age:
                self._verified.move_to_end(digest)
                return last
        trust = self._trust(credentials, known.claims, policy)
        if _checked_by(trust) != known.checked_by:
            return None
        self._verified.move_to_end(digest)
        login = self._login(credentials, trust, known.claims, policy, now)
        known.last, known.last_trust, known.last_named = login, trust, credentials.trust
        return login

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        """Verified with the trust's issuer's keys (fetched only from where the trust says,
        never from the token), then its conditions and account. Raises
        :class:`FederatedLoginRefused`, or the keys' ``IssuerUnavailable`` when the issuer's
        keys were never fetched (the door counts that as no failure)."""
        assert isinstance(credentials, FederatedToken)
        policy = self._current()
        try:
            header, claims = read_unverified(credentials.token)
        except FederatedRefused as e:
            raise self._refused(credentials, credentials.trust, e.reason) from None
        trust = self._trust(credentials, claims, policy)
        keys = await self._keys.keys(trust, header.get("kid"))
        now = self._now()
        try:
            verified = verify(credentials.token, trust, keys, now)
        except FederatedRefused as e:
            raise self._refused(credentials, trust.name, e.reason) from None
        login = self._login(credentials, trust, verified, policy, now)
        self._remember(credentials, trust, verified, login)
        return login

    def _trust(
        self, credentials: FederatedToken, claims: Mapping[str, Any], policy: Policy
    ) -> Trust:
        """The named trust, or the one the token's ``iss`` and ``aud`` choose: a token is
        checked against that one only."""
        if credentials.trust is not None:
            trust = trusts_of(policy).get(credentials.trust)
            if trust is None:
                raise self._refused(credentials, credentials.trust, "no such trust")
            return trust
        iss = claims.get("iss")
        found = None if not isinstance(iss, str) else trust_for(policy, iss, audiences(claims))
        if found is None:
            raise self._refused(credentials, None, "no trust takes this issuer and audience")
        return found

    def _login(
        self,
        credentials: FederatedToken,
        trust: Trust,
        claims: Mapping[str, Any],
        policy: Policy,
        now: float,
    ) -> Login:
        """The identity a verified token holds under ``trust`` as it is now."""
        account = trust.account_for(claims)
        iat = claims.get("iat")
        age = trust.max_token_age
        if age is not None and isinstance(iat, int | float) and now - iat > age:
            raise self._refused(
                credentials, trust.name, "older than the trust's max_token_age", account
            )
        if not trust.admits(claims):
            raise self._refused(
                credentials, trust.name, "a condition of the trust does not hold", account
            )
        if account is None:
            raise self._refused(
                credentials, trust.name, "a claim the account is made of is missing"
            )
        identity = Identity(
            account,
            FEDERATED_SOURCE,
            rights_from=FEDERATED,
            trust=trust.name,
            claim_values=trust.claim_values(claims),
            expires_at=float(claims["exp"]),
        )
        return Login(identity, policy)

    def _remember(
        self, credentials: FederatedToken, trust: Trust, claims: Mapping[str, Any], login: Login
    ) -> None:
        digest = hashlib.sha256(credentials.token.encode("utf-8", "replace")).digest()
        self._verified[digest] = _Verified(
            _checked_by(trust), claims, float(claims["exp"]), login, trust, credentials.trust
        )
        self._verified.move_to_end(digest)
        while len(self._verified) > self._limit:
            self._verified.popitem(last=False)

    def _refused(
        self,
        credentials: FederatedToken,
        trust: str | None,
        reason: str,
        account: str | None = None,
    ) -> FederatedLoginRefused:
        return FederatedLoginRefused(reason, trust, jwt_fingerprint(credentials.token), account)
