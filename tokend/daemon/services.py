"""The daemon's own services, put in its trees (:mod:`tokend.daemon.serving_tree`,
:mod:`tokend.daemon.supervisor_tree`): the listener that reports a failed bind in one sentence,
the socket's group, the start-up announcement of what is served, and the directory
connection's closing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from twisted.application import strports
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Site

from tokend.login.ldap.client import Directory
from tokend.logs.namespaces import NamedLogger
from tokend.policy.examples import example_accounts
from tokend.policy.holder import PolicyHolder
from tokend.policy.report import trust_summaries
from tokend.proxy_exposure import proxy_exposure
from tokend.signing.holder import KeySource
from tokend.web.transport import ConnectionLimits, limit_connections

if TYPE_CHECKING:
    from tokend.settings.values import Group, Settings

SERVER = b"tokend"
"""The ``Server`` header of every listener: which hop answered, not which version to attack."""


class QuietSite(Site):
    """A Site without Twisted's access-log line: every request already logs one structured
    event (issued or refused, with account, client and scopes), and the second line cost a
    sixth of a request's CPU time. Nor does it tell the Twisted version in ``Server``."""

    def log(self, request: Any) -> None:
        pass

    def getResourceFor(self, request: Any) -> Any:
        # Request.process has just set "Server: TwistedWeb/<version>"; nothing is written yet.
        request.setHeader(b"Server", SERVER)
        return super().getResourceFor(request)


class StartUpFailure:
    """Ends start-up with one logged sentence and exit status 1.

    An exception out of a service's start reaches twistd, which logs it with a traceback. This
    is called from privilegedStartService, before any thread starts, so the process can simply
    exit; but a daemonising twistd's first process waits on a status pipe for "0" (started) or
    "1 <reason>" (failed), which twistd writes only for an exception, so it is written here (after
    removing the pid file, as twistd does on a failed start: the waiting process exits at once).
    """

    def __init__(self, twistd_config: Mapping[str, Any] | None) -> None:
        self._config: Mapping[str, Any] = twistd_config or {}

    def __call__(self, log: Logger, sentence: str, **fields: Any) -> NoReturn:
        log.critical(sentence, **fields)
        pidfile = self._config.get("pidfile")
        if pidfile:
            with suppress(OSError):
                if Path(pidfile).read_text().strip() == str(os.getpid()):
                    os.remove(pidfile)
        status_pipe = self._config.get("statusPipe")
        if status_pipe is not None:
            text = formatEvent({"log_format": sentence, **fields})
            os.write(status_pipe, b"1 " + text.encode("ascii", "backslashreplace")[:98])
            os.close(status_pipe)
        raise SystemExit(1)


class Listener(Service):
    """The strports listener, with a failed bind (port in use, socket locked by another daemon,
    no permission) reported as one sentence instead of twistd's traceback, naming the option
    (``--listen``, ``--metrics`` or its TOKEND_ variable) that asked for it."""

    log = NamedLogger("tokend.daemon.Listener")

    def __init__(
        self,
        description: str,
        factory: Site,
        reactor: Any,
        failed: StartUpFailure,
        option: str = "--listen",
    ) -> None:
        self.description = description
        self.factory = factory
        self.option = option
        self._failed = failed
        self._listening = strports.service(description, cast(Any, factory), reactor=reactor)
        self._privileged = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._privileged = True
        try:
            self._listening.privilegedStartService()
        except CannotListenError as e:
            self._failed(
                self.log,
                "{option}: cannot listen on {address}: {reason}",
                option=self.option,
                **bind_failure(e),
            )

    def startService(self) -> None:
        if not self._privileged:
            self.privilegedStartService()
        super().startService()
        self._listening.startService()

    def stopService(self) -> Any:
        super().stopService()
        return self._listening.stopService()

    def port(self) -> IListeningPort:
        """The bound port, once privilegedStartService has run (for --workers to hand on)."""
        bound: list[IListeningPort] = []

        def keep(port: IListeningPort) -> IListeningPort:
            bound.append(port)
            return port

        waiting: Any = self._listening._waitingForPort
        waiting.addCallback(keep)
        return bound[0]


def metrics_listener(
    settings: Settings, resource: Resource, reactor: Any, failed: StartUpFailure
) -> Listener:
    """The ``--metrics`` listener, under the token listener's HTTP limits: a request must
    arrive whole within --request-timeout, an idle connection closes after --idle-timeout, and
    a body above the cap is refused from its headers, never stored (it answers anyone who can
    connect, so it must not hold a connection or spool a body for them either)."""
    site = QuietSite(resource, reactor=reactor)
    limit_connections(
        site,
        ConnectionLimits(
            request_timeout=settings.listen.request_timeout,
            idle_timeout=settings.listen.idle_timeout,
        ),
    )
    site.displayTracebacks = False
    assert settings.metrics is not None, "a metrics listener without --metrics"
    return Listener(settings.metrics, site, reactor, failed, option=settings.source("metrics"))


def bind_failure(error: CannotListenError) -> dict[str, str]:
    """The address and a readable reason of a failed listen."""
    reason = error.socketError
    if error.interface is not None:
        address = f"TCP port {error.port} of {error.interface or 'all interfaces'}"
    else:
        path = os.fsdecode(error.port)
        address = f"UNIX socket {path}"
        if reason == "Cannot acquire lock":
            return {
                "address": address,
                "reason": f"another process (another tokend?) holds its lock {path}.lock",
            }
    if isinstance(reason, OSError) and reason.strerror:
        return {"address": address, "reason": reason.strerror}
    return {"address": address, "reason": str(reason)}


class SocketGroup(Service):
    """Hands the listening UNIX socket to a group (e.g. www-data) once it exists: in
    privilegedStartService, before twistd gives up root (--uid) and before any thread starts."""

    log = NamedLogger("tokend.daemon.SocketGroup")

    def __init__(self, path: str, group: Group, failed: StartUpFailure) -> None:
        self._path = path
        self._group = group.name
        self._gid = group.gid
        self._failed = failed

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            os.chown(self._path, -1, self._gid)
        except OSError as e:
            self._failed(
                self.log,
                "cannot give the socket {path} to group {group}: {reason}; the daemon's user "
                "must be a member of {group} (or start as root)",
                path=self._path,
                group=self._group,
                reason=e.strerror,
            )


class Announcer(Service):
    """Logs where the daemon listens, and what policy it serves, once everything before it has
    started."""

    log = NamedLogger("tokend.daemon.Announcer")

    def __init__(self, settings: Settings, holder: PolicyHolder, keys: KeySource) -> None:
        self._settings = settings
        self._holder = holder
        self._keys = keys

    def startService(self) -> None:
        super().startService()
        settings = self._settings
        signing = settings.signing
        keys = self._keys.current
        self.log.info(
            "tokend listening on {listen}; issuer {issuer}, services {services}, "
            "{alg} key kid {kid}, x5c {x5c}; keys from {source}, renewed live",
            listen=settings.listen.endpoint,
            issuer=signing.issuer,
            services=list(signing.services),
            alg=keys.signing.alg,
            kid=keys.signing.kid,
            x5c=bool(keys.signing.chain),
            source=keys.source,
            trusted=[f"{key.state} {key.name} {key.signing.kid}" for key in keys.keys],
        )
        policy = self._holder.current
        self.log.info(
            "policy generation {generation}: {users} users, {groups} groups, anonymous "
            "{anonymous_mode} of {anonymous_names} names and patterns, anonymous catalog "
            "{anonymous_catalog}",
            generation=self._holder.generation,
            users=len(policy.users),
            groups=len(policy.groups),
            anonymous_mode="blacklist" if policy.anonymous.blacklist else "whitelist",
            anonymous_names=len(policy.anonymous.repositories),
            anonymous_catalog="on" if policy.anonymous.catalog else "off",
        )
        if policy.trusts:
            self.log.info(
                "issuers.json: {count} trusts: {trusts}",
                count=len(policy.trusts),
                trusts=trust_summaries(policy),
            )
        directory = settings.directory.config
        if directory is not None:
            self.log.info(
                "directory accounts: {urls}, accounts under {base} by {filter}, groups by "
                "{groups}, service account {bind_dn}",
                urls=list(directory.urls),
                base=directory.base,
                filter=(
                    directory.filter
                    if directory.active_filter is None
                    else f"(&{directory.filter}{directory.active_filter})"
                ),
                groups=(
                    f"search under {directory.group_base}"
                    if directory.group_base
                    else f"attribute {directory.group_attribute}"
                ),
                bind_dn=directory.bind_dn or "(anonymous)",
            )
        if settings.directory.ignored is not None:
            self.log.warn("{warning}", warning=settings.directory.ignored)
        for network in settings.listen.trusted_proxies:
            if network.prefixlen == 0:
                self.log.warn(
                    "{option} {network} trusts every TCP peer as a proxy: every client can then "
                    "choose its own address for throttling (X-Real-IP, X-Forwarded-For); name "
                    "only your proxies' addresses",
                    option=settings.source("trusted-proxy"),
                    network=str(network),
                )
        exposure = proxy_exposure(
            settings.listen.endpoint,
            settings.listen.trusted_proxies,
            settings.source("listen"),
            settings.source("trusted-proxy"),
        )
        if exposure is not None:
            self.log.warn("{exposure}", exposure=exposure)
        examples = example_accounts(policy)
        if examples:  # only a development daemon (--dev-cert) starts with them
            self.log.warn(
                "development daemon: {accounts} have the example passwords shipped with "
                "tokend, which anyone can look up; never let it serve a registry others can "
                "reach (write your own users.json with tokend hash-password)",
                accounts=", ".join(examples),
            )
        if signing.created_dev_cert:
            self.log.warn(
                "created a development key {key} and certificate {cert}: give the registry "
                "{cert} as auth.token.rootcertbundle; use your own key pair in production",
                key=signing.key_file,
                cert=signing.cert_file,
            )
        for warning in settings.policy.loaded.warnings:
            self.log.warn("policy warning: {warning}", warning=warning)
        if signing.keys_dir is None and signing.cert_used is None:
            self.log.warn(
                "no certificate at {cert}: tokens carry only a kid", cert=signing.cert_file
            )


class DirectoryConnection(Service):
    """Closes the directory's service-account connection when the daemon stops."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    def stopService(self) -> Any:
        super().stopService()
        self._directory.close()
