"""Where the authenticators are put in order behind the door: the one place a new kind of
credential is registered (STYLE rule 14). The daemon and the tests build :class:`Logins`
here, from ready collaborators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tokend.login.access_tokens import AccessTokenAccounts
from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import Authenticator
from tokend.login.federated import FederatedAccounts
from tokend.login.in_flight import InFlight
from tokend.login.logins import LoginHook, Logins
from tokend.login.password_file import PasswordFile, UnknownNames
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.refreshing import RefreshTokenLogins, Vouching
from tokend.login.throttle import LoginThrottle
from tokend.metrics.instruments import NO_METRICS, RequestMetrics
from tokend.policy.holder import PolicyHolder


class AccountDirectory(Authenticator, Vouching, Protocol):
    """A directory of accounts (:class:`tokend.login.ldap.accounts.DirectoryAccounts`): it
    answers the names users.json does not hold, and vouches for its accounts' refresh
    tokens."""


def logins_for(
    *,
    policy: PolicyHolder,
    passwords: PasswordChecker,
    clock: Callable[[], float],
    throttle: LoginThrottle | None = None,
    credential_cache: CredentialCache | None = None,
    in_flight: InFlight | None = None,
    program: Authenticator | None = None,
    directory: AccountDirectory | None = None,
    refresh_tokens: RefreshTokens | None = None,
    federation: FederatedAccounts | None = None,
    metrics: RequestMetrics = NO_METRICS,
    access_tokens: AccessTokenAccounts | None = None,
    more: Sequence[Authenticator] = (),
) -> Logins:
    """Without ``throttle``, ``credential_cache`` or ``in_flight`` there is no throttling,
    caching or per-address share of the bcrypt queue; without ``program`` (the external
    authentication program, :class:`tokend.login.program.ProgramAccounts`) or ``directory``,
    names not in users.json are unknown; without ``refresh_tokens``, no refresh token is
    accepted or issued; without ``federation``, no platform JWT (issuers.json) is; without
    ``access_tokens``, no access token is (its secret is then a wrong password); without
    ``metrics``, nothing is counted. ``more`` are further ways in, asked after these.

    The order: an access token's secret (any password starting ``tkd_at_``) is the access
    tokens' to decide, whoever's name it comes with; users.json decides the names it holds;
    federation the names of issuers.json trusts (a trust's name may be no users.json
    account) and every platform JWT presented alone; the program, when there is one, the
    others it says are its own; the directory, when there is one, the rest; the password
    file refuses what is left against a dummy hash; then refresh tokens, vouched for by the
    authenticator that issued their account's identity (the program vouches for none) or
    the access token they were issued after.
    """
    if throttle is None:
        throttle = LoginThrottle(per_account=0, per_address=0, window=1)
    cache = CredentialCache(ttl=0) if credential_cache is None else credential_cache
    policy.on_replace(lambda old, new: cache.policy_replaced(old.users, new.users))
    current = lambda: policy.current  # noqa: E731
    password_file = PasswordFile(current, passwords, cache, clock)
    vouching: list[Vouching] = [password_file]
    authenticators: list[Authenticator] = [password_file]
    on_success: list[LoginHook] = []
    if access_tokens is not None:
        authenticators.insert(0, access_tokens)
        vouching.append(access_tokens)
        on_success.append(access_tokens.used)
    if federation is not None:
        authenticators.append(federation)
    if program is not None:
        authenticators.append(program)
    if directory is not None:
        authenticators.append(directory)
        vouching.append(directory)
    authenticators.append(UnknownNames(password_file))
    renewal = None
    if refresh_tokens is not None:
        renewal = RefreshTokenLogins(refresh_tokens, vouching, current, clock)
        authenticators.append(renewal)
    authenticators.extend(more)
    return Logins(
        current=current,
        authenticators=authenticators,
        passwords=passwords,
        clock=clock,
        throttle=throttle,
        in_flight=InFlight(0) if in_flight is None else in_flight,
        renewal=renewal,
        metrics=metrics,
        on_success=on_success,
    )
