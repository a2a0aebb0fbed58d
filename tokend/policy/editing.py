"""Editing users.json in place (``tokend user``) without ever leaving a file the daemon refuses.

An edit reads the file once (a snapshot), changes the parsed document (key order and every key
it does not touch kept), has the daemon's own loader load the result beside copies of the other
policy files, then writes a temporary file in the same directory with the original's mode and
owner, checks that nobody changed the file meanwhile, and renames it over the original: the
daemon's live reload sees the old file or the new one, never half of either.

Only users.json is ever written: a user's group memberships are its ``groups`` list there
(groups.json holds each group's rules, not its members).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokend.durable_files import sync_directory
from tokend.policy.files import (
    GROUPS_FILE,
    MAX_POLICY_FILE_BYTES,
    POLICY_FILES,
    USERS_FILE,
    LoadedPolicy,
    load_policy,
)
from tokend.policy.model import PolicyError
from tokend.unique_json import DuplicateKey, unique_keys

PULL_PUSH = ("pull", "push")
"""What ``--push`` grants: the registry needs pull to upload, and the policy requires it."""


class EditError(Exception):
    """An edit that is not made; the message is one sentence and nothing was written."""


class ConcurrentEdit(EditError):
    """The file changed between the snapshot and the rename."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """users.json as read for one edit: its bytes (to detect a concurrent edit), its parsed
    document, and its mode and owner (for the file that replaces it)."""

    path: Path
    raw: bytes
    document: dict[str, Any]
    mode: int
    uid: int
    gid: int


def _read_regular(path: Path, follow: bool = False) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file at ``path`` (itself, unless ``follow``: no link followed),
    never waiting on a FIFO."""
    if not follow and path.is_symlink():
        raise EditError(
            f"{path} is a symbolic link (a Kubernetes ConfigMap, or a file kept elsewhere): "
            "edit it where it comes from; rewriting it here would replace the link"
        )
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise EditError(f"{path} does not exist") from None
    except OSError as e:
        raise EditError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise EditError(f"{path} is not a regular file")
        raw = stream.read(MAX_POLICY_FILE_BYTES + 1)
    if len(raw) > MAX_POLICY_FILE_BYTES:
        raise EditError(f"{path} is larger than {MAX_POLICY_FILE_BYTES} bytes")
    return raw, status


def read_users(config_dir: Path) -> Snapshot:
    """users.json as it is now; EditError when it cannot be edited in place."""
    path = config_dir / USERS_FILE
    raw, status = _read_regular(path)
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except DuplicateKey as e:  # the loader refuses it: an edit must not silently drop one
        raise EditError(f"{path}: duplicate key {json.dumps(e.key)}; fix it first") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise EditError(f"{path} is not valid JSON ({e}); fix it first") from None
    if not isinstance(document, dict):
        raise EditError(f"{path}: expected an object mapping user names to entries")
    return Snapshot(path, raw, document, stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid)


def group_names(config_dir: Path) -> list[str]:
    """The groups groups.json defines, in its order; [] when it is missing or unreadable (the
    loader then says what is wrong when the edit is checked)."""
    path = config_dir / GROUPS_FILE
    try:
        document = json.loads(_read_regular(path, follow=True)[0])
    except (EditError, ValueError, RecursionError):
        return []
    return [str(name) for name in document] if isinstance(document, dict) else []


def new_user(
    pass_hash: str, groups: Iterable[str], pull: Iterable[str], push: Iterable[str]
) -> dict[str, Any]:
    """A users.json entry: ``pull`` patterns get pull, ``push`` patterns pull and push (a
    pattern given both ways gets both), in the order given."""
    rules: dict[str, list[str]] = {pattern: ["pull"] for pattern in pull}
    rules.update({pattern: list(PULL_PUSH) for pattern in push})
    entry: dict[str, Any] = {"pass_hash": pass_hash}
    if rules:
        entry["repositories"] = rules
    memberships = list(dict.fromkeys(groups))
    if memberships:
        entry["groups"] = memberships
    return entry


def with_user(document: Mapping[str, Any], name: str, entry: dict[str, Any]) -> dict[str, Any]:
    if name in document:
        raise EditError(
            f"user {name!r} already exists; `tokend user passwd {name}` changes its password"
        )
    return {**document, name: entry}


def with_password(document: Mapping[str, Any], name: str, pass_hash: str) -> dict[str, Any]:
    """The user's ``pass_hash`` replaced where it stands; everything else as it was."""
    entry = _entry(document, name)
    return {**document, name: {**entry, "pass_hash": pass_hash}}


def without_user(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The user gone, and with it its group memberships (they are part of its entry)."""
    _entry(document, name)
    return {key: value for key, value in document.items() if key != name}


def _entry(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    entry = document.get(name)
    if entry is None:
        raise EditError(f"no user {name!r} in {USERS_FILE}; `tokend user list` shows them")
    if not isinstance(entry, dict):
        raise EditError(f"{USERS_FILE}: {name!r} is not an object; fix it first")
    return entry


def _indent(raw: bytes) -> str | int | None:
    """The original's indentation (its first indented line), or None for one-line JSON."""
    lines = raw.decode("utf-8", "replace").splitlines()
    for line in lines[1:]:
        stripped = line.lstrip(" \t")
        if stripped and stripped != line:
            leading = line[: len(line) - len(stripped)]
            return "\t" if leading.startswith("\t") else len(leading)
    return None


def serialise(document: Mapping[str, Any], like: bytes) -> bytes:
    """The document as JSON indented like the original (one line stays one line), lists of
    plain values such as ``["pull", "push"]`` kept on one line, non-ASCII names as written."""
    indent = _indent(like)
    if indent is None:
        return (json.dumps(document, ensure_ascii=False) + "\n").encode()
    pad = "\t" if indent == "\t" else " " * int(indent)
    return (_dumps(document, pad, 0) + "\n").encode()


def _dumps(value: Any, pad: str, level: int) -> str:
    if isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict | list) and value:
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        inner = pad * (level + 1)
        lines = [
            inner
            + (f"{json.dumps(key, ensure_ascii=False)}: " if key is not None else "")
            + _dumps(item, pad, level + 1)
            for key, item in items
        ]
        opening, closing = "{}" if isinstance(value, dict) else "[]"
        return opening + "\n" + ",\n".join(lines) + "\n" + pad * level + closing
    return json.dumps(value, ensure_ascii=False)


def check_loads(config_dir: Path, users: bytes) -> LoadedPolicy:
    """Load the policy the daemon would load with ``users`` as users.json, using its own
    loader over copies of the other files in a private directory; EditError naming the real
    file when it would be refused."""
    with tempfile.TemporaryDirectory(prefix="tokend-edit-") as scratch:
        trial = Path(scratch)
        (trial / USERS_FILE).write_bytes(users)
        for name in POLICY_FILES:
            source = config_dir / name
            if name != USERS_FILE and (source.is_symlink() or source.exists()):
                try:
                    shutil.copyfile(source, trial / name)
                except OSError as e:
                    raise EditError(f"cannot read {source}: {e.strerror or e}") from None
        try:
            return load_policy(trial)
        except PolicyError as e:
            real = str(config_dir / Path(e.file).name)
            refusal = PolicyError(real, e.path, e.reason, e.line, e.column)
            raise EditError(f"{refusal}; nothing was written") from None


def write_users(snapshot: Snapshot, document: Mapping[str, Any]) -> LoadedPolicy:
    """Replace users.json with ``document`` once the daemon's loader accepts the result and
    only if the file still holds what the snapshot read; returns the policy it loads to."""
    path = snapshot.path
    data = serialise(document, snapshot.raw)
    loaded = check_loads(path.parent, data)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".edit")
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), snapshot.mode)
            _keep_owner(stream.fileno(), snapshot, path)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        current, _ = _read_regular(path)
        if current != snapshot.raw:
            raise ConcurrentEdit(f"{path.name} changed while editing; run the command again")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)
    return loaded


def _keep_owner(fd: int, snapshot: Snapshot, path: Path) -> None:
    """The new file gets the old one's owner and group, or the edit is not made: a file the
    daemon's account cannot read would stop every reload."""
    status = os.fstat(fd)
    if (status.st_uid, status.st_gid) == (snapshot.uid, snapshot.gid):
        return
    try:
        os.fchown(fd, snapshot.uid, snapshot.gid)
    except PermissionError:
        raise EditError(
            f"cannot give the new {path.name} its owner {snapshot.uid}:{snapshot.gid}; run as "
            "root or as that owner"
        ) from None
