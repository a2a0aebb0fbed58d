"""The parent's tree under ``--workers N``, built by :func:`tokend.tap.makeService`: it binds
the socket, runs the workers and serves their metrics, and serves no token itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from tokend.daemon.control import ControlSocket, Unlocking
from tokend.daemon.services import (
    Announcer,
    DirectoryConnection,
    Listener,
    SocketGroup,
    StartUpFailure,
    metrics_listener,
)
from tokend.daemon.serving_tree import redis_failures
from tokend.daemon.startup_checks import DirectoryProbe
from tokend.daemon.supervisor import Supervisor
from tokend.daemon.token_store import schema_upgrade
from tokend.daemon.worker_logs import parent_log
from tokend.login.ldap.accounts import EntryNames
from tokend.login.ldap.client import Directory
from tokend.login.shared_limits.bus import NewsBus
from tokend.login.shared_limits.keys import SharedKeys
from tokend.logs.json_lines import LoggingRoot, event_as_json, observer_for_format
from tokend.metrics.collectors import RedisState, SupervisorState, process_collectors
from tokend.metrics.exposition import workers_metrics_resource
from tokend.policy.holder import PolicyHolder
from tokend.signing.holder import FixedKeys
from tokend.web.health import WorkersHealth

if TYPE_CHECKING:
    from tokend.settings.values import Settings


def supervisor_tree(settings: Settings, reactor: Any) -> MultiService:
    """--workers N: the parent binds the socket (one sentence if it cannot), gives it its
    group, and runs the workers; it serves nothing itself and loads no thread pool. The
    workers' log lines come finished, for it to write (or as events under --syslog/--logger)."""
    logs = settings.logs
    log = parent_log(logs.format, logs.twistd, event_as_json)
    root = LoggingRoot(log if log is not None else observer_for_format(logs.format, logs.twistd))
    failed = StartUpFailure(logs.twistd)
    listener = Listener(
        settings.listen.endpoint, Site(Resource()), reactor, failed, settings.source("listen")
    )
    listener.setServiceParent(root)
    if settings.listen.socket_group is not None:
        group = settings.listen.socket_group
        SocketGroup(settings.listen.socket_path, group, failed).setServiceParent(root)
    keys = SharedKeys.from_key_set(settings.signing.keys)
    redis = None
    news = NewsBus()  # Redis shares it; the supervisor passes what it hears to the workers
    if settings.redis is not None:
        redis = redis_failures(settings.redis, settings, reactor, keys, news)
        redis.setServiceParent(root)
    # Before the workers start: they only query the database the parent upgraded.
    schema_upgrade(settings.access_tokens.location, reactor, failed).setServiceParent(root)
    supervisor = Supervisor(
        count=settings.workers.count,
        argv=settings.workers.argv,
        port=listener.port,
        reactor=reactor,
        failed=failed,
        news=news,
        log=log,
        log_format=logs.format,
    )
    supervisor.setServiceParent(root)
    if settings.metrics is not None:
        registry = CollectorRegistry()
        process_collectors(registry)
        registry.register(SupervisorState(supervisor))
        if redis is not None:
            registry.register(RedisState(redis))
        served = workers_metrics_resource(registry, supervisor)
        served.putChild(b"healthz", cast(IResource, WorkersHealth(supervisor)))
        metrics_listener(settings, served, reactor, failed).setServiceParent(root)
    directory = None
    if settings.directory.config is not None:
        directory = Directory(settings.directory.config, reactor)
        probe = DirectoryProbe(directory, settings.source("ldap-url"), reactor, close=True)
        probe.setServiceParent(root)
        DirectoryConnection(directory).setServiceParent(root)
    if settings.listen.control_socket is not None:
        entries = None if directory is None else EntryNames(directory)
        unlocking = Unlocking(keys, supervisor.unlock, redis, entries)
        ControlSocket(settings.listen.control_socket, unlocking, reactor).setServiceParent(root)
    holder = PolicyHolder(settings.policy.loaded.policy, reactor.seconds())
    Announcer(settings, holder, FixedKeys(settings.signing.keys)).setServiceParent(root)
    return root
