"""Noticing policy edits: the policy files' watch plan for :mod:`tokend.file_watch`.

The config directory itself is watched for every policy name and ``..data`` (a Kubernetes
ConfigMap swap), and each policy file's symlink chain wherever it leads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokend.file_watch import (
    DEFAULT_DEBOUNCE_SECONDS,
    MAX_DELAY_SECONDS,
    MAX_LINKS,
    Resolution,
    WatchPlan,
    WatchService,
    resolve,
    touches,
)
from tokend.policy.files import POLICY_FILES

__all__ = [
    "DEFAULT_DEBOUNCE_SECONDS",
    "MAX_DELAY_SECONDS",
    "MAX_LINKS",
    "WATCHED_NAMES",
    "PolicyWatchService",
    "Resolution",
    "resolve",
    "touches",
    "watch_plan",
]

WATCHED_NAMES = frozenset({*POLICY_FILES, "..data"})


def watch_plan(config_dir: Path) -> WatchPlan:
    """The directories whose entries decide what the policy files hold right now.

    The config directory itself (wherever it really is) for every policy name and ``..data``,
    so that a file created or swapped in is seen; then, for each policy file, the directory of
    every link on its chain and of the file it ends at (or of the first missing entry).
    """
    names: dict[str, set[str]] = {}

    def add(directory: str, name: str) -> None:
        names.setdefault(directory, set()).add(name)

    base = resolve(config_dir)
    for directory, name in base.links:
        add(directory, name)
    if base.exists:
        for name in WATCHED_NAMES:
            add(os.path.join(*base.end), name)
    for file_name in POLICY_FILES:
        resolution = resolve(config_dir / file_name)
        for directory, name in (*resolution.links, resolution.end):
            add(directory, name)
    return {directory: frozenset(entries) for directory, entries in names.items()}


class PolicyWatchService(WatchService):
    """Calls ``on_change(reason)`` once a burst of policy edits (or a SIGHUP) has settled."""

    def __init__(
        self,
        config_dir: Path,
        on_change: Callable[[str], object],
        reactor: Any,
        poll: bool = False,
        debounce: float = DEFAULT_DEBOUNCE_SECONDS,
    ) -> None:
        super().__init__(
            lambda: watch_plan(config_dir), on_change, reactor, poll, debounce, what="policy"
        )
