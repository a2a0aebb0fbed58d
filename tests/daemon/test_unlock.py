"""``tokend unlock``: a lockout ended now, through the daemon's control socket.

In memory: which keys an account or an address names, what the control socket answers, where
the tool looks for the socket. For real: a ``--workers 2`` daemon with an account locked in both
workers admits it in both after ``tokend unlock``, and so does an address.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import ACCOUNT_LIMIT, Daemon, start, worker_pids
from support import REPO, parsed_options, parsed_settings, settled, stop_process
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.usage import UsageError as OptionsError

from tokend.cli import main
from tokend.cli.common import UsageError
from tokend.cli.unlock import control_path, described
from tokend.daemon.control import Unlocking, _ControlFactory, single_process
from tokend.login.shared_limits.keys import SharedKeys
from tokend.login.throttle import LoginThrottle

NOW = 1_800_000_000.0


def keyed_throttle() -> tuple[LoginThrottle, SharedKeys]:
    keys = SharedKeys(b"secret")
    throttle = LoginThrottle(per_account=2, per_address=2, window=300, keys=keys.name)
    return throttle, keys


def lock(throttle: LoginThrottle, account: str, address: str) -> None:
    for _ in range(2):
        assert throttle.admit(account, address, NOW) is None
        throttle.failed(account, address, NOW)
    assert throttle.admit(account, "192.0.2.250", NOW) is not None


def unlocked(unlocking: Unlocking, table: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = settled(Deferred.fromCoroutine(unlocking.unlock(table, name)))
    return result


def test_an_account_is_unlocked_as_typed_and_as_the_directory_spells_it() -> None:
    throttle, keys = keyed_throttle()
    lock(throttle, "mozart", "192.0.2.1")
    lock(throttle, "Bach", "192.0.2.2")
    unlocking = Unlocking(keys, single_process(throttle.unlock))
    answer = unlocked(unlocking, "account", "Mozart")
    assert answer == {
        "unlocked": "account", "name": "Mozart", "cleared": 2, "processes": 1, "redis": None,
        "redis_configured": False,
    }  # fmt: skip
    assert throttle.admit("mozart", "192.0.2.9", NOW) is None
    assert throttle.admit("Bach", "192.0.2.9", NOW) is not None, "only the account named"
    assert unlocked(unlocking, "account", "Bach")["cleared"] == 2


def test_an_ipv6_address_unlocks_its_64() -> None:
    throttle, keys = keyed_throttle()
    for account, address in (("a", "2001:db8:1:2::1"), ("b", "2001:db8:1:2::2")):
        assert throttle.admit(account, address, NOW) is None
        throttle.failed(account, address, NOW)
    unlocking = Unlocking(keys, single_process(throttle.unlock))
    assert throttle.admit("c", "2001:db8:1:2::3", NOW) is not None, "the /64 is locked"
    assert unlocked(unlocking, "address", "2001:db8:1:3::1")["cleared"] == 0, "another /64"
    assert unlocked(unlocking, "address", "2001:db8:1:2::ffff")["cleared"] == 2
    assert throttle.admit("c", "2001:db8:1:2::3", NOW) is None


def answer_of(request: bytes, unlocking: Unlocking) -> dict[str, Any]:
    protocol = _ControlFactory(unlocking).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    assert transport.disconnecting, "one answer, then the connection closes"
    line = transport.value()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    result: dict[str, Any] = json.loads(line)
    return result


def test_the_control_socket_answers_one_json_line() -> None:
    throttle, keys = keyed_throttle()
    lock(throttle, "alice", "192.0.2.1")
    unlocking = Unlocking(keys, single_process(throttle.unlock))
    answer = answer_of(b'{"unlock": "account", "name": "alice"}\n', unlocking)
    assert answer["cleared"] == 2 and answer["unlocked"] == "account"
    assert answer_of(b"not json\n", unlocking) == {
        "error": 'expected {"unlock": "account" or "address", "name": ...}'
    }
    assert answer_of(b'{"unlock": "address", "name": "nowhere"}\n', unlocking) == {
        "error": "'nowhere' is not an IP address"
    }
    assert answer_of(b'{"unlock": "group", "name": "x"}\n', unlocking) == {
        "error": "unlock what? account or address"
    }
    assert answer_of(b"x" * 5000, unlocking) == {"error": "request too long"}


def test_what_the_tool_prints() -> None:
    answer = {"unlocked": "account", "name": "alice", "cleared": 10, "processes": 2}
    assert described(answer) == "unlocked account alice: 10 failures cleared (2 processes)"
    shared = {**answer, "redis": {"cleared": 10, "told": 1}, "redis_configured": True}
    assert described(shared).endswith("; Redis: 10 failures cleared, 1 other daemon told")
    away = {**answer, "redis": None, "redis_configured": True}
    assert described(away).endswith("other daemons keep their count until the window ends")


def path_of(*argv: str, **environ: str) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen")
    parser.add_argument("--control")
    return control_path(parser.parse_args(argv), environ)


def test_the_tool_finds_the_control_socket_as_the_daemon_places_it() -> None:
    assert path_of() == "run/tokend.sock.control"
    assert path_of("--listen", "unix:/srv/t.sock:mode=660") == "/srv/t.sock.control"
    assert path_of("--control", "/srv/c") == "/srv/c"
    assert path_of(TOKEND_LISTEN="unix:/a/b.sock") == "/a/b.sock.control"
    assert path_of(TOKEND_CONTROL_SOCKET="/x", TOKEND_LISTEN="unix:/a/b.sock") == "/x"
    assert path_of("--listen", "unix:/a/c.sock", TOKEND_CONTROL_SOCKET="/x") == "/a/c.sock.control"
    with pytest.raises(UsageError, match="--control PATH"):
        path_of("--listen", "tcp:5001")
    with pytest.raises(UsageError, match="no control socket"):
        path_of(TOKEND_CONTROL_SOCKET="off")


def test_the_daemon_places_its_control_socket(tmp_path: Path) -> None:
    sock = tmp_path / "t.sock"
    settings = parsed_settings(tmp_path, "--listen", f"unix:{sock}")
    assert settings.listen.control_socket == f"{sock}.control"
    assert parsed_settings(tmp_path).listen.control_socket is None, "none beside a TCP socket"
    chosen = parsed_settings(tmp_path, "--control-socket", str(tmp_path / "c.sock"))
    assert chosen.listen.control_socket == str(tmp_path / "c.sock")
    off = {"TOKEND_CONTROL_SOCKET": "off"}
    switched_off = parsed_settings(tmp_path, "--listen", f"unix:{sock}", environ=off)
    assert switched_off.listen.control_socket is None
    with pytest.raises(OptionsError, match="its directory does not exist"):
        parsed_options(tmp_path, "--control-socket", str(tmp_path / "nowhere" / "c.sock"))


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def test_the_tool_says_what_is_wrong_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("unlock") == (2, "")
    assert "name an ACCOUNT or --address ADDRESS" in capsys.readouterr().err
    assert run("unlock", "alice", "--address", "192.0.2.1") == (2, "")
    assert run("unlock", "--address", "alice", "--control", "/x") == (2, "")
    assert "is not an IP address" in capsys.readouterr().err
    assert run("unlock", "alice", "--control", str(tmp_path / "none")) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend unlock: no control socket at {tmp_path / 'none'}: is the daemon running? "
        "(name its socket with --listen, or the control socket with --control)\n"
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = start(tmp_path)
    try:
        yield running
    finally:
        for pid in worker_pids(running.process.pid):
            os.kill(pid, signal.SIGCONT)
        stop_process(running.process)


def tool(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    return subprocess.run(
        [sys.executable, "-m", "tokend", "unlock", *argv],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_unlock_ends_a_lockout_in_every_worker(daemon: Daemon) -> None:
    control = Path(f"{daemon.sock}.control")
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    first, second = sorted(worker_pids(daemon.process.pid))

    def only(serving: int, stopped: int) -> None:
        os.kill(serving, signal.SIGCONT)
        os.kill(stopped, signal.SIGSTOP)
        time.sleep(0.3)  # news in flight while the other was stopped is read now

    for _ in range(ACCOUNT_LIMIT):
        assert daemon.login("alice", "wrong") == 401
    for serving, stopped in ((first, second), (second, first)):
        only(serving, stopped)
        assert daemon.login("alice", "alice-pw") == 429, f"locked in worker {serving}"
    os.kill(first, signal.SIGCONT)

    done = tool("alice", "--listen", f"unix:{daemon.sock}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "unlocked account alice: 10 failures cleared (2 processes)\n"
    # A wrong password is admitted (401, not 429) by each worker in turn: both forgot alice's
    # failures. (A right one in either would clear the other worker too, proving less.)
    for serving, stopped in ((first, second), (second, first)):
        only(serving, stopped)
        assert daemon.login("alice", "wrong") == 401, f"worker {serving} admits alice"
    os.kill(first, signal.SIGCONT)
    assert daemon.login("alice", "alice-pw") == 200
    assert "unlocked account alice (tokend unlock): 10 failures cleared" in daemon.log_text()


def test_unlock_ends_an_address_lockout(tmp_path: Path) -> None:
    running = start(tmp_path, "--max-failures-per-address", "3", workers="1")
    try:
        for name in ("alice", "bob", "carol"):
            assert running.login(name, "wrong", client="2001:db8::1") == 401
        assert running.login("bob", "bob-pw", client="2001:db8::2") == 429, "its /64 too"
        done = tool("--address", "2001:db8::99", "--control", f"{running.sock}.control")
        assert done.stdout == "unlocked address 2001:db8::99: 3 failures cleared (1 process)\n"
        assert running.login("bob", "bob-pw", client="2001:db8::1") == 200
    finally:
        stop_process(running.process)
