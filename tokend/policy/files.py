"""Reading the policy files from the config directory into one validated :class:`Policy`."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tokend.policy.model import (
    Policy,
    PolicyError,
    anonymous_from_document,
    groups_from_document,
    users_from_document,
)
from tokend.policy.report import (
    group_override_warnings,
    hash_cost_warnings,
    unused_rule_warnings,
)

USERS_FILE = "users.json"
REPOSITORIES_FILE = "repositories.json"
GROUPS_FILE = "groups.json"
POLICY_FILES = (USERS_FILE, REPOSITORIES_FILE, GROUPS_FILE)
"""Every file a policy is read from; groups.json is optional."""
MAX_POLICY_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    warnings: tuple[str, ...]


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Building a policy allocates hundreds of thousands of objects and frees almost none; the
    cyclic collector, triggered by those allocations, walked the growing heap again and again
    (more than half of a 100,000-user load). Reference counting still runs meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_policy(config_dir: Path) -> LoadedPolicy:
    """Read and validate the files together; raises :class:`PolicyError` naming the culprit.

    Every file is re-read by path on every call, so symlink swaps are followed. groups.json is
    optional: without it there are no groups, and users.json keeps its seed meaning.
    """
    with _without_cyclic_gc():
        return _load_policy(config_dir)


def _load_policy(config_dir: Path) -> LoadedPolicy:
    users_file = config_dir / USERS_FILE
    repositories_file = config_dir / REPOSITORIES_FILE
    groups_file = config_dir / GROUPS_FILE
    groups = (
        groups_from_document(read_json(groups_file), str(groups_file))
        if _exists(groups_file)
        else None
    )
    users = users_from_document(read_json(users_file), str(users_file), groups)
    anonymous, warnings = anonymous_from_document(
        read_json(repositories_file), str(repositories_file)
    )
    policy = Policy(users, anonymous, groups) if groups is not None else Policy(users, anonymous)
    return LoadedPolicy(
        policy,
        tuple(warnings)
        + hash_cost_warnings(policy, USERS_FILE)
        + unused_rule_warnings(policy)
        + group_override_warnings(policy),
    )


def _exists(path: Path) -> bool:
    """Whether an optional file is there (a dangling symlink counts, and fails to read)."""
    return path.is_symlink() or path.exists()


def read_json(path: Path) -> object:
    """Parse one JSON file; a syntax error is located by line and column."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_POLICY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(str(path), "", "file not found") from None
    except OSError as e:
        raise PolicyError(str(path), "", f"cannot read: {e.strerror}") from None
    if len(raw) > MAX_POLICY_FILE_BYTES:
        raise PolicyError(str(path), "", f"larger than {MAX_POLICY_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(str(path), "", f"not UTF-8 (byte offset {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as e:
        raise PolicyError(str(path), "", e.msg, e.lineno, e.colno) from None
    except RecursionError:
        raise PolicyError(str(path), "", "nested too deeply to be a policy") from None
    except _DuplicateKey as e:
        raise PolicyError(str(path), "", f"duplicate key {json.dumps(e.key)}") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A key written twice is most likely a mistake; JSON would silently keep the last one."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result
