"""Issue #22's acceptance test: a new kind of credential is one module (``toy``) and one
registration (``logins_for(more=...)``); the door throttles it like every other way in."""

from __future__ import annotations

from pathlib import Path

import pytest
from policies import NOW, holder_in
from support import settled
from toy import ApiKey, ApiKeys

from tokend.login.assembly import logins_for
from tokend.login.identity import LoginRefused, LoginThrottled
from tokend.login.passwords import PasswordChecker
from tokend.login.throttle import LoginThrottle
from tokend.scope import ResourceScope
from tokend.threads import InlineRunner

CLIENT = "192.0.2.7"


def test_an_api_key_logs_in_and_gets_its_accounts_rights(tmp_path: Path) -> None:
    holder = holder_in(tmp_path, {"ci": ("unused", {"builds/*": ["pull", "push"]})})
    keys = ApiKeys({"k-123": "ci"}, lambda: holder.current)
    logins = logins_for(
        policy=holder,
        passwords=PasswordChecker(InlineRunner()),
        clock=lambda: NOW,
        more=[keys],
    )
    login = settled(logins.login(ApiKey("k-123"), CLIENT))
    assert (login.identity.account, login.identity.source) == ("ci", "api keys")
    policy = login.policy
    scope = ResourceScope("repository", "builds/app", ("pull", "push", "delete"))
    assert policy.grant("ci", scope, policy.rights(login.identity)) == ("pull", "push")
    assert keys.asked == ["k-123"]


def test_the_throttle_counts_wrong_api_keys_against_the_address(tmp_path: Path) -> None:
    holder = holder_in(tmp_path, {"ci": ("unused", {})})
    keys = ApiKeys({"k-123": "ci"}, lambda: holder.current)
    throttle = LoginThrottle(per_account=5, per_address=2, window=300)
    logins = logins_for(
        policy=holder,
        passwords=PasswordChecker(InlineRunner()),
        clock=lambda: NOW,
        throttle=throttle,
        more=[keys],
    )
    for guess in ("k-1", "k-2"):
        with pytest.raises(LoginRefused):
            settled(logins.login(ApiKey(guess), CLIENT))
    with pytest.raises(LoginThrottled) as refused:
        logins.login(ApiKey("k-123"), CLIENT)
    assert refused.value.by == "address"
    assert keys.asked == ["k-1", "k-2"], "a throttled key is not looked up"
    assert settled(logins.login(ApiKey("k-123"), "198.51.100.1")).identity.account == "ci"
