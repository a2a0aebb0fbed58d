"""The keys each trust's issuer publishes, fetched when needed and kept through its outages.

OpenID discovery then the ``jwks_uri`` it names, or the trust's own ``jwks_uri``, or its
``jwks_file`` (read on a thread). A key set is kept for its ``Cache-Control: max-age`` within
[:data:`MIN_MAX_AGE`, :data:`MAX_MAX_AGE`]; a token naming a ``kid`` the set lacks (the issuer
rotated) refetches at once, but at most once per ``refetch_interval`` per key source so that
tokens with made-up kids cannot make tokend hammer the issuer; a failing issuer is asked again
at most as often. The last good set is kept when
a fetch fails (an outage is logged once); with none ever fetched, :class:`IssuerUnavailable`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from tokend.login.federation.fetch import MAX_BODY_BYTES, Fetch, FetchFailed, fetchable, max_age
from tokend.login.identity import BackendUnavailable
from tokend.metrics.instruments import NO_METRICS, RequestMetrics

MIN_MAX_AGE = 60
MAX_MAX_AGE = 24 * 3600
DEFAULT_MAX_AGE = 3600
"""How long a key set without ``Cache-Control: max-age`` (or a ``jwks_file``'s) is kept
before it is read again; a new kid is fetched at once in any case."""
REFETCH_INTERVAL = 30.0


class KeySource(Protocol):
    """What :class:`IssuerKeys` reads of a trust (:class:`tokend.policy.trusts.Trust`)."""

    @property
    def name(self) -> str: ...

    @property
    def issuer(self) -> str: ...

    @property
    def jwks_uri(self) -> str | None: ...

    @property
    def jwks_file(self) -> Path | None: ...

    @property
    def ca_file(self) -> Path | None: ...

    @property
    def discovery_url(self) -> str | None: ...


class IssuerUnavailable(BackendUnavailable):
    """No key of the trust's issuer was ever had: answer 503 with ``Retry-After``."""

    def __init__(self, trust: str, reason: str, retry_after: int) -> None:
        message = f"the keys of trust {trust} cannot be fetched: {reason}"
        super().__init__(message, None, retry_after)
        self.trust = trust
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Found:
    """A key set as read, and where from (for ``check-config`` and the logs)."""

    keys: dict[str, Any]
    jwks_uri: str
    """The key set's URL (from discovery when the trust names none), or the file's path."""
    max_age: int


def kids(keys: Mapping[str, Any]) -> list[str]:
    """The ``kid`` of each key in a key set."""
    return [
        jwk["kid"]
        for jwk in keys.get("keys", [])
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str)
    ]


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FetchFailed(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise FetchFailed(f"the {what} is not a JSON object")
    return value


def _key_set(body: bytes, where: str) -> dict[str, Any]:
    keys = _json_object(body, f"key set {where}")
    published = keys.get("keys")
    if not isinstance(published, list) or not published:
        raise FetchFailed(f"the key set {where} has no keys")
    return keys


def _read_limited(path: Path) -> bytes:
    with path.open("rb") as file:
        body = file.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise FetchFailed(f"{path} is over {MAX_BODY_BYTES} bytes")
    return body


def _source(trust: KeySource) -> tuple[str, str, str]:
    """What a cache entry is for: a trust edited to another source starts afresh."""
    where = trust.jwks_uri or (str(trust.jwks_file) if trust.jwks_file else None)
    return (trust.issuer, where or trust.discovery_url or "", str(trust.ca_file or ""))


@dataclass(slots=True)
class _Entry:
    keys: dict[str, Any] | None = None
    fresh_until: float = 0.0
    attempted_at: float | None = None
    unknown_kid_at: float | None = None
    """When a kid the keys lacked last made a refetch: a rotation is seen at once, but made-up
    kids cost the issuer one fetch per interval."""
    failing: bool = False
    waiters: list[Deferred[None]] | None = None
    jwks_uri: str = ""
    failure: str = ""


class IssuerKeys:
    """The key sets of every trust's issuer, shared by every login on this reactor.

    ``reactor`` runs the ``jwks_file`` reads on its thread pool (``IReactorThreads``);
    ``clock`` tells the time (``reactor.seconds``; a ``task.Clock``'s in tests)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        fetch: Fetch,
        clock: Callable[[], float],
        metrics: RequestMetrics = NO_METRICS,
        refetch_interval: float = REFETCH_INTERVAL,
    ) -> None:
        self._reactor = reactor
        self._fetch = fetch
        self._clock = clock
        self._metrics = metrics
        self._interval = refetch_interval
        self._entries: dict[tuple[str, str, str], _Entry] = {}

    async def keys(self, trust: KeySource, kid: str | None) -> dict[str, Any]:
        """The trust's issuer's key set (a JWKS), fetched first when it is stale or lacks
        ``kid``. Raises :class:`IssuerUnavailable` when none was ever had."""
        entry = self._entries.setdefault(_source(trust), _Entry())
        now = self._clock()
        may_fetch = entry.attempted_at is None or now - entry.attempted_at >= self._interval
        if entry.keys is not None:
            if kid is not None and kid not in kids(entry.keys):
                if entry.unknown_kid_at is None or now - entry.unknown_kid_at >= self._interval:
                    entry.unknown_kid_at = now
                    await self._refresh(trust, entry)
            elif now >= entry.fresh_until and may_fetch:
                Deferred.fromCoroutine(self._refresh(trust, entry))
            assert entry.keys is not None
            return entry.keys
        if may_fetch or entry.waiters is not None:
            await self._refresh(trust, entry)
        if entry.keys is None:
            assert entry.attempted_at is not None
            wait = self._interval - (self._clock() - entry.attempted_at)
            raise IssuerUnavailable(trust.name, entry.failure, max(1, math.ceil(wait)))
        return entry.keys

    async def find(self, trust: KeySource) -> Found:
        """The trust's key set read now, past the cache (``tokend check-config``); raises
        :class:`FetchFailed`."""
        return await self._load(trust)

    async def _refresh(self, trust: KeySource, entry: _Entry) -> None:
        """One fetch at a time per key source: requests arriving meanwhile wait for it."""
        if entry.waiters is not None:
            waiting: Deferred[None] = Deferred()
            entry.waiters.append(waiting)
            await waiting
            return
        entry.waiters = []
        entry.attempted_at = self._clock()
        try:
            found = await self._load(trust)
        except FetchFailed as e:
            self._failed(trust, entry, e.reason)
        except Exception as e:
            self.log.failure("issuer keys of {trust}: fetch broke", trust=trust.name)
            self._failed(trust, entry, f"{e.__class__.__name__}")
        else:
            self._fetched(trust, entry, found)
        finally:
            waiters, entry.waiters = entry.waiters, None
            for waiting in waiters:
                waiting.callback(None)

    def _fetched(self, trust: KeySource, entry: _Entry, found: Found) -> None:
        self._metrics.key_fetched(trust.name, "fetched")
        if entry.failing:
            self.log.info(
                "issuer keys of {trust}: fetched again from {jwks_uri} after failing ({reason})",
                trust=trust.name,
                jwks_uri=found.jwks_uri,
                reason=entry.failure,
            )
        elif entry.keys is None or kids(entry.keys) != kids(found.keys):
            self.log.info(
                "issuer keys of {trust}: {kids} from {jwks_uri}",
                trust=trust.name,
                kids=kids(found.keys),
                jwks_uri=found.jwks_uri,
            )
        entry.keys = found.keys
        entry.jwks_uri = found.jwks_uri
        entry.fresh_until = self._clock() + found.max_age
        entry.failing = False
        entry.failure = ""

    def _failed(self, trust: KeySource, entry: _Entry, reason: str) -> None:
        self._metrics.key_fetched(trust.name, "failed")
        if not entry.failing:
            self.log.warn(
                "issuer keys of {trust} cannot be fetched ({reason}); {kept}",
                trust=trust.name,
                reason=reason,
                kept=(
                    "the keys fetched before are kept"
                    if entry.keys is not None
                    else "its tokens are refused with 503 until they are"
                ),
            )
        entry.failing = True
        entry.failure = reason

    async def _load(self, trust: KeySource) -> Found:
        if trust.jwks_file is not None:
            path = trust.jwks_file
            try:
                body = await threads.deferToThreadPool(
                    self._reactor, self._reactor.getThreadPool(), _read_limited, path
                )
            except OSError as e:
                raise FetchFailed(f"{path}: {e.strerror or e}") from None
            return Found(_key_set(body, str(path)), str(path), DEFAULT_MAX_AGE)
        jwks_uri = trust.jwks_uri or await self._discover(trust)
        refused = fetchable(jwks_uri)
        if refused is not None:
            raise FetchFailed(f"jwks_uri {jwks_uri[:200]!r} is {refused}")
        fetched = await self._get(jwks_uri, trust)
        allowed = max_age(fetched.cache_control)
        age = DEFAULT_MAX_AGE if allowed is None else allowed
        keys = _key_set(fetched.body, jwks_uri)
        return Found(keys, jwks_uri, min(max(age, MIN_MAX_AGE), MAX_MAX_AGE))

    async def _discover(self, trust: KeySource) -> str:
        """The ``jwks_uri`` of the issuer's OpenID discovery document, which must name the
        trust's issuer as its own (OpenID Connect Discovery 1.0 §4.3)."""
        url = trust.discovery_url or f"{trust.issuer}/.well-known/openid-configuration"
        fetched = await self._get(url, trust)
        document = _json_object(fetched.body, f"discovery document {url}")
        if document.get("issuer") != trust.issuer:
            raise FetchFailed(f"{url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchFailed(f"{url} names no jwks_uri")
        return jwks_uri

    async def _get(self, url: str, trust: KeySource) -> Any:
        try:
            return await self._fetch(url, trust.ca_file)
        except FetchFailed as e:
            raise FetchFailed(f"{url}: {e.reason}") from None
