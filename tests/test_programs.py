"""The runner of operators' programs, with real programs (Python and shell scripts written
here): input, output, exit status, the bare environment, the timeout, the output bound, and
the bound on programs running at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from support import write_script as script
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tokend.programs.runner import (
    PROGRAM_PATH,
    Finished,
    Program,
    ProgramFailed,
    ProgramRunner,
    ProgramsBusy,
    ProgramSlots,
)


def runner(path: str, *args: str, timeout: float = 5, at_once: int = 4) -> ProgramRunner:
    return ProgramRunner(Program(path, args, timeout), reactor, ProgramSlots(at_once))


async def pid_written(pid_file: Path) -> int:
    """The pid a program wrote to ``pid_file``, once it has (polled on the reactor)."""
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().endswith("\n"):
            return int(pid_file.read_text())
        await sleep(0.025)
    raise AssertionError("the program never wrote its pid")


def sleep(seconds: float) -> Deferred[None]:
    waiting: Deferred[None] = Deferred()
    reactor.callLater(seconds, waiting.callback, None)
    return waiting


ECHO = """
import json, os, sys
data = sys.stdin.buffer.read()
print(json.dumps({"stdin": data.decode(), "env": dict(os.environ), "argv": sys.argv[1:]}))
sys.stderr.write("a note\\n")
sys.exit(int(sys.argv[1]))
"""


@pytest_twisted.ensureDeferred
async def test_the_program_reads_its_input_and_answers_with_its_status_and_output(
    tmp_path: Path,
) -> None:
    import json

    echo = script(tmp_path, "echo.py", ECHO)
    finished = await runner(echo, "3", "--flag").run(b"alice s3cret with spaces")
    assert isinstance(finished, Finished)
    assert finished.status == 3
    said = json.loads(finished.output)
    assert said["stdin"] == "alice s3cret with spaces", "stdin is written as given, no newline"
    assert said["argv"] == ["3", "--flag"]
    assert {k: v for k, v in said["env"].items() if k != "LC_CTYPE"} == {"PATH": PROGRAM_PATH}
    assert finished.errors == b"a note\n"


@pytest_twisted.ensureDeferred
async def test_a_shell_script_runs_without_a_shell_between(tmp_path: Path) -> None:
    shell = script(
        tmp_path, "ok.sh", 'read u p\n[ "$u" = "bob" ] && echo "$p" && exit 0\nexit 1\n', "/bin/sh"
    )
    assert (await runner(shell).run(b"bob pass word")).output == b"pass word\n"
    assert (await runner(shell).run(b"eve x")).status == 1


@pytest_twisted.ensureDeferred
async def test_a_program_past_its_timeout_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hang = script(
        tmp_path,
        "hang.py",
        "import os, sys, time\n"
        "open(sys.argv[1], 'w').write(f'{os.getpid()}\\n')\n"
        "time.sleep(600)\n",
    )
    running = runner(hang, str(pid_file), timeout=1)
    outcome = Deferred.fromCoroutine(running.run(b"x"))
    pid = await pid_written(pid_file)
    assert running.pids == {pid}
    with pytest.raises(ProgramFailed, match="killed: it ran past 1 s"):
        await outcome
    assert not Path(f"/proc/{pid}").exists(), "the program is gone, reaped"
    assert running.pids == set()


@pytest_twisted.ensureDeferred
async def test_a_program_that_writes_too_much_is_killed(tmp_path: Path) -> None:
    flood = script(tmp_path, "flood.py", "import sys\nwhile True: sys.stdout.write('x' * 65536)\n")
    with pytest.raises(ProgramFailed, match="killed: it wrote more than"):
        await runner(flood, timeout=30).run(b"")


@pytest_twisted.ensureDeferred
async def test_a_program_killed_by_a_signal_gives_no_status(tmp_path: Path) -> None:
    crash = script(
        tmp_path, "crash.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    with pytest.raises(ProgramFailed, match="signal 11"):
        await runner(crash).run(b"")


@pytest_twisted.ensureDeferred
async def test_a_program_that_cannot_start_gives_no_status(tmp_path: Path) -> None:
    """Not a status 1 (a refusal) from the forked child that failed to exec it."""
    missing = tmp_path / "gone"
    with pytest.raises(ProgramFailed):
        await runner(str(missing)).run(b"")
    unreadable = script(tmp_path, "no-x.py", "print('hi')\n")
    os.chmod(unreadable, 0o644)
    with pytest.raises(ProgramFailed):
        await runner(unreadable).run(b"")


@pytest_twisted.ensureDeferred
async def test_programs_beyond_the_places_wait_and_beyond_the_line_are_refused(
    tmp_path: Path,
) -> None:
    """One place: the second run waits for the first to end, four more wait in line, and a
    sixth is refused without running."""
    gate = tmp_path / "gate"
    waiter = script(
        tmp_path,
        "wait.py",
        "import os, sys, time\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
        "sys.stdout.write(sys.stdin.read())\n",
    )
    slots = ProgramSlots(1)
    one = ProgramRunner(Program(waiter, (str(gate),), 30), reactor, slots)
    runs = [Deferred.fromCoroutine(one.run(str(n).encode())) for n in range(5)]
    assert (slots.running, slots.waiting, len(one.pids)) == (1, 4, 1)
    with pytest.raises(ProgramsBusy):
        await one.run(b"refused")
    gate.write_text("open")
    assert [(await run).output for run in runs] == [b"0", b"1", b"2", b"3", b"4"]
    assert (slots.running, slots.waiting) == (0, 0)
