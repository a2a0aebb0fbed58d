"""The external authentication program behind the door, with real programs (shell and Python
scripts written here) on the real reactor: docker_auth's ``ext_auth`` contract (0 accepts with
labels, 1 refuses, 2 is not mine, anything else 503), the credential cache and the throttle
around it, and the password in no log line, no argv and no environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from policies import holder_in
from realms import CountingWorkers
from stand_ins import DirectoryStandIn
from support import EXT_AUTH_SH, pid_file_hang, write_key_pair, write_script
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent

from tokend.login.assembly import logins_for
from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import (
    DIRECTORY,
    BackendUnavailable,
    EntryGate,
    Identity,
    Login,
    LoginRefused,
    LoginThrottled,
)
from tokend.login.logins import Logins
from tokend.login.passwords import PasswordChecker
from tokend.login.program import PROGRAM, ProgramAccounts
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.throttle import LoginThrottle
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import PROGRAM_LABELS
from tokend.programs.runner import Program, ProgramRunner, ProgramSlots
from tokend.scope import ResourceScope
from tokend.signing.keys import load_signing_key

CLIENT = "192.0.2.7"
GROUPS = {
    "vip": {"program_labels": {"groups": ["VIP"]}, "repositories": {"vip/*": ["pull", "push"]}},
    "ci": {"program_labels": {"group": ["ci"]}, "repositories": {"builds/*": ["pull", "push"]}},
}


class Carol(DirectoryStandIn):
    """A directory that knows carol."""

    async def authenticate(self, credentials: object, gate: EntryGate) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        if (credentials.account, credentials.password) != ("carol", b"c"):
            return None
        return Login(Identity("carol", DIRECTORY), self.policy)


class Door:
    """The door with the program between users.json and the (stand-in) directory."""

    def __init__(
        self,
        tmp_path: Path,
        program: str,
        *args: str,
        timeout: float = 5,
        directory: bool = False,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.holder: PolicyHolder = holder_in(
            tmp_path / "config", {"alice": ("a", {"*": ["pull"]})}, GROUPS
        )
        self.runner = ProgramRunner(Program(program, args, timeout), reactor, ProgramSlots(4))
        self.cache = CredentialCache(ttl=60)
        self.workers = CountingWorkers()
        stand_in = None
        if directory:
            stand_in = Carol()
            stand_in.policy = self.holder.current  # type: ignore[attr-defined]
        key_path, cert_path = write_key_pair(tmp_path)
        self.logins: Logins = logins_for(
            policy=self.holder,
            passwords=PasswordChecker(self.workers),
            clock=reactor.seconds,
            throttle=throttle,
            credential_cache=self.cache,
            program=ProgramAccounts(
                self.runner, lambda: self.holder.current, self.cache, reactor.seconds
            ),
            directory=stand_in,  # type: ignore[arg-type]
            refresh_tokens=RefreshTokens(load_signing_key(key_path, cert_path), "iss", 3600),
        )

    async def login(self, account: str, password: bytes) -> Login:
        answer = self.logins.login(UsernamePassword(account, password), CLIENT)
        return await answer if isinstance(answer, Deferred) else answer


def granted(login: Login, name: str) -> tuple[str, ...]:
    policy = login.policy
    scope = ResourceScope("repository", name, ("pull", "push"))
    return policy.grant(login.identity.account, scope, policy.rights(login.identity))


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    with capturedLogs() as events:
        yield events


def logged_text(events: list[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(event) + repr(event) for event in events)


@pytest_twisted.ensureDeferred
async def test_docker_auths_example_program_accepts_with_labels_and_refuses(
    tmp_path: Path,
) -> None:
    door = Door(tmp_path, write_script(tmp_path, "ext_auth.sh", EXT_AUTH_SH, "/bin/sh"))
    user = await door.login("user", b"pass")
    assert (user.identity.source, user.identity.labels) == (PROGRAM, ())
    assert granted(user, "vip/app") == ()
    bofh = await door.login("bofh", b"LART")
    assert bofh.identity.rights_from == PROGRAM_LABELS
    assert bofh.identity.labels == (("groups", ("VIP", "ATeam")), ("level", ("max",)))
    assert granted(bofh, "vip/app") == ("pull", "push")
    assert granted(bofh, "builds/app") == ()
    assert door.workers.calls == 0, "an accepted login costs no bcrypt"
    for account, password in (("bofh", b"lart"), ("nobody", b"pass")):
        with pytest.raises(LoginRefused, match="invalid user name or password"):
            await door.login(account, password)
    assert door.workers.calls == 2, "each refusal is padded with one bcrypt"


@pytest_twisted.ensureDeferred
async def test_users_json_decides_its_names_in_any_case_and_the_program_is_never_asked(
    tmp_path: Path,
) -> None:
    asked = tmp_path / "asked"
    program = write_script(
        tmp_path,
        "log.py",
        f"import sys\nopen({str(asked)!r}, 'a').write(sys.stdin.read().split()[0] + '\\n')\n",
    )
    door = Door(tmp_path, program)
    assert (await door.login("alice", b"a")).identity.source == "users"
    for account in ("alice", "ALICE"):
        with pytest.raises(LoginRefused):
            await door.login(account, b"wrong")
    assert not asked.exists()
    assert (await door.login("robot", b"r")).identity.account == "robot"
    assert asked.read_text() == "robot\n"


@pytest_twisted.ensureDeferred
async def test_an_accepted_login_is_remembered_and_gets_no_refresh_token(tmp_path: Path) -> None:
    asked = tmp_path / "asked"
    program = write_script(
        tmp_path,
        "ci.py",
        f"open({str(asked)!r}, 'a').write('x')\nprint('{{\"labels\": {{\"group\": [\"ci\"]}}}}')\n",
    )
    door = Door(tmp_path, program)
    first = await door.login("robot", b"r")
    again = door.logins.login(UsernamePassword("robot", b"r"), CLIENT)
    assert isinstance(again, Login), "answered at once, from the cache"
    assert again.identity == first.identity and granted(again, "builds/x") == ("pull", "push")
    assert asked.read_text() == "x"
    assert door.logins.refresh_token_for(first, reactor.seconds()) is None


@pytest_twisted.ensureDeferred
async def test_not_mine_goes_on_to_the_directory_or_is_refused_without_one(
    tmp_path: Path,
) -> None:
    program = write_script(tmp_path, "not-mine.sh", "exit 2\n", "/bin/sh")
    door = Door(tmp_path, program, directory=True)
    carol = await door.login("Carol", b"c")
    assert (carol.identity.source, carol.identity.account) == (DIRECTORY, "carol")
    with pytest.raises(LoginRefused):
        await door.login("carol", b"wrong")
    alone = Door(tmp_path / "alone", program)
    with pytest.raises(LoginRefused):
        await alone.login("carol", b"c")
    assert alone.workers.calls == 1, "refused by the dummy hash, at one bcrypt"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("import sys\nsys.stderr.write('no luck for ' + sys.stdin.read())\nsys.exit(3)\n", "3"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "signal 9"),
        ("import sys\nprint('welcome ' + sys.stdin.read())\n", "not JSON"),
        ('print(\'{"labels": {"group": "ci"}}\')\n', "not an object of lists of strings"),
        ("import sys\nsys.stdout.write('x' * 200000)\n", "more than 65536 bytes"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_error_is_a_503_logged_without_the_password(
    tmp_path: Path, logged: list[dict[str, Any]], body: str, reason: str
) -> None:
    door = Door(tmp_path, write_script(tmp_path, "bad.py", body))
    with pytest.raises(BackendUnavailable) as raised:
        await door.login("robot", b"hunter2-secret")
    assert raised.value.retry_after == 5
    text = logged_text(logged)
    assert reason in text and "robot" in text
    assert "hunter2-secret" not in text
    assert door.workers.calls == 0


@pytest_twisted.ensureDeferred
async def test_a_hung_program_is_killed_at_the_timeout_and_never_saw_the_password_outside_stdin(
    tmp_path: Path, logged: list[dict[str, Any]]
) -> None:
    pid_file = tmp_path / "pid"
    door = Door(tmp_path, write_script(tmp_path, "hang.py", pid_file_hang(pid_file)), timeout=1)
    waiting = Deferred.fromCoroutine(door.login("robot", b"hunter2-secret"))
    while not pid_file.exists():
        await sleep(0.02)
    pid = int(pid_file.read_text())
    assert door.runner.pids == {pid}
    seen = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    assert b"hunter2" not in seen and sys.executable.encode() in seen
    with pytest.raises(BackendUnavailable):
        await waiting
    assert not Path(f"/proc/{pid}").exists()
    assert "ran past 1 s" in logged_text(logged)
    assert "hunter2" not in logged_text(logged)


@pytest_twisted.ensureDeferred
async def test_the_throttle_counts_the_programs_refusals(tmp_path: Path) -> None:
    asked = tmp_path / "asked"
    program = write_script(tmp_path, "no.py", f"open({str(asked)!r}, 'a').write('x')\nexit(1)\n")
    throttle = LoginThrottle(per_account=2, per_address=100, window=300)
    door = Door(tmp_path, program, throttle=throttle)
    for _ in range(2):
        with pytest.raises(LoginRefused):
            await door.login("robot", b"guess")
    with pytest.raises(LoginThrottled):
        await door.login("robot", b"guess")
    assert asked.read_text() == "xx", "a throttled attempt runs nothing"


def sleep(seconds: float) -> Deferred[None]:
    waiting: Deferred[None] = Deferred()
    reactor.callLater(seconds, waiting.callback, None)
    return waiting
