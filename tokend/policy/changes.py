"""What a reload changed, for the log line that confirms it: users, groups and trusts added,
removed or altered, and whether the anonymous rules moved. Compares two :class:`Policy` values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tokend.policy.model import Policy


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What a reload changed, for the log line that confirms it."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    """Users whose rights changed: their entry in users.json, or the rules of a group of theirs."""
    anonymous_changed: bool
    edited: tuple[str, ...] = ()
    """Users whose entry in users.json changed."""
    groups_added: tuple[str, ...] = ()
    groups_removed: tuple[str, ...] = ()
    groups_changed: tuple[str, ...] = ()
    trusts_added: tuple[str, ...] = ()
    trusts_removed: tuple[str, ...] = ()
    trusts_changed: tuple[str, ...] = ()
    """Trusts whose entry in issuers.json changed."""
    trusts_regrouped: tuple[str, ...] = ()
    """Trusts whose entry is as it was but one of whose groups' rules changed."""
    with_trusts: bool = False
    """Whether either policy has trusts: without, issuers.json goes unmentioned."""

    def __bool__(self) -> bool:
        return bool(
            self.added
            or self.removed
            or self.changed
            or self.anonymous_changed
            or self.groups_added
            or self.groups_removed
            or self.groups_changed
            or self.trusts_added
            or self.trusts_removed
            or self.trusts_changed
            or self.trusts_regrouped
        )


def _differences(
    old: Mapping[str, object], new: Mapping[str, object]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Names added, removed, and kept with another value."""
    kept = old.keys() & new.keys()
    return (
        tuple(sorted(new.keys() - old.keys())),
        tuple(sorted(old.keys() - new.keys())),
        tuple(sorted(name for name in kept if old[name] != new[name])),
    )


def policy_change(old: Policy, new: Policy) -> PolicyChange:
    """Users added, removed or altered (hash, rights or a group's rules), groups and trusts
    added, removed or altered, and whether anonymous rules moved."""
    added, removed, edited = _differences(old.users, new.users)
    groups_added, groups_removed, groups_changed = _differences(old.groups, new.groups)
    trusts_added, trusts_removed, trusts_changed = _differences(old.trusts, new.trusts)
    return PolicyChange(
        added=added,
        removed=removed,
        changed=tuple(
            sorted(
                name
                for name in old.users.keys() & new.users.keys()
                if old.users[name] != new.users[name]
                or any(
                    old.groups.get(group) != new.groups.get(group)
                    for group in new.users[name].groups
                )
            )
        ),
        anonymous_changed=old.anonymous != new.anonymous,
        edited=edited,
        groups_added=groups_added,
        groups_removed=groups_removed,
        groups_changed=groups_changed,
        trusts_added=trusts_added,
        trusts_removed=trusts_removed,
        trusts_changed=trusts_changed,
        with_trusts=bool(old.trusts or new.trusts),
        trusts_regrouped=tuple(
            sorted(
                name
                for name in old.trusts.keys() & new.trusts.keys()
                if name not in trusts_changed
                and any(
                    old.groups.get(group) != new.groups.get(group)
                    for group in new.trusts[name].groups
                )
            )
        ),
    )
