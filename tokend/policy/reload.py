"""Re-reading the policy files: parsed off the reactor thread, swapped in on it.

A reload that fails keeps the policy in force and logs where the files are wrong; /healthz shows
the failure until a good edit arrives. Requests during a reload coalesce into one more run.
Stopping the service gives up the load in progress, so the daemon's stop need not wait for it.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from threading import Event
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from tokend.coalescing import Coalescing
from tokend.policy.changes import PolicyChange, policy_change
from tokend.policy.files import (
    GROUPS_FILE,
    POLICY_FILES,
    REPOSITORIES_FILE,
    USERS_FILE,
    LoadedPolicy,
    Loader,
    LoadStopped,
    load_policy,
)
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import PolicyError
from tokend.policy.trusts import ISSUERS_FILE
from tokend.threads import ThreadRunner

MAX_LOAD_ATTEMPTS = 5


def keep_out_of_gc() -> None:
    """Move what is alive now, the new policy above all, out of the cyclic collector's reach.

    A large policy is hundreds of thousands of long-lived objects without cycles; a full
    collection walking them stalls the reactor for a quarter of a second. Reference counting
    still frees an old policy once nothing refers to it.
    """
    gc.freeze()


def _targets(config_dir: Path) -> tuple[str, ...]:
    """Where the policy file names point right now (through a ConfigMap's ``..data`` link)."""
    return tuple(os.path.realpath(config_dir / name) for name in POLICY_FILES)


def load_settled(config_dir: Path, stop: Event | None = None) -> LoadedPolicy:
    """:func:`load_policy`, again if a symlink swap moved the files between the two reads.

    The files are read one after the other; a Kubernetes ``..data`` swap landing in between
    would otherwise give users.json from one version and repositories.json from the other.
    """
    for _ in range(MAX_LOAD_ATTEMPTS):
        before = _targets(config_dir)
        try:
            loaded = load_policy(config_dir, stop)
        except PolicyError:
            if _targets(config_dir) == before:
                raise
            continue  # e.g. the old version's directory was deleted under the read
        if _targets(config_dir) == before:
            return loaded
    raise PolicyError(
        str(config_dir), "", f"the policy files were swapped during {MAX_LOAD_ATTEMPTS} reads"
    )


class Clock(Protocol):
    def seconds(self) -> float: ...


class PolicyReloader(Service):
    """Runs at most one load at a time; a trigger during a load schedules exactly one more.

    A service so that its stop, before the thread pool's (which joins the thread), can end a
    load in progress: a large file is given up between two entries.
    """

    log = Logger()

    def __init__(
        self,
        config_dir: Path,
        holder: PolicyHolder,
        clock: Clock,
        threads: ThreadRunner,
        load: Loader = load_settled,
    ) -> None:
        """``load`` reads the files (on ``threads``); a PolicyError from it keeps the policy
        serving, as a broken file does."""
        self._load = load
        self._config_dir = config_dir
        self._holder = holder
        self._clock = clock
        self._threads = threads
        self._coalescing = Coalescing(self._load_once, self.log, "policy reload")
        self._stopping = Event()

    def stopService(self) -> None:
        super().stopService()
        self._stopping.set()

    def reload(self, reason: str) -> Deferred[None]:
        """Load the files now (or right after the load in progress); fires when applied."""
        return self._coalescing(reason)

    async def _load_once(self, reason: str) -> None:
        now = self._clock.seconds
        try:
            loaded: LoadedPolicy = await self._threads.run(
                self._load, self._config_dir, self._stopping
            )
        except LoadStopped:
            self.log.info(
                "policy reload ({reason}) abandoned: the service is stopping", reason=reason
            )
            return
        except PolicyError as e:
            self._holder.record_failure(str(e), now())
            self.log.error(
                "policy reload ({reason}) failed, keeping generation {generation}: {error}",
                reason=reason,
                generation=self._holder.generation,
                error=str(e),
                file=e.file,
                line=e.line,
                column=e.column,
                path=e.path,
                why=e.reason,
            )
            return
        except Exception as e:
            self._holder.record_failure(f"unexpected error: {e!r}", now())
            self.log.failure(
                "policy reload ({reason}) failed unexpectedly, keeping generation {generation}",
                reason=reason,
                generation=self._holder.generation,
            )
            return
        old = self._holder.current
        change = policy_change(old, loaded.policy)
        generation = self._holder.replace(loaded.policy, now())
        keep_out_of_gc()
        for warning in loaded.warnings:
            self.log.warn("policy warning: {warning}", warning=warning)
        files = changed_files(change)
        self.log.info(
            "policy reloaded ({reason}): generation {generation}, {users} users; {summary}",
            reason=reason,
            generation=generation,
            users=len(loaded.policy.users),
            summary="; ".join(
                f"{name}: {what}" if what else f"{name} unchanged" for name, what in files.items()
            ),
            files=[name for name, what in files.items() if what],
            added=list(change.added),
            removed=list(change.removed),
            changed=list(change.changed),
            edited=list(change.edited),
            groups_added=list(change.groups_added),
            groups_removed=list(change.groups_removed),
            groups_changed=list(change.groups_changed),
            trusts_added=list(change.trusts_added),
            trusts_removed=list(change.trusts_removed),
            trusts_changed=list(change.trusts_changed),
            trusts_regrouped=list(change.trusts_regrouped),
            anonymous="changed" if change.anonymous_changed else "unchanged",
        )


def changed_files(change: PolicyChange) -> dict[str, str]:
    """Each policy file, and what changed in it ("" when nothing did); issuers.json only when
    there are trusts, before or after."""

    def names(**lists: tuple[str, ...]) -> str:
        return ", ".join(f"{what} {list(listed)}" for what, listed in lists.items() if listed)

    files = {
        USERS_FILE: names(added=change.added, removed=change.removed, changed=change.edited),
        GROUPS_FILE: names(
            added=change.groups_added, removed=change.groups_removed, changed=change.groups_changed
        ),
        REPOSITORIES_FILE: "anonymous rules changed" if change.anonymous_changed else "",
    }
    if change.with_trusts:
        files[ISSUERS_FILE] = names(
            added=change.trusts_added,
            removed=change.trusts_removed,
            changed=change.trusts_changed,
            **{"trusts whose groups changed": change.trusts_regrouped},
        )
    return files
