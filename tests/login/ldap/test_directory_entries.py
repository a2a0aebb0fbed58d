"""What an entry's operational attributes and a password policy say, for the three kinds of
directory (pure; OpenLDAP's side is also tested against slapd in test_directory_policy.py,
389-DS and Active Directory only here, by their documentation)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokend.login.ldap.entries import (
    EntryState,
    LockoutPolicy,
    entry_state,
    legacy_binding,
    lockout_policy,
    lockout_warning,
    moment,
)

DN = "uid=mozart,ou=musicians,dc=example,dc=com"
UUID = "420a1120-82c8-1041-84a5-69829c075131"


def state(**attributes: str) -> EntryState:
    return entry_state({name.lower(): [value] for name, value in attributes.items()})


@pytest.mark.parametrize(
    ("attributes", "inactive"),
    [
        ({}, None),
        ({"pwdAccountLockedTime": "000001010000Z"}, "pwdAccountLockedTime"),
        ({"pwdAccountLockedTime": "20250101120000Z"}, "pwdAccountLockedTime"),
        ({"nsAccountLock": "TRUE"}, "nsAccountLock"),
        ({"nsAccountLock": "false"}, None),
        ({"userAccountControl": "512"}, None),  # a normal account
        ({"userAccountControl": "514"}, "disabled (userAccountControl)"),  # + ACCOUNTDISABLE
        ({"msDS-User-Account-Control-Computed": "16"}, "locked out"),
        ({"msDS-User-Account-Control-Computed": "0"}, None),
        ({"userAccountControl": "not a number"}, None),
    ],
)
def test_locked_and_disabled_entries(attributes: dict[str, str], inactive: str | None) -> None:
    found = state(**attributes).inactive
    if inactive is None:
        assert found is None
    else:
        assert found is not None and inactive in found


def test_the_binding_follows_the_entry_id_and_the_password_time() -> None:
    first = state(entryUUID=UUID, pwdChangedTime="20250101120000Z")
    spelled_otherwise = state(entryUUID=UUID.upper(), pwdChangedTime="20250101120000Z")
    assert first.binding(DN) == spelled_otherwise.binding(DN.upper().replace(",", ", "))
    others = [
        state(entryUUID=UUID, pwdChangedTime="20250101120001Z"),  # a new password
        state(entryUUID="00000000-0000-0000-0000-000000000000", pwdChangedTime="20250101120000Z"),
        state(entryUUID=UUID),  # the password time gone
    ]
    assert len({first.binding(DN), *(other.binding(DN) for other in others)}) == 4
    assert first.binding(DN) != first.binding(DN.replace("mozart", "bach"))
    assert first.binding(DN) != legacy_binding(DN)
    ad = state(objectGUID="0f1e2d3c4b5a69788796a5b4c3d2e1f0", pwdLastSet="133800000000000000")
    assert ad.stable_id == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    other_ad = state(objectGUID="00" * 16, pwdLastSet="133800000000000000")
    assert ad.binding(DN) != other_ad.binding(DN)
    no_id = state(createTimestamp="20250101120000Z")
    assert no_id.binding(DN) != state(createTimestamp="20250202120000Z").binding(DN)


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("20250630120000Z", datetime(2025, 6, 30, 12, tzinfo=UTC).timestamp()),
        ("20250630120000.25Z", datetime(2025, 6, 30, 12, tzinfo=UTC).timestamp() + 0.25),
        ("20250630120000.0Z", datetime(2025, 6, 30, 12, tzinfo=UTC).timestamp()),
        # pwdLastSet: 100 ns intervals since 1601-01-01
        ("133957584000000000", datetime(2025, 6, 30, 12, tzinfo=UTC).timestamp()),
        ("20250630120000", None),
        ("yesterday", None),
        ("", None),
        ("20251330120000Z", None),
    ],
)
def test_moments(text: str, when: float | None) -> None:
    assert moment(text) == when


def test_dn_bound_tokens_are_honoured_after_creation_and_password_change() -> None:
    created = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    changed = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
    assert state(createTimestamp="20250101000000Z").dn_tokens_after() == created
    assert (
        state(createTimestamp="20250101000000Z", pwdChangedTime="20250301000000Z").dn_tokens_after()
        == changed
    )
    assert state().dn_tokens_after() is None, "unknown creation: refused"
    assert state(createTimestamp="20250101000000Z", pwdChangedTime="soon").dn_tokens_after() is None


def test_lockout_policies_of_each_kind() -> None:
    def policy(**attributes: str) -> LockoutPolicy | None:
        values = {name.lower(): [value] for name, value in attributes.items()}
        return lockout_policy("cn=p", values)

    assert policy(pwdLockout="TRUE", pwdMaxFailure="5", pwdFailureCountInterval="600") == (
        LockoutPolicy("cn=p", 5, 600.0)
    )
    assert policy(pwdLockout="FALSE", pwdMaxFailure="5") is None
    assert policy(pwdLockout="TRUE", pwdMaxFailure="0") is None  # ppolicy: 0 is no limit
    assert policy(passwordLockout="on", passwordMaxFailure="3") == LockoutPolicy("cn=p", 3, 600)
    assert policy(lockoutThreshold="7", lockOutObservationWindow="-18000000000") == (
        LockoutPolicy("cn=p", 7, 1800.0)
    )
    assert policy(**{"msDS-LockoutThreshold": "4"}) == LockoutPolicy("cn=p", 4, 1800.0)
    assert policy(lockoutThreshold="0") is None
    assert policy(cn="nothing") is None


def test_lockout_warnings_count_tokends_sliding_windows() -> None:
    policy = LockoutPolicy("cn=default,ou=policies", 5, 600)
    # 600 s hold three of tokend's 300 s windows: 1 a window is 3 < 5, 2 is 6.
    assert lockout_warning(policy, 1, 300) is None
    warning = lockout_warning(policy, 2, 300)
    assert warning is not None and "lets 6 failures through" in warning
    assert warning.endswith(
        "set --max-failures-per-account to 1 or less, or --failure-window above 600 s with "
        "--max-failures-per-account below 5 (failures at other services count there too: "
        "leave room)"
    )
    assert lockout_warning(policy, 4, 601) is None  # one window: 4 < 5
    one_window = lockout_warning(policy, 5, 601)
    assert one_window is not None and "; set --max-failures-per-account below 5 (" in one_window
    unlimited = lockout_warning(policy, 0, 300)
    assert unlimited is not None and "unlimited failures" in unlimited
    tight = lockout_warning(LockoutPolicy("cn=p", 2, 3600), 1, 300)
    assert tight is not None and "; set --failure-window above 3600 s with" in tight
    forever = lockout_warning(LockoutPolicy("cn=p", 5, 0), 1, 300)
    assert forever is not None and "counted until a good bind" in forever
