"""Connections to the directory: one bound service connection shared by every search, a
connection of its own for each password bind, and LDAP operations bounded by the timeout.
Anything that keeps the directory from answering is :class:`DirectoryUnavailable`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from OpenSSL import SSL
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from tokend.login.ldap.config import DirectoryConfig, Server, parseFilter, read_ca_certificates

SUCCESS = ldaperrors.Success.resultCode
SIZE_LIMIT_EXCEEDED = ldaperrors.LDAPSizeLimitExceeded.resultCode
NO_SUCH_OBJECT = ldaperrors.LDAPNoSuchObject.resultCode
INVALID_CREDENTIALS = ldaperrors.LDAPInvalidCredentials.resultCode
NO_ATTRIBUTES = ["1.1"]
"""RFC 4511 4.5.1.8: ask for no attributes at all, only the entries' DNs."""

T = TypeVar("T")


class DirectoryUnavailable(Exception):
    """unreachable / timed out / service bind refused: the web answers 503 + Retry-After."""


@dataclass(slots=True)
class Entry:
    dn: str
    attributes: dict[str, list[str]]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _attribute_text(kind: bytes | str, value: bytes | str) -> str:
    """An attribute value as text; AD's binary objectGUID as hex."""
    if isinstance(value, bytes) and _text(kind).lower() == "objectguid":
        return value.hex()
    return _text(value)


_PLAIN_ANSWERS = ("wrong version number", "packet length too long", "record layer failure")
"""What OpenSSL says when the peer answers a TLS hello with something that is not TLS."""


def _describe(failure: Failure, tls_pending: bool = False) -> str:
    """A failure as a short reason for the log and the 503, without any credential in it.

    ``tls_pending``: an ldaps:// connection whose handshake has not completed; a peer that
    hangs up on the TLS hello, or answers it in plain text, is a plain LDAP port.
    """
    value: Any = failure.value
    if tls_pending:
        lost = failure.check(
            error.ConnectionLost, error.ConnectionDone, LDAPClientConnectionLostException
        )
        if lost or (failure.check(SSL.Error) and any(a in str(value) for a in _PLAIN_ANSWERS)):
            return (
                "the server did not answer TLS: is it a plain ldap:// port? use ldap:// "
                "(with --ldap-starttls) instead"
            )
    if failure.check(SSL.Error):
        details = [part[-1] for part in value.args[0] if part] if value.args else []
        reason = ", ".join(str(d) for d in details if d) or "handshake refused"
        return f"TLS failed: {reason}"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "host name not found"
    if failure.check(error.ConnectionLost, error.ConnectionDone, LDAPClientConnectionLostException):
        return "connection lost"
    if failure.check(error.ConnectError):
        return f"cannot connect: {value.osError}" if value.osError else "cannot connect"
    return f"{type(value).__name__}: {value}"


class Lost(DirectoryUnavailable):
    """The connection dropped under an operation: on a reused connection, worth one retry."""


@implementer(IHandshakeListener)
class _Client(LDAPClient):  # type: ignore[misc]
    """An LDAP client that knows whether the TLS handshake of an ldaps:// connection is
    still to come: a connection lost before it is a plain LDAP port answering TLS."""

    tls_pending = False

    def handshakeCompleted(self) -> None:
        self.tls_pending = False


class _ClientFactory(protocol.Factory):
    """LDAP clients, without a "Starting factory" log line for every login's connection."""

    noisy = False
    protocol = _Client


@dataclass(slots=True)
class Connection:
    client: Any
    url: str


def _load_trust(path: str) -> Any:
    """The CA certificates in a PEM file, as a Twisted trust root."""
    return trustRootFromCertificates(
        [
            Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
            for c in read_ca_certificates(path)
        ]
    )


def _drop(client: Any) -> None:
    """Abort a connection whose state is unknown (an operation timed out or failed on it)."""
    if client.transport is not None:
        client.transport.abortConnection()


def close(client: Any) -> None:
    """End a connection politely: an unbind, then the socket closes."""
    if client.connected:
        client.unbind()


def result_text(code: int, message: bytes | str | None) -> str:
    return str(ldaperrors.get(code, _text(message or b"")))


class DirectoryConnections:
    """The connections a :class:`tokend.login.ldap.client.Directory` asks through: the service
    connection (rebuilt when it breaks, one attempt shared by every caller waiting for it) and
    a bind's own connection, on the first server that answers."""

    def __init__(self, config: DirectoryConfig, reactor: Any) -> None:
        self._config = config
        self._reactor = reactor
        self._servers = config.servers
        self._trust = _load_trust(config.ca_cert) if config.ca_cert else None
        self._service: Connection | None = None
        self._waiters: list[defer.Deferred[Connection]] | None = None

    def close(self) -> None:
        """Drop the service connection (at service stop)."""
        service, self._service = self._service, None
        if service is not None:
            close(service.client)

    async def with_service(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """``work`` on the service connection; if a reused connection turns out to have been
        closed under us (a directory restart, an idle timeout), once more on a new one."""
        reused = self._service is not None and bool(self._service.client.connected)
        connection = await self._service_connection()
        try:
            return await work(connection)
        except DirectoryUnavailable as e:
            if self._service is connection:
                self._service = None
                _drop(connection.client)
            if not (reused and isinstance(e, Lost)):
                raise
        return await work(await self._service_connection())

    def _service_connection(self) -> defer.Deferred[Connection]:
        """The bound service connection; callers arriving while it is being built share the
        one attempt (a burst of logins during an outage makes one connection attempt)."""
        service = self._service
        if service is not None and service.client.connected:
            return defer.succeed(service)
        self._service = None
        waiter: defer.Deferred[Connection] = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        defer.Deferred.fromCoroutine(self._connect_service()).addBoth(self._service_ready)
        return waiter

    async def _connect_service(self) -> Connection:
        config = self._config
        connection, code, message = await self.bind(
            config.bind_dn or "", config.bind_password or b""
        )
        if code != SUCCESS:
            close(connection.client)
            who = config.bind_dn or "an anonymous bind"
            raise DirectoryUnavailable(
                f"{connection.url} refused the service account {who}: {result_text(code, message)}"
            )
        return connection

    def _service_ready(self, result: Connection | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Connection):
            self._service = result
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def bind(
        self, dn: str, password: bytes, prefer: str | None = None
    ) -> tuple[Connection, int, bytes | str | None]:
        """A connection bound as ``dn`` on the first server that answers, with the bind's
        result code (a refused bind is an answer: the caller decides what it means)."""
        servers = sorted(self._servers, key=lambda server: server.url != prefer)
        reasons = []
        for server in servers:
            try:
                client = await self._open(server)
                request = pureldap.LDAPBindRequest(dn=dn, auth=password)
                response = await self._send(client, request, f"{server.url}: bind")
            except DirectoryUnavailable as e:
                reasons.append(str(e))
                continue
            return Connection(client, server.url), response.resultCode, response.errorMessage
        raise DirectoryUnavailable("; ".join(reasons))

    async def _open(self, server: Server) -> Any:
        """A connected (and, with StartTLS, encrypted) LDAP client for ``server``."""
        timeout = self._config.timeout
        endpoint: Any = HostnameEndpoint(self._reactor, server.host, server.port, timeout)
        if server.tls:
            endpoint = wrapClientTLS(self._tls_options(server), endpoint)
        attempt = endpoint.connect(_ClientFactory())
        attempt.addTimeout(timeout, self._reactor)
        try:
            client = await attempt
            client.tls_pending = server.tls
        except defer.TimeoutError:
            raise DirectoryUnavailable(
                f"{server.url}: connecting timed out after {timeout:g} s"
            ) from None
        except Exception:
            raise DirectoryUnavailable(f"{server.url}: {_describe(Failure())}") from None
        if self._config.starttls:
            response = await self._send(
                client, pureldap.LDAPStartTLSRequest(), f"{server.url}: StartTLS"
            )
            if response.resultCode != SUCCESS:
                close(client)
                raise DirectoryUnavailable(
                    f"{server.url}: StartTLS refused: "
                    f"{result_text(response.resultCode, response.errorMessage)}"
                )
            client.transport.startTLS(self._tls_options(server))
        return client

    def _tls_options(self, server: Server) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(server.host, trustRoot=self._trust)

    async def _send(self, client: Any, request: Any, what: str) -> Any:
        try:
            sent = client.send(request)
        except LDAPClientConnectionLostException:
            sent = defer.fail()
        return await self._bounded(sent, client, what)

    async def search(
        self,
        connection: Connection,
        base: str,
        text: str,
        attributes: Sequence[str],
        size_limit: int,
        scope: str = "subtree",
    ) -> tuple[list[Entry], int, bytes | str | None]:
        """The entries a search returns (references ignored), and its result code."""
        scopes = {
            "subtree": pureldap.LDAP_SCOPE_wholeSubtree,
            "base": pureldap.LDAP_SCOPE_baseObject,
        }
        request = pureldap.LDAPSearchRequest(
            baseObject=base,
            scope=scopes[scope],
            derefAliases=pureldap.LDAP_DEREF_neverDerefAliases,
            sizeLimit=size_limit,
            timeLimit=max(1, round(self._config.timeout)),
            typesOnly=0,
            filter=parseFilter(text),
            attributes=list(attributes),
        )
        entries: list[Entry] = []
        done: defer.Deferred[Any] = defer.Deferred()

        def handle(message: Any) -> bool:
            if isinstance(message, pureldap.LDAPSearchResultEntry):
                values = {
                    _text(kind).lower(): [_attribute_text(kind, value) for value in found]
                    for kind, found in message.attributes
                }
                entries.append(Entry(_text(message.objectName), values))
                return False
            if isinstance(message, pureldap.LDAPSearchResultDone):
                if not done.called:
                    done.callback(message)
                return True
            return False

        def lost(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        client = connection.client
        try:
            client.send_multiResponse(request, handle).addErrback(lost)
        except LDAPClientConnectionLostException:
            lost(Failure())
        result = await self._bounded(done, client, f"{connection.url}: search")
        return entries, result.resultCode, result.errorMessage

    async def _bounded(self, operation: defer.Deferred[T], client: Any, what: str) -> T:
        """``operation``'s result within the timeout; a timeout or a transport failure is
        DirectoryUnavailable and the connection is dropped. ldaptor's own Deferreds are never
        cancelled (a late answer would then fire them twice): a separate one is timed out."""
        timeout = self._config.timeout
        outcome: defer.Deferred[T] = defer.Deferred()

        def forward(result: T | Failure) -> None:
            if outcome.called:
                return
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(result)

        operation.addBoth(forward)
        outcome.addTimeout(timeout, self._reactor)
        try:
            return await outcome
        except defer.TimeoutError:
            _drop(client)
            raise DirectoryUnavailable(f"{what} timed out after {timeout:g} s") from None
        except defer.CancelledError:
            raise  # the caller stopped waiting: the connection is fine, its late answer ignored
        except Exception:
            failure = Failure()
            _drop(client)
            reason = f"{what}: {_describe(failure, client.tls_pending)}"
            if failure.check(
                error.ConnectionLost, error.ConnectionDone, LDAPClientConnectionLostException
            ):
                raise Lost(reason) from None
            raise DirectoryUnavailable(reason) from None
