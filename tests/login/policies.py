"""Policies for the login unit tests, written as files and loaded the way the daemon loads
them (so the tests do not depend on how parsing is split up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import write_policy

from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import Policy

NOW = 1_800_000_000.0


def policy_in(
    directory: Path,
    users: dict[str, tuple[str, dict[str, list[str]]]],
    groups: dict[str, Any] | None = None,
) -> Policy:
    """users: name -> (password, repository rules), hashed at bcrypt cost 4."""
    write_policy(directory, users)
    if groups is not None:
        (directory / "groups.json").write_text(json.dumps(groups))
    return load_policy(directory).policy


def holder_in(
    directory: Path,
    users: dict[str, tuple[str, dict[str, list[str]]]],
    groups: dict[str, Any] | None = None,
) -> PolicyHolder:
    return PolicyHolder(policy_in(directory, users, groups), NOW)
