"""/healthz: the token listener says only ``ok`` or ``degraded``; the metrics listener says why.

The token listener faces whatever reaches tokend (a Kubernetes Service, a load balancer): it
tells a probe no more than whether the files on disk are good. The pid, the policy generation,
when the files loaded or failed and the error text (which quotes the policy files) are served
on the ``--metrics`` listener, which is kept off the public network, and logged. With
``--workers N`` the first process serves them for every worker, asked over its socketpair.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tokend.policy.holder import LoadStatus, PolicyHolder
from tokend.signing.tokens import rfc3339


class StrictError(ValueError):
    """``?strict=`` is neither yes nor no."""


def strict_asked(args: Mapping[bytes, Sequence[bytes]] | None) -> bool:
    """``?strict=1`` (or ``true``): answer 503 while degraded, for probes that must notice a
    bad edit. ``0``/``false`` or nothing: 200 while a good policy serves."""
    values = (args or {}).get(b"strict", [b"0"])
    if any(v not in (b"1", b"true", b"0", b"false") for v in values):
        raise StrictError("strict must be 1 or 0")
    return any(v in (b"1", b"true") for v in values)


class KeyFiles(Protocol):
    """The signing keys in force as /healthz sees them (tokend.signing.holder.KeyHolder)."""

    @property
    def files_valid(self) -> bool: ...

    @property
    def failed_at(self) -> float | None: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def kid(self) -> str: ...


def status_word(status: LoadStatus, keys: KeyFiles | None = None) -> str:
    """``ok``, or ``degraded`` while the policy files or the signing key files on disk are
    invalid and the last good ones serve: all the token listener says."""
    valid = status.files_valid and (keys is None or keys.files_valid)
    return "ok" if valid else "degraded"


def details(
    status: LoadStatus, pid: int | None = None, keys: KeyFiles | None = None
) -> dict[str, Any]:
    """Everything a process knows about the policy it serves and the files behind it, and
    about its signing keys."""
    body = {
        "status": status_word(status, keys),
        "serving": True,
        "pid": os.getpid() if pid is None else pid,
        "files_valid": status.files_valid,
        "policy_generation": status.generation,
        "policy_loaded_at": rfc3339(status.loaded_at),
        "policy_failed_at": rfc3339(status.failed_at) if status.failed_at is not None else None,
        "policy_error": status.last_error,
    }
    if keys is not None:
        failed_at = keys.failed_at
        body |= {
            "signing_kid": keys.kid,
            "signing_keys_valid": keys.files_valid,
            "signing_keys_failed_at": rfc3339(failed_at) if failed_at is not None else None,
            "signing_keys_error": keys.last_error,
        }
    return body


def _answer(request: Any, code: int, body: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _bad_request(request: Any, error: StrictError) -> bytes:
    body = {"errors": [{"code": "BAD_REQUEST", "message": str(error), "detail": None}]}
    return _answer(request, 400, body)


class PolicyHealth(Resource):
    """``GET /healthz`` on the metrics listener of a single-process daemon: :func:`details`."""

    isLeaf = True

    def __init__(self, holder: PolicyHolder, keys: KeyFiles | None = None) -> None:
        super().__init__()
        self._holder = holder
        self._keys = keys

    def render_GET(self, request: Any) -> bytes:
        try:
            strict = strict_asked(request.args)
        except StrictError as e:
            return _bad_request(request, e)
        body = details(self._holder.status(), keys=self._keys)
        return _answer(request, 503 if strict and body["status"] != "ok" else 200, body)


class WorkersHealthSource(Protocol):
    """The parent of ``--workers N`` as its /healthz sees it."""

    @property
    def count(self) -> int: ...

    def health(self) -> Deferred[list[tuple[int, bytes]]]:
        """Each serving worker's :func:`details` as JSON, by worker index; those that do not
        answer in time are left out."""
        ...


def workers_details(count: int, answers: Sequence[tuple[int, bytes]]) -> dict[str, Any]:
    """The first process's pid and each worker's details; ``ok`` only when all ``count``
    workers answered ``ok`` (one missing or unreadable is ``degraded``)."""
    workers: list[dict[str, Any]] = []
    for index, body in sorted(answers):
        try:
            worker = json.loads(body)
        except ValueError:
            continue
        if isinstance(worker, dict):
            workers.append({"worker": index, **worker})
    healthy = len(workers) == count and all(w.get("status") == "ok" for w in workers)
    return {
        "status": "ok" if healthy else "degraded",
        "serving": bool(workers),
        "pid": os.getpid(),
        "workers_configured": count,
        "workers_answering": len(workers),
        "workers": workers,
    }


class WorkersHealth(Resource):
    """``GET /healthz`` on the metrics listener of ``--workers N``: every worker's details."""

    isLeaf = True

    def __init__(self, workers: WorkersHealthSource) -> None:
        super().__init__()
        self._workers = workers

    def render_GET(self, request: Any) -> Any:
        try:
            strict = strict_asked(request.args)
        except StrictError as e:
            return _bad_request(request, e)
        finished = request.notifyFinish()
        finished.addErrback(lambda reason: None)

        def answer(answers: list[tuple[int, bytes]]) -> None:
            if finished.called:
                return  # the prober gave up
            body = workers_details(self._workers.count, answers)
            code = 503 if strict and body["status"] != "ok" else 200
            request.write(_answer(request, code, body))
            request.finish()

        def failed(reason: Failure) -> None:
            if not finished.called:
                request.setResponseCode(500)
                request.finish()

        self._workers.health().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET
