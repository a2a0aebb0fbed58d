"""Where the authenticators are put in order behind the door: the one place a new kind of
credential is registered (STYLE rule 14). The daemon and the tests build :class:`Logins`
here, from ready collaborators."""

from __future__ import annotations

from collections.abc import Callable

from tokend.login.credential_cache import CredentialCache
from tokend.login.in_flight import InFlight
from tokend.login.logins import AccountDirectory, Logins
from tokend.login.password_file import PasswordFile
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.throttle import LoginThrottle
from tokend.metrics.instruments import NO_METRICS, RequestMetrics
from tokend.policy.holder import PolicyHolder


def logins_for(
    *,
    policy: PolicyHolder,
    passwords: PasswordChecker,
    clock: Callable[[], float],
    throttle: LoginThrottle | None = None,
    credential_cache: CredentialCache | None = None,
    in_flight: InFlight | None = None,
    directory: AccountDirectory | None = None,
    refresh_tokens: RefreshTokens | None = None,
    metrics: RequestMetrics = NO_METRICS,
) -> Logins:
    """Without ``throttle``, ``credential_cache`` or ``in_flight`` there is no throttling,
    caching or per-address share of the bcrypt queue; without ``directory``, names not in
    users.json are unknown; without ``metrics``, nothing is counted."""
    if throttle is None:
        throttle = LoginThrottle(per_account=0, per_address=0, window=1)
    cache = CredentialCache(ttl=0) if credential_cache is None else credential_cache
    policy.on_replace(lambda old, new: cache.policy_replaced(old.users, new.users))
    return Logins(
        current=lambda: policy.current,
        password_file=PasswordFile(lambda: policy.current, passwords, cache, clock),
        passwords=passwords,
        clock=clock,
        throttle=throttle,
        in_flight=InFlight(0) if in_flight is None else in_flight,
        directory=directory,
        refresh_tokens=refresh_tokens,
        metrics=metrics,
    )
