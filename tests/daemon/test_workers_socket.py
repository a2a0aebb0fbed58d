"""``--workers N`` on a UNIX socket with the real twistd: the socket keeps the mode, group and
backlog the daemon's first process gave it, after the workers adopt it and after a worker is
replaced (Twisted's adopted UNIX port chmods the path to 0666 and listens again with a backlog
of 50)."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from daemons import Daemon, start, worker_pids
from support import stop_process, wait_for


def listen_backlog(sock: Path) -> int | None:
    """The listening socket's backlog as the kernel has it (``ss``'s Send-Q), if ss is here."""
    if shutil.which("ss") is None:
        return None
    listing = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if str(sock) in fields:
            return int(fields[3])
    raise AssertionError(f"{sock} is not listening: {listing}")


def socket_state(daemon: Daemon) -> tuple[int, int, int | None]:
    status = daemon.sock.stat()
    assert stat.S_ISSOCK(status.st_mode)
    return stat.S_IMODE(status.st_mode), status.st_gid, listen_backlog(daemon.sock)


@pytest.mark.parametrize(
    ("mode", "expected"), [(":mode=600", 0o600), ("", 0o660)], ids=["mode=600", "default"]
)
def test_workers_keep_the_sockets_mode_group_and_backlog(
    tmp_path: Path, mode: str, expected: int
) -> None:
    sock = tmp_path / "run" / "tokend.sock"
    extra = ["--listen", f"unix:{sock}{mode}"]
    group: int | None = None
    if os.geteuid() == 0 and not mode:
        group = grp.getgrnam("nogroup").gr_gid
        extra += ["--socket-group", "nogroup"]
    daemon = start(tmp_path, *extra)
    try:
        wanted = (expected, os.getegid() if group is None else group, 1024)
        state = socket_state(daemon)
        assert state == (wanted if state[2] is not None else (*wanted[:2], None))

        parent = daemon.process.pid
        before = worker_pids(parent)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_for("a replacement", lambda: len(worker_pids(parent) - {victim}) == 2)
        (replacement,) = worker_pids(parent) - before
        wait_for("it serves", lambda: f"ready, pid {replacement}" in daemon.log_text())
        assert socket_state(daemon) == state
    finally:
        stop_process(daemon.process)
