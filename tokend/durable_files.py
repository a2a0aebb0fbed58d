"""Making a file's new name survive a crash: the directory that holds it, synced.

A rename (an atomic replacement) or a new file is durable only once its directory's entry is on
disk; the policy editor and the keys directory both write a file and then a state naming it.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """fsync ``directory``: the names created or renamed in it so far survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
