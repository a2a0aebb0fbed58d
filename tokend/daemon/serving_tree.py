"""The tree that serves tokens, built by :func:`tokend.tap.makeService` for a single-process
daemon and by each ``--workers`` worker: policy, logins, the realm, its listener and metrics."""

from __future__ import annotations

from functools import partial
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
from tokend.daemon.token_store import TokenStore
from tokend.file_watch import WatchService
from tokend.issuing import Issuing
from tokend.login.access_tokens import AccessTokenAccounts
from tokend.login.assembly import logins_for
from tokend.login.credential_cache import CredentialCache
from tokend.login.federated import FederatedAccounts
from tokend.login.federation.issuer_keys import IssuerKeys
from tokend.login.in_flight import InFlight
from tokend.login.ldap.accounts import DirectoryAccounts
from tokend.login.ldap.client import Directory
from tokend.login.passwords import PasswordChecker
from tokend.login.program import ProgramAccounts
from tokend.login.refresh_tokens import RefreshTokens
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.keys import SharedKeys
from tokend.login.shared_limits.redis_store import RedisFailures
from tokend.login.throttle import LoginThrottle
from tokend.logs.json_lines import LoggingRoot, observer_for_format
from tokend.metrics.collectors import (
    RedisState,
    ServiceState,
    process_collectors,
)
from tokend.metrics.exposition import metrics_resource
from tokend.metrics.instruments import NO_METRICS, NO_TOKEN_METRICS, Metrics, RequestMetrics
from tokend.policy.holder import PolicyHolder
from tokend.policy.reload import PolicyReloader, keep_out_of_gc
from tokend.policy.watcher import PolicyWatchService
from tokend.programs.authorization import AuthorizationProgram
from tokend.programs.runner import ProgramRunner, ProgramSlots
from tokend.signing.holder import KeyHolder
from tokend.signing.reload import ExpiryWarnings, KeyReloader, key_watch_plan
from tokend.signing.tokens import TokenIssuer
from tokend.threads import BoundedThreadQueue, QueueService, ThreadPoolService
from tokend.web.access_token_api import AccessTokenAPI
from tokend.web.health import PolicyHealth
from tokend.web.issuer_fetch import AgentFetch
from tokend.web.realm import TokenAPI
from tokend.web.transport import ConnectionLimits, limit_connections

if TYPE_CHECKING:
    from tokend.daemon.worker_process import WorkerSetup
    from tokend.login.shared_limits.redis_address import RedisAddress
    from tokend.settings.values import Settings


def _metrics(
    registry: CollectorRegistry | None,
    settings: Settings,
    holder: PolicyHolder,
    keys: KeyHolder,
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
            keys=keys,
        )
    )
    return metrics


def _directory_accounts(
    settings: Settings,
    reactor: Any,
    holder: PolicyHolder,
    cache: CredentialCache,
    root: MultiService,
    probe: bool,
) -> DirectoryAccounts | None:
    """Directory logins for names users.json does not hold, when --ldap-url is given; with
    ``probe``, the directory is asked once at start-up too."""
    config = settings.directory.config
    if config is None:
        return None
    directory = Directory(config, reactor)
    DirectoryConnection(directory).setServiceParent(root)
    if probe:
        DirectoryProbe(directory, settings.source("ldap-url"), reactor).setServiceParent(root)
    return DirectoryAccounts(
        directory,
        lambda: holder.current,
        cache,
        reactor.seconds,
        retry_after=config.timeout,
    )


def serving_tree(
    settings: Settings, reactor: Any, worker: WorkerSetup | None = None
) -> MultiService:
    """The tree that serves tokens: a single-process daemon's, or with ``worker`` one
    worker's (the same tree, serving the socket the parent bound)."""
    limits = settings.limits
    root = LoggingRoot(observer_for_format(settings.logs.format, settings.logs.twistd))
    bcrypt_pool = ThreadPoolService(reactor, limits.bcrypt_threads, "tokend-bcrypt")
    bcrypt_pool.setServiceParent(root)
    reload_pool = ThreadPoolService(reactor, 1, "tokend-reload")
    reload_pool.setServiceParent(root)
    failed = StartUpFailure(settings.logs.twistd)
    # Before the listener: a single-process daemon upgrades the schema before serving (a
    # worker's parent has done it). The door and the HTTP API (#26) both use tokens.store.
    tokens = TokenStore(
        settings.access_tokens.location, reactor, upgrade_with=failed if worker is None else None
    )
    tokens.setServiceParent(root)
    holder = PolicyHolder(settings.policy.loaded.policy, reactor.seconds())
    bcrypt_queue = BoundedThreadQueue(
        bcrypt_pool, limit=limits.bcrypt_threads, queue=limits.bcrypt_queue
    )
    QueueService(bcrypt_queue).setServiceParent(root)  # stops before the pool
    credential_cache = CredentialCache(
        ttl=limits.credential_cache_ttl, max_entries=limits.credential_cache_size
    )
    registry = CollectorRegistry() if settings.metrics is not None else None
    signing_keys = KeyHolder(settings.signing.keys, reactor.seconds())
    metrics = _metrics(registry, settings, holder, signing_keys, credential_cache, bcrypt_queue)
    keys = SharedKeys.from_key_set(settings.signing.keys)
    redis = None
    # A worker's news and questions for Redis go through the parent, which shares its bus.
    news = worker.news if worker is not None else NewsBus()
    if worker is None and settings.redis is not None:
        redis = redis_failures(settings.redis, settings, reactor, keys, news)
        redis.setServiceParent(root)
        if registry is not None:
            registry.register(RedisState(redis))
    throttle = LoginThrottle(
        per_account=limits.max_failures_per_account,
        per_address=limits.max_failures_per_address,
        window=limits.failure_window,
        keys=keys.name,
        news=news,
    )
    directory = _directory_accounts(
        settings, reactor, holder, credential_cache, root, probe=worker is None
    )
    if worker is None and settings.listen.control_socket is not None:
        entries = None if directory is None else directory.entry_names
        unlocking = Unlocking(keys, single_process(throttle.unlock), redis, entries)
        ControlSocket(settings.listen.control_socket, unlocking, reactor).setServiceParent(root)
    signing = settings.signing
    programs = settings.programs
    slots = ProgramSlots(programs.at_once)
    program_accounts = authorization = None
    if programs.authentication is not None:
        runner = ProgramRunner(programs.authentication, reactor, slots)
        program_accounts = ProgramAccounts(
            runner, lambda: holder.current, credential_cache, reactor.seconds
        )
    if programs.authorization is not None:
        runner = ProgramRunner(programs.authorization, reactor, slots)
        authorization = AuthorizationProgram(runner, decides=programs.authorization_decides)
    # Every trust's issuer's keys, shared by the logins of this process; a trust added to
    # issuers.json later is served without a restart.
    issuer_keys = IssuerKeys(reactor, AgentFetch(reactor), reactor.seconds, metrics=metrics)
    federation = FederatedAccounts(issuer_keys, lambda: holder.current, reactor.seconds)
    token_metrics = metrics if isinstance(metrics, Metrics) else NO_TOKEN_METRICS
    access_tokens = AccessTokenAccounts(
        tokens.store,
        lambda: holder.current,
        reactor.seconds,
        directory=directory,
        events=token_metrics,
    )
    logins = logins_for(
        policy=holder,
        passwords=PasswordChecker(bcrypt_queue),
        clock=reactor.seconds,
        throttle=throttle,
        credential_cache=credential_cache,
        in_flight=InFlight(
            limits.bcrypt_per_address, capacity=limits.bcrypt_threads + limits.bcrypt_queue
        ),
        program=program_accounts,
        directory=directory,
        refresh_tokens=RefreshTokens(signing_keys, signing.issuer, signing.refresh_token_ttl),
        federation=federation,
        access_tokens=access_tokens,
        metrics=metrics,
    )
    trusted_proxies = TrustedProxies(
        networks=settings.listen.trusted_proxies, header=settings.listen.client_address_header
    )
    api = TokenAPI(
        policy=holder,
        logins=logins,
        issuing=Issuing(
            policy=holder,
            tokens=TokenIssuer(signing_keys, signing.issuer, signing.token_ttl),
            logins=logins,
            clock=reactor.seconds,
            authorization=authorization,
        ),
        services=list(signing.services),
        realm_path=settings.listen.realm_path,
        trusted_proxies=trusted_proxies,
        metrics=metrics,
        keys=signing_keys,
        api=AccessTokenAPI(
            policy=holder,
            logins=logins,
            store=tokens.store,
            clock=reactor.seconds,
            realm=signing.issuer,
            max_ttl=settings.access_tokens.max_ttl,
            revoked=access_tokens.forget,
            owners=directory,
            trusted_proxies=trusted_proxies,
            metrics=token_metrics,
        ).resource(),
    )
    site = QuietSite(api.resource(), reactor=reactor)
    limit_connections(
        site,
        ConnectionLimits(
            request_timeout=settings.listen.request_timeout,
            idle_timeout=settings.listen.idle_timeout,
            realm_path=settings.listen.realm_path.encode("utf-8"),
        ),
    )
    site.displayTracebacks = False
    # Before the listener: the watch is armed before the socket is bound (privileged start).
    config_dir = settings.policy.config_dir
    reloader = PolicyReloader(config_dir, holder, reactor, reload_pool, settings.policy.loader())
    reloader.setServiceParent(root)  # stops, giving up a load, before reload_pool joins
    PolicyWatchService(
        config_dir, reloader.reload, reactor, poll=settings.policy.poll
    ).setServiceParent(root)
    key_reloader = KeyReloader(signing.loader(), signing_keys, reactor, reload_pool)
    key_reloader.setServiceParent(root)
    key_plan = partial(key_watch_plan, signing.keys_dir, Path(signing.key_file), signing.cert_used)
    WatchService(
        key_plan, key_reloader.reload, reactor, poll=settings.policy.poll, what="signing keys"
    ).setServiceParent(root)
    ExpiryWarnings(signing_keys, reactor).setServiceParent(root)
    if worker is not None:
        worker.listener(site, reactor).setServiceParent(root)
    else:
        endpoint, option = settings.listen.endpoint, settings.source("listen")
        Listener(endpoint, site, reactor, failed, option).setServiceParent(root)
        if settings.listen.socket_group is not None:
            group = settings.listen.socket_group
            SocketGroup(settings.listen.socket_path, group, failed).setServiceParent(root)
    if registry is not None and worker is not None:
        # The parent serves every worker's metrics and health.
        worker.expose(registry, holder, signing_keys)
    elif registry is not None:
        served = metrics_resource(registry)
        served.putChild(b"healthz", cast(IResource, PolicyHealth(holder, signing_keys)))
        metrics_listener(settings, served, reactor, failed).setServiceParent(root)
    if worker is None:
        Announcer(settings, holder, signing_keys).setServiceParent(root)
    keep_out_of_gc()
    return root


def redis_failures(
    address: RedisAddress,
    settings: Settings,
    reactor: Any,
    keys: SharedKeys,
    news: NewsBus,
) -> RedisFailures:
    """The login throttle's shared failures (--redis at ``address``), for either tree: the
    shared side of ``news``."""
    return RedisFailures(
        address,
        keys=keys,
        news=news,
        per_account=settings.limits.max_failures_per_account,
        per_address=settings.limits.max_failures_per_address,
        window=settings.limits.failure_window,
        reactor=reactor,
        option=settings.source("redis"),
    )
