"""Accounts an operator's program vouches for: docker_auth's ``ext_auth`` contract. The program
reads ``USER PASSWORD`` on its standard input and answers with its exit status: 0 accepts
(its standard output may hold ``{"labels": {"group": ["ci"]}}``), 1 refuses, 2 says the name
is not its own (the next authenticator decides), anything else is an error (503).

The credential cache remembers an accepted login (with its labels) as it remembers a bcrypt.
No refresh token is issued to these accounts: the program cannot be asked, without the
password, whether one still holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from twisted.logger import Logger

from tokend.login.credential_cache import CredentialCache
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import OPEN_GATE, BackendUnavailable, EntryGate, Identity, Login, NotMine
from tokend.logs.escaping import printable
from tokend.policy.model import PROGRAM_LABELS, Labels, Policy, labels_from
from tokend.programs.runner import Finished, ProgramFailed, ProgramRunner

PROGRAM = "program"
"""Accounts the external authentication program vouches for."""
ACCEPTED, REFUSED, NOT_MINE = 0, 1, 2
_LOGIN_STAMP = b"tokend authentication program login\0"


class ProgramAnswerError(ValueError):
    """Exit status 0 with standard output that is not ``{"labels": {name: [value, ...]}}``."""


def read_labels(output: bytes) -> Labels:
    """The labels of an accepting answer: nothing for empty output, else a JSON object whose
    ``labels`` (if any) maps names to lists of strings; other keys are ignored, as docker_auth
    ignores them. Raises :class:`ProgramAnswerError`."""
    if not output.strip():
        return ()
    try:
        answer = json.loads(output)
    except ValueError:
        raise ProgramAnswerError("its output is not JSON") from None
    if not isinstance(answer, dict):
        raise ProgramAnswerError("its output is not a JSON object")
    labels = answer.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(values, list) and all(isinstance(value, str) for value in values)
        for values in labels.values()
    ):
        raise ProgramAnswerError('its "labels" are not an object of lists of strings')
    return labels_from(labels)


def _fits(account: str) -> bool:
    """A name the program can read back from ``USER PASSWORD``: no space or control
    character (``read u p`` would split it)."""
    return account.isprintable() and not any(char.isspace() for char in account)


class ProgramAccounts:
    """Asks the authentication program about the names users.json does not decide (in any
    case, as for the directory), before the directory."""

    credential_types: tuple[type, ...] = (UsernamePassword,)
    source = PROGRAM
    refusals_cost_a_bcrypt = False
    checks_take_a_place = True
    log = Logger()

    def __init__(
        self,
        runner: ProgramRunner,
        current: Callable[[], Policy],
        cache: CredentialCache,
        clock: Callable[[], float],
    ) -> None:
        self._runner = runner
        self._current = current
        self._cache = cache
        self._now = clock
        self._retry_after = max(1, math.ceil(runner.program.timeout))

    def answers(self, credentials: object, policy: Policy) -> object | None:
        assert isinstance(credentials, UsernamePassword)
        account = credentials.account
        if account in policy.users or account.casefold() in policy.folded_users:
            return None
        return credentials if _fits(account) else None

    def at_once(self, credentials: object, policy: Policy, now: float) -> Login | None:
        assert isinstance(credentials, UsernamePassword)
        found = self._cache.remembered(credentials.account, credentials.password, _LOGIN_STAMP, now)
        return Login(found, policy) if isinstance(found, Identity) else None

    async def authenticate(self, credentials: object, gate: EntryGate = OPEN_GATE) -> Login | None:
        """The program's verdict; raises :class:`NotMine` (status 2) or
        :class:`BackendUnavailable` (any other status, a failed run, a bad answer)."""
        assert isinstance(credentials, UsernamePassword)
        account, password = credentials.account, credentials.password
        try:
            finished = await self._runner.run(account.encode("utf-8") + b" " + password)
        except ProgramFailed as e:
            self._failed(account, password, e.reason, e.errors)
            raise self._unavailable(account) from None
        if finished.status == REFUSED:
            return None
        if finished.status == NOT_MINE:
            raise NotMine(account)
        if finished.status != ACCEPTED:
            self._failed(account, password, f"exit status {finished.status}", finished.errors)
            raise self._unavailable(account)
        try:
            labels = read_labels(finished.output)
        except ProgramAnswerError as e:
            self._failed(account, password, f"exit status 0 but {e}", _output(finished))
            raise self._unavailable(account) from None
        identity = Identity(account, PROGRAM, labels=labels, rights_from=PROGRAM_LABELS)
        self._cache.remember(account, password, _LOGIN_STAMP, identity, self._now())
        return Login(identity, self._current())

    def _failed(self, account: str, password: bytes, reason: str, errors: bytes) -> None:
        """Logged with what the program wrote, the password cut out of it."""
        said = errors.replace(password, b"<password>") if password else errors
        self.log.error(
            "the authentication program {program} failed for '{account}': {reason}; "
            "it wrote: {errors}",
            program=self._runner.program.path,
            account=printable(account),
            reason=reason,
            errors=printable(said.decode("utf-8", "replace")),
        )

    def _unavailable(self, account: str) -> BackendUnavailable:
        return BackendUnavailable(
            "the authentication program failed; try again shortly", account, self._retry_after
        )


def _output(finished: Finished) -> bytes:
    """Standard output (cut short) then standard error: what to show of a bad answer."""
    return finished.output[:512] + b" | " + finished.errors
