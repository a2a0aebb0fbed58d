"""GET an issuer's discovery document or key set over HTTPS with Twisted's own client.

Certificates are verified (the trust's ``ca_file`` as the only trust root when it names one,
the system's otherwise), connecting and the whole answer each get :data:`TIMEOUT`, redirects
are not followed (an issuer's documents live where the trust says), and a body over
:data:`MAX_BODY_BYTES` is refused as it arrives. The PEM bundle is read on a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import ssl, threads
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers

from tokend.login.federation.fetch import (
    MAX_BODY_BYTES,
    TIMEOUT,
    Fetched,
    FetchFailed,
    fetchable,
)

USER_AGENT = b"tokend (workload identity keys)"


class _QuietFactory(_HTTP11ClientFactory):
    """No "Starting factory" line per fetch (treq does the same)."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class _LimitedBody(Protocol):
    """Collects a body of at most ``limit`` bytes; more aborts the connection."""

    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self._done = done
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(FetchFailed(f"an answer over {self._limit} bytes"))
            if self.transport is not None:
                self.transport.abortConnection()
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if reason.check(ResponseDone):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(FetchFailed("the answer was cut short"))


def _trust_root(pem: bytes) -> Any:
    certificates = [
        ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + block)
        for block in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    if not certificates:
        raise FetchFailed("the ca_file holds no PEM certificate")
    return ssl.trustRootFromCertificates(certificates)


class AgentFetch:
    """:class:`tokend.login.federation.fetch.Fetch` with ``twisted.web.client.Agent``."""

    log = Logger()

    def __init__(self, reactor: Any, timeout: float = TIMEOUT, limit: int = MAX_BODY_BYTES) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._limit = limit

    async def _policy(self, ca_file: Path | None) -> BrowserLikePolicyForHTTPS:
        if ca_file is None:
            return BrowserLikePolicyForHTTPS()
        try:
            pem = await threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), ca_file.read_bytes
            )
        except OSError as e:
            raise FetchFailed(f"ca_file {ca_file}: {e.strerror or e}") from None
        try:
            return BrowserLikePolicyForHTTPS(trustRoot=_trust_root(pem))
        except FetchFailed:
            raise
        except Exception:
            raise FetchFailed(f"ca_file {ca_file} is not a PEM certificate bundle") from None

    async def __call__(self, url: str, ca_file: Path | None) -> Fetched:
        refused = fetchable(url)
        if refused is not None:
            raise FetchFailed(refused)
        agent = Agent(
            self._reactor,
            contextFactory=await self._policy(ca_file),
            connectTimeout=self._timeout,
            pool=_QuietPool(self._reactor, persistent=False),
        )
        answer = self._get(agent, url)
        answer.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_timed_out)
        try:
            return await answer
        except FetchFailed:
            raise
        except DNSLookupError:
            raise FetchFailed("the host name does not resolve") from None
        except (ConnectError, TimeoutError) as e:
            raise FetchFailed(f"cannot connect: {e.__class__.__name__}") from None
        except Exception as e:
            raise FetchFailed(_why(e)) from None

    async def _get_body(self, response: Any) -> bytes:
        length = response.length
        if isinstance(length, int) and length > self._limit:
            response.deliverBody(_Discard())
            raise FetchFailed(f"an answer over {self._limit} bytes")
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_LimitedBody(done, self._limit))
        return await done

    def _get(self, agent: Agent, url: str) -> Deferred[Fetched]:
        async def get() -> Fetched:
            headers = Headers({b"User-Agent": [USER_AGENT], b"Accept": [b"application/json"]})
            response: Any = await agent.request(b"GET", url.encode("ascii"), headers)
            if response.code != 200:
                response.deliverBody(_Discard())
                raise FetchFailed(f"HTTP {response.code}")
            body = await self._get_body(response)
            cache = response.headers.getRawHeaders(b"cache-control")
            return Fetched(body, b", ".join(cache).decode("latin-1") if cache else None)

        return Deferred.fromCoroutine(get())


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        pass


def _timed_out(result: object, timeout: float) -> Failure:
    """What a fetch cut off by its timeout ends in, whatever the cancelled request said."""
    return Failure(FetchFailed(f"no answer within {timeout:g} s"))


def _why(error: Exception) -> str:
    """A failure to log: the TLS verification's own words when there are some."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        first = reasons[0]
        value = getattr(first, "value", first)
        text = str(value)
        if "certificate verify failed" in text or "CERTIFICATE_VERIFY_FAILED" in text:
            return "the issuer's certificate is not trusted (certificate verify failed)"
        return f"{value.__class__.__name__}: {text[:200]}"
    return f"{error.__class__.__name__}: {str(error)[:200]}"
