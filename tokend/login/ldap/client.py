"""Directory accounts: who someone is, asked of an LDAP server (OpenLDAP, Active Directory).

A login searches the account under the base DN with the service account, then binds as the
entry it found with the given password, on a connection of its own. ldaptor speaks LDAP on the
reactor (no thread per request, no blocking call); every operation is bounded by the configured
timeout, and anything that keeps the directory from answering (refused, unreachable, timed out,
TLS failure, the service account refused) is :class:`DirectoryUnavailable`, which the web layer
answers with 503 rather than 401: an outage must not look like a wrong password.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
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

from tokend.dn import normalise_dn
from tokend.login.identity import OPEN_GATE, EntryGate, UnfitName, directory_name
from tokend.login.ldap.config import (
    DirectoryConfig,
    InvalidLDAPFilter,
    Server,
    escape_filter_value,
    fill,
    parseFilter,
    read_ca_certificates,
)
from tokend.login.ldap.entries import (
    POLICY_ATTRIBUTES,
    POLICY_FILTER,
    STATE_ATTRIBUTES,
    EntryState,
    LockoutPolicy,
    entry_state,
    lockout_policy,
)
from tokend.login.ldap.report import DirectoryReport
from tokend.logs.escaping import printable
from tokend.logs.namespaces import NamedLogger

_SUCCESS = ldaperrors.Success.resultCode
_SIZE_LIMIT_EXCEEDED = ldaperrors.LDAPSizeLimitExceeded.resultCode
_NO_SUCH_OBJECT = ldaperrors.LDAPNoSuchObject.resultCode
_INVALID_CREDENTIALS = ldaperrors.LDAPInvalidCredentials.resultCode
_NO_ATTRIBUTES = ["1.1"]
"""RFC 4511 4.5.1.8: ask for no attributes at all, only the entries' DNs."""
_CHECK_SIZE_LIMIT = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DirectoryAccount:
    """A directory entry that matched a login: its DN, the (normalised) DNs of its groups, and
    what its operational attributes say (its stable id, when its password changed)."""

    dn: str
    groups: frozenset[str]
    state: EntryState = field(default=EntryState(), compare=False)


class DirectoryUnavailable(Exception):
    """unreachable / timed out / service bind refused: the web answers 503 + Retry-After."""


@dataclass(slots=True)
class _Entry:
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


class _Lost(DirectoryUnavailable):
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
class _Connection:
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


def _close(client: Any) -> None:
    """End a connection politely: an unbind, then the socket closes."""
    if client.connected:
        client.unbind()


def _plausible(account: str) -> bool:
    """Whether ``account`` may be looked up at all. The directory's matching rules ignore
    leading and trailing spaces (``" mozart"`` finds mozart) and read a fullwidth m as m,
    so such spellings (:func:`tokend.login.identity.directory_name`) are refused before any
    traffic: one person, one login name. Case is the directory's to ignore."""
    try:
        directory_name(account)
    except UnfitName:
        return False
    return True


def _result(code: int, message: bytes | str | None) -> str:
    return str(ldaperrors.get(code, _text(message or b"")))


class Directory:
    """Accounts and their groups in an LDAP directory, asked without blocking the reactor.

    One service-account connection serves every search (rebuilt when it breaks); each login's
    password bind gets a short-lived connection of its own, so a user's bind can never change
    what the shared connection is allowed to see. An outage is logged when it starts and when
    it ends, not once per request.
    """

    log = NamedLogger("tokend.login.directory.Directory")

    def __init__(self, config: DirectoryConfig, reactor: Any) -> None:
        self._config = config
        self._reactor = reactor
        self._servers = config.servers
        self._trust = _load_trust(config.ca_cert) if config.ca_cert else None
        self._service: _Connection | None = None
        self._waiters: list[defer.Deferred[_Connection]] | None = None
        self._outage: str | None = None

    # -- the public questions -------------------------------------------------------------

    async def authenticate(
        self, account: str, password: bytes, gate: EntryGate = OPEN_GATE
    ) -> DirectoryAccount | None:
        """The account's entry and groups when ``password`` is its password; None otherwise.

        An empty password is refused here, before the directory is asked: LDAP treats a bind
        with a DN and no password as an anonymous bind, which many servers let succeed.
        ``gate`` is asked about the entry found, before the password is tried on it.
        """
        if not password or not _plausible(account):
            return None
        return await self._tracked(self._authenticate(account, password, gate))

    async def lookup(self, account: str) -> DirectoryAccount | None:
        """The account's entry and groups, without a password (refresh tokens, ``explain``)."""
        if not _plausible(account):
            return None
        return await self._tracked(self._with_service(lambda c: self._account(c, account)))

    async def check(self) -> DirectoryReport:
        """Bind the service account, read the bases, count accounts: for ``check-config``."""
        return await self._tracked(self._with_service(self._check))

    async def missing(self, dns: Iterable[str]) -> list[str]:
        """Which of these DNs name no entry the service account can read: for ``check-config``,
        so that a typo in groups.json's ldap_groups is reported instead of matching nobody."""

        async def absent(connection: _Connection) -> list[str]:
            gone = []
            for dn in dns:
                _, code, message = await self._search(
                    connection, dn, "(objectClass=*)", _NO_ATTRIBUTES, 1, scope="base"
                )
                if code == _NO_SUCH_OBJECT:
                    gone.append(dn)
                else:
                    self._require_success(code, message, connection, dn)
            return gone

        return await self._tracked(self._with_service(absent))

    def close(self) -> None:
        """Drop the service connection (at service stop)."""
        service, self._service = self._service, None
        if service is not None:
            _close(service.client)

    # -- logins and searches --------------------------------------------------------------

    async def _authenticate(
        self, account: str, password: bytes, gate: EntryGate
    ) -> DirectoryAccount | None:
        found = await self._with_service(lambda c: self._find(c, account))
        if found is None:
            return None
        entry, url = found
        if not self._active(entry, account):
            return None
        await gate.admit(entry.dn)
        connection, code, message = await self._connect(entry.dn, password, prefer=url)
        _close(connection.client)
        if code == _INVALID_CREDENTIALS:
            return None
        if code != _SUCCESS:
            self.log.info(
                "directory refused the login of {account}: {reason}",
                account=printable(account),
                reason=_result(code, message),
            )
            return None
        groups = await self._with_service(lambda c: self._groups(c, entry))
        return DirectoryAccount(entry.dn, groups, entry_state(entry.attributes))

    async def _account(self, connection: _Connection, account: str) -> DirectoryAccount | None:
        found = await self._find(connection, account)
        if found is None:
            return None
        entry, _ = found
        if not self._active(entry, account):
            return None
        groups = await self._groups(connection, entry)
        return DirectoryAccount(entry.dn, groups, entry_state(entry.attributes))

    def _active(self, entry: _Entry, account: str) -> bool:
        """Whether the entry may log in: not locked or disabled by the attributes OpenLDAP
        ppolicy, 389-DS and AD lock with (the active filter was part of the search)."""
        inactive = entry_state(entry.attributes).inactive
        if inactive is not None:
            self.log.info(
                "directory: account {account} is {inactive}; refused",
                account=printable(account),
                inactive=inactive,
            )
        return inactive is None

    async def _find(self, connection: _Connection, account: str) -> tuple[_Entry, str] | None:
        """The one entry the filter finds for ``account`` under the base, or None."""
        config = self._config
        text = self._account_filter(escape_filter_value(account))
        attributes = list(STATE_ATTRIBUTES)
        if config.group_base is None:
            attributes.append(config.group_attribute)
        # Two is enough to tell "one" from "several", and spares the directory a long answer.
        try:
            entries, code, message = await self._search(
                connection, config.base, text, attributes, 2
            )
        except InvalidLDAPFilter:
            self.log.warn(
                "directory: the filter with account {account} is not a filter; login refused",
                account=printable(account),
            )
            return None
        if code == _SIZE_LIMIT_EXCEEDED or len(entries) > 1:
            self.log.warn(
                "directory: several entries match account {account} ({dns}); login refused",
                account=printable(account),
                dns=", ".join(printable(entry.dn) or "" for entry in entries),
            )
            return None
        self._require_success(code, message, connection, config.base)
        return (entries[0], connection.url) if entries else None

    async def _groups(self, connection: _Connection, entry: _Entry) -> frozenset[str]:
        config = self._config
        if config.group_base is None:
            values = entry.attributes.get(config.group_attribute.lower(), [])
        else:
            text = fill(config.group_filter, "dn", escape_filter_value(entry.dn))
            entries, code, message = await self._search(
                connection, config.group_base, text, _NO_ATTRIBUTES, 0
            )
            self._require_success(code, message, connection, config.group_base)
            values = [group.dn for group in entries]
        groups = set()
        for value in values:
            try:
                groups.add(normalise_dn(value))
            except ValueError:
                self.log.warn(
                    "directory: group {group} of {dn} is not a DN; ignored",
                    group=printable(value),
                    dn=printable(entry.dn),
                )
        return frozenset(groups)

    def _account_filter(self, value: str) -> str:
        """The search for an account: the filter with ``value``, and the active filter."""
        text = fill(self._config.filter, "account", value)
        active = self._config.active_filter
        return text if active is None else f"(&{text}{active})"

    async def _count(self, connection: _Connection, base: str, text: str) -> tuple[int, bool]:
        """How many entries (up to the check's bound) a search finds, and whether more."""
        entries, code, message = await self._search(
            connection, base, text, _NO_ATTRIBUTES, _CHECK_SIZE_LIMIT
        )
        if code != _SIZE_LIMIT_EXCEEDED:
            self._require_success(code, message, connection, base)
        return len(entries), code == _SIZE_LIMIT_EXCEEDED

    async def _check(self, connection: _Connection) -> DirectoryReport:
        config = self._config
        await self._require_entry(connection, config.base)
        accounts, more = await self._count(
            connection, config.base, fill(config.filter, "account", "*")
        )
        active = None
        if config.active_filter is not None:
            active, _ = await self._count(connection, config.base, self._account_filter("*"))
        groups = None
        if config.group_base is not None:
            await self._require_entry(connection, config.group_base)
            found, group_code, group_message = await self._search(
                connection,
                config.group_base,
                fill(config.group_filter, "dn", "*"),
                _NO_ATTRIBUTES,
                _CHECK_SIZE_LIMIT,
            )
            if group_code != _SIZE_LIMIT_EXCEEDED:
                self._require_success(group_code, group_message, connection, config.group_base)
            groups = len(found)
        return DirectoryReport(
            url=connection.url,
            bind_dn=config.bind_dn,
            base=config.base,
            accounts=accounts,
            more_accounts=more,
            group_base=config.group_base,
            groups=groups,
            active_filter=config.active_filter,
            active=active,
            policies=await self._lockout_policies(connection),
        )

    async def _lockout_policies(self, connection: _Connection) -> tuple[LockoutPolicy, ...]:
        """The password policies under the base's naming context that lock accounts, as far
        as the service account may read them (none found is no finding: they may be hidden)."""
        base = await self._naming_context(connection)
        entries, code, _ = await self._search(
            connection, base, POLICY_FILTER, list(POLICY_ATTRIBUTES), _CHECK_SIZE_LIMIT
        )
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            return ()
        found = (lockout_policy(entry.dn, entry.attributes) for entry in entries)
        return tuple(policy for policy in found if policy is not None)

    async def _naming_context(self, connection: _Connection) -> str:
        """The naming context (from the root DSE) holding the search base, else the base."""
        config = self._config
        entries, code, _ = await self._search(
            connection, "", "(objectClass=*)", ["namingContexts"], 1, scope="base"
        )
        contexts = entries[0].attributes.get("namingcontexts", []) if entries else []
        base = normalise_dn(config.base)
        for context in contexts if code == _SUCCESS else []:
            try:
                normalised = normalise_dn(context)
            except ValueError:
                continue
            if base == normalised or base.endswith("," + normalised):
                return context
        return config.base

    async def _require_entry(self, connection: _Connection, base: str) -> None:
        _, code, message = await self._search(
            connection, base, "(objectClass=*)", _NO_ATTRIBUTES, 1, scope="base"
        )
        self._require_success(code, message, connection, base)

    @staticmethod
    def _require_success(
        code: int, message: bytes | str | None, connection: _Connection, base: str
    ) -> None:
        if code == _NO_SUCH_OBJECT:
            raise DirectoryUnavailable(f"{connection.url}: {base} does not exist")
        if code != _SUCCESS:
            raise DirectoryUnavailable(
                f"{connection.url}: searching {base} failed: {_result(code, message)}"
            )

    # -- outages ----------------------------------------------------------------------------

    async def _tracked(self, work: Awaitable[T]) -> T:
        """``work``'s result; an outage is logged when it starts and when it ends, not per
        request."""
        try:
            result = await work
        except DirectoryUnavailable as e:
            if self._outage is None:
                self._outage = str(e)
                self.log.warn("directory unavailable: {reason}", reason=str(e))
            raise
        if self._outage is not None:
            self._outage = None
            self.log.info("directory reachable again")
        return result

    # -- the service connection -----------------------------------------------------------

    async def _with_service(self, work: Callable[[_Connection], Awaitable[T]]) -> T:
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
            if not (reused and isinstance(e, _Lost)):
                raise
        return await work(await self._service_connection())

    def _service_connection(self) -> defer.Deferred[_Connection]:
        """The bound service connection; callers arriving while it is being built share the
        one attempt (a burst of logins during an outage makes one connection attempt)."""
        service = self._service
        if service is not None and service.client.connected:
            return defer.succeed(service)
        self._service = None
        waiter: defer.Deferred[_Connection] = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        defer.Deferred.fromCoroutine(self._connect_service()).addBoth(self._service_ready)
        return waiter

    async def _connect_service(self) -> _Connection:
        config = self._config
        connection, code, message = await self._connect(
            config.bind_dn or "", config.bind_password or b""
        )
        if code != _SUCCESS:
            _close(connection.client)
            who = config.bind_dn or "an anonymous bind"
            raise DirectoryUnavailable(
                f"{connection.url} refused the service account {who}: {_result(code, message)}"
            )
        return connection

    def _service_ready(self, result: _Connection | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, _Connection):
            self._service = result
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # -- connections and operations -------------------------------------------------------

    async def _connect(
        self, dn: str, password: bytes, prefer: str | None = None
    ) -> tuple[_Connection, int, bytes | str | None]:
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
            return _Connection(client, server.url), response.resultCode, response.errorMessage
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
            if response.resultCode != _SUCCESS:
                _close(client)
                raise DirectoryUnavailable(
                    f"{server.url}: StartTLS refused: "
                    f"{_result(response.resultCode, response.errorMessage)}"
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

    async def _search(
        self,
        connection: _Connection,
        base: str,
        text: str,
        attributes: Sequence[str],
        size_limit: int,
        scope: str = "subtree",
    ) -> tuple[list[_Entry], int, bytes | str | None]:
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
        entries: list[_Entry] = []
        done: defer.Deferred[Any] = defer.Deferred()

        def handle(message: Any) -> bool:
            if isinstance(message, pureldap.LDAPSearchResultEntry):
                values = {
                    _text(kind).lower(): [_attribute_text(kind, value) for value in found]
                    for kind, found in message.attributes
                }
                entries.append(_Entry(_text(message.objectName), values))
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
                raise _Lost(reason) from None
            raise DirectoryUnavailable(reason) from None
