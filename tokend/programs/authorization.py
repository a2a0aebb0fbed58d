"""The external authorization program (docker_auth's ``ext_authz`` contract): asked about one
scope with the request as JSON on its standard input, it grants the actions it was asked for
(exit 0) or none (exit 1); anything else is an error, and the request gets 503.

By default it only narrows what the policy grants: it is asked about the actions the policy
would grant, and only when there are some. With ``decides`` it is asked about the actions a
logged-in account asked for, and its exit 0 grants them whatever the policy says; anonymous
requests it can only narrow either way, so anonymous never gets more than a pull.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from twisted.logger import Logger

from tokend.logs.escaping import printable
from tokend.programs.runner import ProgramFailed, ProgramRunner
from tokend.scope import ResourceScope

GRANTED, REFUSED = 0, 1


class AuthorizationUnavailable(Exception):
    """The program could not answer (another status, a failed run): the token is not issued,
    and the client is told to try again (503)."""

    def __init__(self, message: str, account: str | None, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.account = account
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Question:
    """One scope put to the program, with what docker_auth's ``AuthRequestInfo`` carries."""

    account: str
    """Empty for an anonymous request."""
    scope: ResourceScope
    """The actions asked about (the policy's grant, or what the client asked for)."""
    service: str
    client: str
    labels: dict[str, list[str]] | None

    def json(self) -> bytes:
        """docker_auth's field names and shapes (``Labels`` null when there are none)."""
        return json.dumps(
            {
                "Account": self.account,
                "Type": self.scope.type,
                "Name": self.scope.name,
                "Service": self.service,
                "IP": self.client,
                "Actions": list(self.scope.actions),
                "Labels": self.labels,
            }
        ).encode("utf-8")


class AuthorizationProgram:
    """Puts questions to the program through ``runner`` (its timeout, the shared places)."""

    log = Logger()

    def __init__(self, runner: ProgramRunner, decides: bool = False) -> None:
        self._runner = runner
        self.decides = decides
        self._retry_after = max(1, math.ceil(runner.program.timeout))

    async def grants(self, question: Question) -> bool:
        """Whether the program grants the question's actions. Raises
        :class:`AuthorizationUnavailable`."""
        try:
            finished = await self._runner.run(question.json())
        except ProgramFailed as e:
            raise self._failed(question, e.reason, e.errors) from None
        if finished.status == GRANTED:
            return True
        if finished.status == REFUSED:
            return False
        raise self._failed(question, f"exit status {finished.status}", finished.errors)

    def _failed(self, question: Question, reason: str, errors: bytes) -> AuthorizationUnavailable:
        self.log.error(
            "the authorization program {program} failed for '{account}' on {scope}: "
            "{reason}; it wrote: {errors}",
            program=self._runner.program.path,
            account=printable(question.account),
            scope=printable(str(question.scope)),
            reason=reason,
            errors=printable(errors.decode("utf-8", "replace")),
        )
        return AuthorizationUnavailable(
            "the authorization program failed; try again shortly",
            question.account or None,
            self._retry_after,
        )
