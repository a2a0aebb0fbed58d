"""Reading the policy files from the config directory into one validated :class:`Policy`.

Only regular files, up to a bound, parsed so that the reactor thread keeps running meanwhile
and a stopping daemon need not wait for the end of a large file.
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
from _json import scanstring
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from types import MappingProxyType
from typing import Any

from tokend.policy.documents import (
    anonymous_from_document,
    groups_from_document,
    users_from_document,
)
from tokend.policy.model import Policy, PolicyError
from tokend.policy.report import (
    group_override_warnings,
    hash_cost_warnings,
    unused_rule_warnings,
)
from tokend.policy.trusts import ISSUERS_FILE, trusts_from_document
from tokend.unique_json import DuplicateKey, unique_keys

USERS_FILE = "users.json"
REPOSITORIES_FILE = "repositories.json"
GROUPS_FILE = "groups.json"
POLICY_FILES = (USERS_FILE, REPOSITORIES_FILE, GROUPS_FILE, ISSUERS_FILE)
"""Every file a policy is read from; groups.json and issuers.json are optional."""
MAX_POLICY_FILE_BYTES = 64 * 1024 * 1024
"""Three times the largest policy measured (100,000 users with rules of their own: 20 MB, see
bench/RESULTS.md), so no real policy meets it; it bounds what a wrong file (a log, a disk
image) costs at every reload: a second or two of parsing and a few hundred MB, not minutes."""


_NONE: Mapping[str, Any] = MappingProxyType({})


class LoadStopped(Exception):
    """The daemon is stopping: the load in progress was given up, nothing was loaded."""


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    warnings: tuple[str, ...]


Loader = Callable[[Path, Event | None], LoadedPolicy]
"""Reads the policy in a directory, giving up (:class:`LoadStopped`) once the event is set."""


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


def load_policy(config_dir: Path, stop: Event | None = None) -> LoadedPolicy:
    """Read and validate the files together; raises :class:`PolicyError` naming the culprit,
    or :class:`LoadStopped` soon after ``stop`` is set.

    Every file is re-read by path on every call, so symlink swaps are followed. groups.json is
    optional: without it there are no groups, and users.json keeps its seed meaning.
    """
    with _without_cyclic_gc():
        return _load_policy(config_dir, stop)


def _load_policy(config_dir: Path, stop: Event | None) -> LoadedPolicy:
    users_file = config_dir / USERS_FILE
    repositories_file = config_dir / REPOSITORIES_FILE
    groups_file = config_dir / GROUPS_FILE
    groups = (
        groups_from_document(read_json(groups_file, stop), str(groups_file))
        if _exists(groups_file)
        else None
    )
    users = users_from_document(read_json(users_file, stop), str(users_file), groups)
    anonymous, warnings = anonymous_from_document(
        read_json(repositories_file, stop), str(repositories_file)
    )
    issuers_file = config_dir / ISSUERS_FILE
    trusts = (
        trusts_from_document(
            read_json(issuers_file, stop), str(issuers_file), config_dir, groups or {}, users
        )
        if _exists(issuers_file)
        else None
    )
    policy = Policy(users, anonymous, groups or _NONE, trusts or _NONE)
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


def read_json(path: Path, stop: Event | None = None, limit: int = MAX_POLICY_FILE_BYTES) -> object:
    """Parse one JSON file; a syntax error is located by line and column."""
    text = _read_text(path, limit)
    try:
        return PolicyDecoder(stop).decode(text)
    except json.JSONDecodeError as e:
        raise PolicyError(str(path), "", e.msg, e.lineno, e.colno) from None
    except RecursionError:
        raise PolicyError(str(path), "", "nested too deeply to be a policy") from None
    except DuplicateKey as e:
        raise PolicyError(str(path), "", f"duplicate key {json.dumps(e.key)}") from None
    except ValueError as e:  # a number of more than 4300 digits
        raise PolicyError(str(path), "", str(e)) from None


def _read_text(path: Path, limit: int) -> str:
    """The file's text, if it is a regular file (or a link to one) of at most ``limit`` bytes.

    Opening a FIFO would wait for a writer, for ever: the reload thread with it, every later
    reload behind it and the daemon's stop, which joins that thread. O_NONBLOCK opens it at
    once, and fstat tells what was opened.
    """
    too_large = (
        f"larger than {limit} bytes ({limit / 2**20:g} MiB), the most a policy file may hold"
    )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise PolicyError(str(path), "", "file not found") from None
    except OSError as e:  # a socket, for one, cannot be opened (ENXIO)
        raise PolicyError(
            str(path), "", _not_regular(path) or f"cannot read: {e.strerror}"
        ) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise PolicyError(str(path), "", f"not a regular file ({_kind(status.st_mode)})")
        if status.st_size > limit:
            raise PolicyError(str(path), "", too_large)
        with open(fd, "rb", closefd=False) as stream:
            raw = stream.read(limit + 1)  # /proc files say 0 bytes; a file may grow meanwhile
    except OSError as e:
        raise PolicyError(str(path), "", f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise PolicyError(str(path), "", too_large)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(str(path), "", f"not UTF-8 (byte offset {e.start})") from None


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), f"file type {stat.S_IFMT(mode):o}")


def _not_regular(path: Path) -> str | None:
    """Why a file that could not be opened is no policy file, if it is not a regular one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else f"not a regular file ({_kind(mode)})"


_WHITESPACE = re.compile(r"[ \t\n\r]*")
WALKED_LEVELS = 3
"""How deep :class:`PolicyDecoder` walks itself: through the users (or groups), an entry, and
its rules map in users.json and groups.json, and through the rules of repositories.json."""


class PolicyDecoder:
    """``json.loads`` (duplicate keys refused) that lets other threads run while it works.

    json's C decoder holds the GIL until it calls back into Python (here at the end of each
    object): a long stretch without one, such as a list of 2 million anonymous rules or one
    user with 2 million rules, froze the reactor for seconds. Here the top three levels are
    walked in Python and the C decoder is handed one value below them at a time (``scan``):
    one rule's actions, one hash. Between two of them the interpreter may switch to the
    reactor thread, and ``stop`` is checked. The result, or the error and its position, is
    json.loads's; tests/policy/test_policy_files.py compares the two on generated and mangled texts.
    """

    def __init__(self, stop: Event | None = None) -> None:
        self._stop = stop
        self.scan = json.JSONDecoder(object_pairs_hook=unique_keys).raw_decode

    def decode(self, text: str) -> object:
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value, end = self._value(text, _skip(text, 0), 0)
        end = _skip(text, end)
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
        return value

    def _value(self, text: str, start: int, level: int) -> tuple[object, int]:
        if self._stop is not None and self._stop.is_set():
            raise LoadStopped()
        if level < WALKED_LEVELS:
            opening = text[start : start + 1]
            if opening == "{":
                return self._object(text, start + 1, level + 1)
            if opening == "[":
                return self._array(text, start + 1, level + 1)
        return self.scan(text, start)

    def _object(self, text: str, at: int, level: int) -> tuple[object, int]:
        """As _json.c's _parse_object_unicode, from just after the ``{``. The dict grows entry
        by entry (``dict(pairs)`` of 100,000 users would be one more long C call), and a key
        written twice is refused at the ``}``, as json.loads refuses it."""
        members: dict[str, object] = {}
        twice: list[str] = []
        at = _skip(text, at)
        if text[at : at + 1] == "}":
            return members, at + 1
        while True:
            if text[at : at + 1] != '"':
                raise json.JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, at
                )
            key, at = scanstring(text, at + 1)
            at = _skip(text, at)
            if text[at : at + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, at)
            value, at = self._value(text, _skip(text, at + 1), level)
            if key in members:
                twice.append(key)
            members[key] = value
            at = _skip(text, at)
            if text[at : at + 1] == "}":
                if twice:
                    raise DuplicateKey(twice[0])
                return members, at + 1
            if text[at : at + 1] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
            at = _skip(text, at + 1)

    def _array(self, text: str, at: int, level: int) -> tuple[object, int]:
        """As _json.c's _parse_array_unicode, from just after the ``[``."""
        values: list[object] = []
        at = _skip(text, at)
        if text[at : at + 1] == "]":
            return values, at + 1
        while True:
            value, at = self._value(text, at, level)
            values.append(value)
            at = _skip(text, at)
            if text[at : at + 1] == "]":
                return values, at + 1
            if text[at : at + 1] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
            at = _skip(text, at + 1)


def _skip(text: str, at: int) -> int:
    """Past the JSON whitespace at ``at``."""
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()
