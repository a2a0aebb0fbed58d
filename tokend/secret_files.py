"""Secrets read from files (the directory's bind password, Redis's password): one rule for all
of them, the signing key's own. A secret never comes from the command line, where every local
user can read it in the process list."""

from __future__ import annotations

import stat
from pathlib import Path


def loose_mode(path: Path) -> int | None:
    """The file's mode when group or others may touch it (a secret must be 0600), else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def refuse_loose(path: str | Path, what: str) -> None:
    """ValueError with the sentence naming ``what`` (e.g. "key") when group or others may read
    the file: one check for the key and every secret file, --allow-loose-key-permissions
    skipping it."""
    mode = loose_mode(Path(path))
    if mode is not None:
        raise ValueError(
            f"{what} {path} is readable by others (mode {mode:04o}); "
            f"run chmod 600 {path} or pass --allow-loose-key-permissions"
        )


def read_secret(path: str, what: str, allow_loose: bool = False) -> bytes:
    """The secret in the file ``what`` names (e.g. "bind password file"): one trailing line
    break stripped (editors add one), refused with a sentence naming ``what`` when the file is
    missing, unreadable, empty or readable by group or others."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None
    if not allow_loose:
        refuse_loose(path, what)
    for ending in (b"\r\n", b"\n", b"\r"):
        if data.endswith(ending):
            data = data[: -len(ending)]
            break
    if not data:
        raise ValueError(f"{what} {path} is empty")
    return data
