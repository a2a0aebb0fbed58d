"""The tree that serves tokens, built by :func:`tokend.tap.makeService` for a single-process
daemon and by each ``--workers`` worker: policy, logins, the realm, its listener and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.web.resource import IResource

from tokend.client_address import TrustedProxies
from tokend.daemon.control import ControlSocket, Unlocking, single_process
from tokend.daemon.services import (
    Announcer,
    DirectoryConnection,
    Listener,
    QuietSite,
    SocketGroup,
    StartUpFailure,
    metrics_listener,
)
from tokend.daemon.startup_checks import DirectoryProbe
from tokend.issuing import Issuing
from tokend.login.assembly import logins_for
from tokend.login.credential_cache import CredentialCache
from tokend.login.in_flight import InFlight
from tokend.login.ldap.accounts import DirectoryAccounts
from tokend.login.ldap.client import Directory
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.keys import SharedKeys
from tokend.login.shared_limits.redis_store import RedisFailures
from tokend.login.throttle import LoginThrottle
from tokend.logs.json_lines import LoggingRoot, observer_for_format
from tokend.metrics.collectors import (
    RedisState,
    ServiceState,
    certificate_expiry,
    process_collectors,
)
from tokend.metrics.exposition import metrics_resource
from tokend.metrics.instruments import NO_METRICS, Metrics, RequestMetrics
from tokend.policy.holder import PolicyHolder
from tokend.policy.reload import PolicyReloader, keep_out_of_gc
from tokend.policy.watcher import PolicyWatchService
from tokend.signing.tokens import TokenIssuer
from tokend.threads import BoundedThreadQueue, QueueService, ThreadPoolService
from tokend.web.health import PolicyHealth
from tokend.web.realm import TokenAPI
from tokend.web.transport import ConnectionLimits, limit_connections

if TYPE_CHECKING:
    from tokend.daemon.worker_process import WorkerSetup
    from tokend.tap import Options


def _metrics(
    registry: CollectorRegistry | None,
    options: Options,
    holder: PolicyHolder,
    credential_cache: CredentialCache,
    bcrypt_queue: BoundedThreadQueue,
) -> RequestMetrics:
    """The realm's instruments and the state read at scrape time, on ``registry``; with no
    registry (no --metrics) nothing is counted, and requests pay nothing for it."""
    if registry is None:
        return NO_METRICS
    metrics = Metrics(registry)
    process_collectors(registry)
    registry.register(
        ServiceState(
            holder,
            credential_cache=credential_cache,
            queue=bcrypt_queue,
            certificate_expiry=certificate_expiry(options.signing_key),
        )
    )
    return metrics


def _directory_accounts(
    options: Options,
    reactor: Any,
    holder: PolicyHolder,
    cache: CredentialCache,
    root: MultiService,
    probe: bool,
) -> DirectoryAccounts | None:
    """Directory logins for names users.json does not hold, when --ldap-url is given; with
    ``probe``, the directory is asked once at start-up too."""
    config = options.directory
    if config is None:
        return None
    directory = Directory(config, reactor)
    DirectoryConnection(directory).setServiceParent(root)
    if probe:
        DirectoryProbe(directory, options.source("ldap-url"), reactor).setServiceParent(root)
    return DirectoryAccounts(
        directory,
        lambda: holder.current,
        cache,
        reactor.seconds,
        retry_after=config.timeout,
    )


def serving_tree(options: Options, reactor: Any, worker: WorkerSetup | None = None) -> MultiService:
    """The tree that serves tokens: a single-process daemon's, or with ``worker`` one
    worker's (the same tree, serving the socket the parent bound)."""
    root = LoggingRoot(observer_for_format(options["log-format"], options.parent))
    bcrypt_pool = ThreadPoolService(reactor, options["bcrypt-threads"], "tokend-bcrypt")
    bcrypt_pool.setServiceParent(root)
    reload_pool = ThreadPoolService(reactor, 1, "tokend-reload")
    reload_pool.setServiceParent(root)
    holder = PolicyHolder(options.loaded_policy.policy, reactor.seconds())
    bcrypt_queue = BoundedThreadQueue(
        bcrypt_pool, limit=options["bcrypt-threads"], queue=options["bcrypt-queue"]
    )
    QueueService(bcrypt_queue).setServiceParent(root)  # stops before the pool
    credential_cache = CredentialCache(
        ttl=options["credential-cache-ttl"], max_entries=options["credential-cache-size"]
    )
    registry = CollectorRegistry() if options["metrics"] is not None else None
    metrics = _metrics(registry, options, holder, credential_cache, bcrypt_queue)
    keys = SharedKeys.from_signing_key(options.signing_key)
    redis = None
    # A worker's news and questions for Redis go through the parent, which shares its bus.
    news = worker.news if worker is not None else NewsBus()
    if worker is None and options["redis"] is not None:
        redis = redis_failures(options, reactor, keys, news)
        redis.setServiceParent(root)
        if registry is not None:
            registry.register(RedisState(redis))
    throttle = LoginThrottle(
        per_account=options["max-failures-per-account"],
        per_address=options["max-failures-per-address"],
        window=options["failure-window"],
        keys=keys.name,
        news=news,
    )
    directory = _directory_accounts(
        options, reactor, holder, credential_cache, root, probe=worker is None
    )
    if worker is None and options["control-socket"] is not None:
        entries = None if directory is None else directory.entry_names
        unlocking = Unlocking(keys, single_process(throttle.unlock), redis, entries)
        ControlSocket(options["control-socket"], unlocking, reactor).setServiceParent(root)
    logins = logins_for(
        policy=holder,
        passwords=PasswordChecker(bcrypt_queue),
        clock=reactor.seconds,
        throttle=throttle,
        credential_cache=credential_cache,
        in_flight=InFlight(
            options["bcrypt-per-address"],
            capacity=options["bcrypt-threads"] + options["bcrypt-queue"],
        ),
        directory=directory,
        refresh_tokens=RefreshTokens(
            options.signing_key, options["issuer"], options["refresh-token-ttl"]
        ),
        metrics=metrics,
    )
    api = TokenAPI(
        policy=holder,
        logins=logins,
        issuing=Issuing(
            policy=holder,
            tokens=TokenIssuer(options.signing_key, options["issuer"], options["token-ttl"]),
            logins=logins,
            clock=reactor.seconds,
        ),
        services=options["service"],
        realm_path=options["realm-path"],
        trusted_proxies=TrustedProxies(
            networks=options["trusted-proxy"], header=options["client-address-header"]
        ),
        metrics=metrics,
    )
    site = QuietSite(api.resource(), reactor=reactor)
    limit_connections(
        site,
        ConnectionLimits(
            request_timeout=options["request-timeout"],
            idle_timeout=options["idle-timeout"],
            realm_path=options["realm-path"].encode("utf-8"),
        ),
    )
    site.displayTracebacks = False
    # Before the listener: the watch is armed before the socket is bound (privileged start).
    config_dir = Path(options["config-dir"])
    reloader = PolicyReloader(config_dir, holder, reactor, reload_pool, options.policy_loader())
    reloader.setServiceParent(root)  # stops, giving up a load, before reload_pool joins
    PolicyWatchService(
        config_dir, reloader.reload, reactor, poll=bool(options["poll"])
    ).setServiceParent(root)
    failed = StartUpFailure(options.parent)
    if worker is not None:
        worker.listener(site, reactor).setServiceParent(root)
    else:
        listener = Listener(options["listen"], site, reactor, failed, options.source("listen"))
        listener.setServiceParent(root)
    if options.get("socket-gid") is not None and worker is None:
        socket_path = options.socket_path(options["listen"])
        group = SocketGroup(socket_path, options["socket-group"], options["socket-gid"], failed)
        group.setServiceParent(root)
    if registry is not None and worker is not None:
        worker.expose(registry, holder)  # the parent serves every worker's metrics and health
    elif registry is not None:
        served = metrics_resource(registry)
        served.putChild(b"healthz", cast(IResource, PolicyHealth(holder)))
        metrics_listener(options, served, reactor, failed).setServiceParent(root)
    if worker is None:
        Announcer(options, holder).setServiceParent(root)
    keep_out_of_gc()
    return root


def redis_failures(
    options: Options,
    reactor: Any,
    keys: SharedKeys,
    news: NewsBus,
) -> RedisFailures:
    """The login throttle's shared failures (--redis), for either tree: the shared side of
    ``news``."""
    return RedisFailures(
        options["redis"],
        keys=keys,
        news=news,
        per_account=options["max-failures-per-account"],
        per_address=options["max-failures-per-address"],
        window=options["failure-window"],
        reactor=reactor,
        option=options.source("redis"),
    )
