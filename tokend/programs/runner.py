"""Running an operator's program (the external authentication and authorization programs,
docker_auth's ``ext_auth`` and ``ext_authz``) without blocking the reactor: spawned with
Twisted's process API, no shell, a bare environment, its input written then closed, its output
bounded, killed at its timeout, and only a few running at once."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

PROGRAM_PATH = "/usr/local/bin:/usr/bin:/bin"
"""The one variable a program gets, ``PATH``: enough for a shell script's ``grep`` or ``curl``;
nothing of the daemon's own environment (secrets, ``TOKEND_*``) reaches it."""
MAX_OUTPUT = 64 * 1024
"""Bytes of standard output a program may write; past it, it is killed and fails."""
MAX_ERRORS_KEPT = 2048
"""Bytes of standard error kept for the log; the rest is read and dropped."""
WAITING_PER_SLOT = 4
"""Programs that may wait for a place, per place: more are refused at once (503)."""


@dataclass(frozen=True, slots=True)
class Program:
    """An executable and its arguments (never a secret: they are visible to every local user
    in ``/proc``), and how long one run may take."""

    path: str
    args: tuple[str, ...] = ()
    timeout: float = 5.0

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.path, *self.args)


@dataclass(frozen=True, slots=True)
class Finished:
    """A run that ended with an exit status: the status, its standard output (whole, under
    :data:`MAX_OUTPUT`) and the start of its standard error."""

    status: int
    output: bytes
    errors: bytes


class ProgramFailed(Exception):
    """The run gave no exit status to read: the program could not start, ran past its timeout
    (killed), wrote more than :data:`MAX_OUTPUT`, or died of a signal. ``errors``: the start
    of its standard error."""

    def __init__(self, reason: str, errors: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors


class ProgramsBusy(ProgramFailed):
    """Every place is taken and the waiting line is full: refused without running."""


class ProgramSlots:
    """At most ``at_once`` programs run together (the authentication and the authorization
    program share them); up to ``WAITING_PER_SLOT`` times as many wait their turn in order;
    more are refused with :class:`ProgramsBusy`."""

    def __init__(self, at_once: int) -> None:
        if at_once < 1:
            raise ValueError("at least one program must be able to run")
        self.at_once = at_once
        self.waiting_limit = at_once * WAITING_PER_SLOT
        self.running = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self) -> Deferred[None] | None:
        """None: a place is taken now; else a Deferred that fires when one is. Raises
        :class:`ProgramsBusy` when the line is full."""
        if self.running < self.at_once:
            self.running += 1
            return None
        if len(self._waiting) >= self.waiting_limit:
            raise ProgramsBusy(f"{self.running} programs are running and {self.waiting} waiting")
        turn: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(turn)
        return turn

    def give_back(self) -> None:
        """The place goes to the first in line, or is freed."""
        if self._waiting:
            self._waiting.popleft().callback(None)
        else:
            self.running -= 1


class _Run(ProcessProtocol):
    """One run: input written then closed, output gathered within bounds, killed at the
    timeout or when it writes too much, and the outcome settled once the process has ended
    (or, killed, once its pipes are closed: a child it left behind may hold them)."""

    def __init__(self, stdin: bytes, max_output: int) -> None:
        self._stdin = stdin
        self._max_output = max_output
        self._output = bytearray()
        self._errors = bytearray()
        self.killed_because: str | None = None
        self.ended: Deferred[Finished] = Deferred()

    def connectionMade(self) -> None:
        process: Any = self.transport  # an IProcessTransport (zope's interfaces type poorly)
        process.write(self._stdin)
        process.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if self.killed_because is not None:
            return
        self._output += data
        if len(self._output) > self._max_output:
            self.kill(f"it wrote more than {self._max_output} bytes")

    def errReceived(self, data: bytes) -> None:
        room = MAX_ERRORS_KEPT - len(self._errors)
        if room > 0:
            self._errors += data[:room]

    def kill(self, because: str) -> None:
        """SIGKILL at once (a program past its time had it; one that traps SIGTERM would take
        more), and our ends of its pipes closed, so that a child still holding them does not
        keep the run open."""
        if self.killed_because is not None or self.ended.called:
            return
        self.killed_because = because
        process: Any = self.transport
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        process.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        errors = bytes(self._errors)
        if self.killed_because is not None:
            self.ended.errback(ProgramFailed(f"killed: {self.killed_because}", errors))
            return
        code, signal = (
            getattr(reason.value, "exitCode", None),
            getattr(reason.value, "signal", None),
        )
        if signal is not None or code is None:
            self.ended.errback(ProgramFailed(f"ended by signal {signal}", errors))
            return
        self.ended.callback(Finished(int(code), bytes(self._output), errors))


class ProgramRunner:
    """Runs one :class:`Program`, as many times at once as ``slots`` allows."""

    def __init__(
        self, program: Program, reactor: Any, slots: ProgramSlots, max_output: int = MAX_OUTPUT
    ) -> None:
        self.program = program
        self._reactor = reactor
        self._slots = slots
        self._max_output = max_output
        self.pids: set[int] = set()
        """The processes running now (the tests read them)."""

    async def run(self, stdin: bytes) -> Finished:
        """The program's exit status and output for ``stdin`` (written to it, then closed:
        never on its command line or in its environment). Raises :class:`ProgramFailed`, or
        :class:`ProgramsBusy` without running it."""
        turn = self._slots.take()
        if turn is not None:
            await turn
        try:
            return await self._spawned(stdin)
        finally:
            self._slots.give_back()

    async def _spawned(self, stdin: bytes) -> Finished:
        run = _Run(stdin, self._max_output)
        try:
            process = self._reactor.spawnProcess(
                run, self.program.path, self.program.argv, env={"PATH": PROGRAM_PATH}
            )
        except OSError as e:
            raise ProgramFailed(f"could not start: {os.strerror(e.errno or 0)}") from None
        pid = process.pid
        self.pids.add(pid)
        timer = self._reactor.callLater(
            self.program.timeout, run.kill, f"it ran past {self.program.timeout:g} s"
        )
        try:
            return await run.ended
        finally:
            self.pids.discard(pid)
            if timer.active():
                timer.cancel()
