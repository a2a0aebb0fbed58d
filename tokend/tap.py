"""``twistd registry-token``: command-line options and the service tree.

Everything is validated in ``postOptions`` (the key, the certificate, the policy files, the
socket path) so a bad configuration stops start-up with one sentence instead of a traceback.
``makeService`` only constructs; threads start in ``startService``, after twistd has forked.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from tokend.credential_cache import CredentialCache
from tokend.devcert import ensure_dev_cert
from tokend.holder import PolicyHolder
from tokend.http import ConnectionLimits, limit_connections
from tokend.keys import KID_FORMS, KeyConfigError, SigningKey, load_signing_key
from tokend.passwords import PasswordChecker
from tokend.policy import PolicyError
from tokend.policy_files import LoadedPolicy, load_policy
from tokend.reload import PolicyReloader, keep_out_of_gc
from tokend.throttle import LoginThrottle, TrustedProxies, parse_networks
from tokend.tokens import TokenIssuer
from tokend.watcher import PolicyWatchService
from tokend.web import TokenAPI
from tokend.workers import BoundedWorkers, WorkerPool

DEFAULT_LISTEN = "unix:run/tokend.sock:mode=660:lockfile=1"
LISTEN_BACKLOG = 1024
"""Twisted's default of 50 makes connect() fail with EAGAIN when nginx opens more at once."""
MIN_TTL, MAX_TTL = 60, 3600
REPEATABLE = ("service", "trusted-proxy")
"""Options given once per value on the command line, comma-separated in the environment."""


def _env_name(option: str) -> str:
    return "TOKEND_" + option.upper().replace("-", "_")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _with_env_names(options: list[list[Any]]) -> list[list[Any]]:
    """Append each option's environment variable to its --help text."""
    return [[*option[:-1], f"{option[-1]} [env {_env_name(option[0])}]"] for option in options]


class Options(usage.Options):
    """Every option can also come from ``TOKEND_<NAME>``; the command line wins."""

    synopsis = "[options]"
    longdesc = (
        "Issue registry bearer tokens (docker distribution token auth) from users.json and "
        "repositories.json, reloaded live on change or SIGHUP."
    )
    optParameters = _with_env_names(
        [
            [
                "listen",
                "l",
                DEFAULT_LISTEN,
                "Endpoint to serve on: unix:PATH or tcp:PORT:interface=IP",
            ],
            ["socket-group", None, None, "Group to own the UNIX socket (e.g. the nginx worker's)"],
            ["config-dir", "c", "config", "Directory of the policy files (users.json…)"],
            ["key", "k", "certs/RootCA.key", "PEM private key that signs tokens (mode 0600)"],
            ["cert", None, "certs/RootCA.crt", "PEM certificate chain of the key (tokens get x5c)"],
            ["issuer", "i", "tokend", "iss claim; must equal the registry's auth.token.issuer"],
            ["service", "s", "registry", "Accepted service (audience); repeat for several"],
            ["token-ttl", None, "300", f"Token lifetime in seconds ({MIN_TTL}-{MAX_TTL})"],
            ["kid", None, "libtrust", "Key id form: libtrust (registry 2.x) or thumbprint (3.x)"],
            ["realm-path", None, "/v2/token", "URL path of the token endpoint"],
            ["bcrypt-threads", None, str(min(os.cpu_count() or 1, 4)), "bcrypt worker threads"],
            ["bcrypt-queue", None, "64", "Logins that may wait for a bcrypt thread; more get 503"],
            [
                "max-failures-per-account",
                None,
                "10",
                "Failed logins per account in --failure-window before 429 (0: no limit)",
            ],
            [
                "max-failures-per-address",
                None,
                "30",
                "Failed logins per client address in --failure-window before 429 (0: no limit)",
            ],
            ["failure-window", None, "300", "Seconds over which failed logins are counted"],
            [
                "trusted-proxy",
                None,
                None,
                "TCP peer (IP or CIDR) whose X-Real-IP/X-Forwarded-For name the client; "
                "repeat for several (the UNIX socket peer is always trusted)",
            ],
            [
                "credential-cache-ttl",
                None,
                "60",
                "Seconds a password bcrypt accepted is remembered (0: no cache)",
            ],
            ["credential-cache-size", None, "10000", "Remembered passwords at most"],
            [
                "request-timeout",
                None,
                "10",
                "Seconds from a connection's opening or a request's first byte until the whole "
                "request has arrived; bytes trickling in do not extend it",
            ],
            ["idle-timeout", None, "30", "Seconds a kept-alive connection may wait for a request"],
        ]
    )
    optFlags = _with_env_names(
        [
            ["poll", None, "Poll the config directory instead of inotify (network filesystems)"],
            ["dev-cert", None, "Create a development key and certificate if the key is missing"],
            ["allow-loose-key-permissions", None, "Start even if the key is group/other readable"],
        ]
    )

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self._lists_from_cli: set[str] = set()
        self._cert_explicit = False
        for name, *_ in self.optParameters:
            value = self.environ.get(_env_name(name))
            if name in REPEATABLE:
                self[name] = [v for v in (value or "").replace(",", " ").split() if v]
            elif value is not None:
                self[name] = value
                self._cert_explicit |= name == "cert"
        for name, *_ in self.optFlags:
            value = self.environ.get(_env_name(name))
            if value is not None:
                self[name] = int(_truthy(value))

    def _append(self, name: str, value: str) -> None:
        """A repeatable option: the first use on the command line replaces the environment's."""
        if name not in self._lists_from_cli:
            self[name] = []
            self._lists_from_cli.add(name)
        self[name].append(value)

    def opt_service(self, value: str) -> None:
        """Accepted service (audience); repeat for several [env TOKEND_SERVICE, comma-separated]"""
        self._append("service", value)

    opt_s = opt_service

    def opt_trusted_proxy(self, value: str) -> None:
        """Proxy IP/CIDR trusted for X-Real-IP [env TOKEND_TRUSTED_PROXY, comma-separated]"""
        self._append("trusted-proxy", value)

    def opt_cert(self, value: str) -> None:
        """PEM certificate chain of the key (tokens get x5c) [env TOKEND_CERT]"""
        self["cert"] = value
        self._cert_explicit = True

    def postOptions(self) -> None:
        if not self["service"]:
            self["service"] = ["registry"]
        self["token-ttl"] = self._integer("token-ttl", MIN_TTL, MAX_TTL)
        self["bcrypt-threads"] = self._integer("bcrypt-threads", 1, 64)
        self["bcrypt-queue"] = self._integer("bcrypt-queue", 0, 100_000)
        self["max-failures-per-account"] = self._integer("max-failures-per-account", 0, 1000)
        self["max-failures-per-address"] = self._integer("max-failures-per-address", 0, 1000)
        self["failure-window"] = self._integer("failure-window", 1, 86_400)
        self["credential-cache-ttl"] = self._integer("credential-cache-ttl", 0, 3600)
        self["credential-cache-size"] = self._integer("credential-cache-size", 1, 1_000_000)
        self["request-timeout"] = self._integer("request-timeout", 1, 600)
        self["idle-timeout"] = self._integer("idle-timeout", 1, 3600)
        try:
            self["trusted-proxy"] = parse_networks(self["trusted-proxy"])
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy {e}") from None
        if self["kid"] not in KID_FORMS:
            raise usage.UsageError(f"--kid must be one of {', '.join(KID_FORMS)}")
        realm_path = self["realm-path"]
        if not realm_path.startswith("/") or realm_path == "/healthz":
            raise usage.UsageError("--realm-path must be an absolute URL path other than /healthz")
        self["listen"] = self._checked_listen(self["listen"])
        self.signing_key: SigningKey = self._load_key()
        self.loaded_policy: LoadedPolicy = self._load_policy()

    def _integer(self, name: str, low: int, high: int) -> int:
        try:
            value = int(self[name])
        except (TypeError, ValueError):
            raise usage.UsageError(f"--{name} must be a whole number") from None
        if not low <= value <= high:
            raise usage.UsageError(f"--{name} must be between {low} and {high}")
        return value

    def _checked_listen(self, description: str) -> str:
        try:
            serverFromString(global_reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {description!r} is not an endpoint: {e}") from None
        if ":backlog=" not in description:
            description += f":backlog={LISTEN_BACKLOG}"
        if not description.startswith("unix:"):
            if self["socket-group"]:
                raise usage.UsageError("--socket-group only applies to a unix: --listen")
            return description
        if ":mode=" not in description:
            description += ":mode=660"
        if ":lockfile=" not in description:
            description += ":lockfile=1"
        socket_dir = Path(self.socket_path(description)).parent
        try:
            socket_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(
                f"cannot create socket directory {socket_dir}: {e.strerror}"
            ) from None
        if not os.access(socket_dir, os.W_OK | os.X_OK):
            raise usage.UsageError(f"cannot create the socket in {socket_dir}: not writable")
        if self["socket-group"]:
            try:
                self["socket-gid"] = grp.getgrnam(self["socket-group"]).gr_gid
            except KeyError:
                raise usage.UsageError(f"no such group {self['socket-group']!r}") from None
        return description

    @staticmethod
    def socket_path(description: str) -> str:
        """The path of a ``unix:`` endpoint string (``\\:`` escapes a colon)."""
        path = description[len("unix:") :]
        parts: list[str] = []
        escaped = False
        for char in path:
            if escaped:
                parts.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == ":":
                break
            else:
                parts.append(char)
        name = "".join(parts)
        return name[len("path=") :] if name.startswith("path=") else name

    def _load_key(self) -> SigningKey:
        key_path, cert_path = Path(self["key"]), Path(self["cert"])
        self.created_dev_cert = False
        if self["dev-cert"]:
            try:
                self.created_dev_cert = ensure_dev_cert(key_path, cert_path)
            except OSError as e:
                raise usage.UsageError(
                    f"cannot create a development key at {key_path}: {e}"
                ) from None
        if not cert_path.exists() and not self._cert_explicit:
            self.cert_used: Path | None = None
        else:
            self.cert_used = cert_path
        try:
            return load_signing_key(
                key_path,
                self.cert_used,
                self["kid"],
                allow_loose_permissions=bool(self["allow-loose-key-permissions"]),
            )
        except KeyConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _load_policy(self) -> LoadedPolicy:
        try:
            return load_policy(Path(self["config-dir"]))
        except PolicyError as e:
            raise usage.UsageError(f"invalid policy: {e}") from None


class _Site(Site):
    """A Site without Twisted's access-log line: every request already logs one structured
    event (issued or refused, with account, client and scopes), and the second line cost a
    sixth of a request's CPU time."""

    def log(self, request: Any) -> None:
        pass


class _SocketGroup(Service):
    """Hands the listening UNIX socket to a group (e.g. www-data) once it exists."""

    def __init__(self, path: str, gid: int) -> None:
        self._path = path
        self._gid = gid

    def startService(self) -> None:
        super().startService()
        os.chown(self._path, -1, self._gid)


class _Announcer(Service):
    """Logs where the daemon listens once everything before it has started."""

    log = Logger()

    def __init__(self, options: Options) -> None:
        self._options = options

    def startService(self) -> None:
        super().startService()
        key = self._options.signing_key
        self.log.info(
            "tokend listening on {listen}; issuer {issuer}, services {services}, "
            "{alg} key kid {kid}, x5c {x5c}",
            listen=self._options["listen"],
            issuer=self._options["issuer"],
            services=self._options["service"],
            alg=key.alg,
            kid=key.kid,
            x5c=self._options.cert_used is not None,
        )
        if self._options.created_dev_cert:
            self.log.warn(
                "created a development key {key} and certificate {cert}: give the registry "
                "{cert} as auth.token.rootcertbundle; use your own key pair in production",
                key=self._options["key"],
                cert=self._options["cert"],
            )
        for warning in self._options.loaded_policy.warnings:
            self.log.warn("policy warning: {warning}", warning=warning)
        if self._options.cert_used is None:
            self.log.warn(
                "no certificate at {cert}: tokens carry only a kid", cert=self._options["cert"]
            )


def makeService(options: Options, reactor: Any = global_reactor) -> MultiService:
    root = MultiService()
    bcrypt_pool = WorkerPool(reactor, options["bcrypt-threads"], "tokend-bcrypt")
    bcrypt_pool.setServiceParent(root)
    reload_pool = WorkerPool(reactor, 1, "tokend-reload")
    reload_pool.setServiceParent(root)
    holder = PolicyHolder(options.loaded_policy.policy, reactor.seconds())
    bcrypt_queue = BoundedWorkers(
        bcrypt_pool, limit=options["bcrypt-threads"], queue=options["bcrypt-queue"]
    )
    api = TokenAPI(
        policy=holder,
        passwords=PasswordChecker(bcrypt_queue),
        tokens=TokenIssuer(options.signing_key, options["issuer"], options["token-ttl"]),
        services=options["service"],
        clock=reactor,
        realm_path=options["realm-path"],
        throttle=LoginThrottle(
            per_account=options["max-failures-per-account"],
            per_address=options["max-failures-per-address"],
            window=options["failure-window"],
        ),
        credential_cache=CredentialCache(
            ttl=options["credential-cache-ttl"], max_entries=options["credential-cache-size"]
        ),
        trusted_proxies=TrustedProxies(networks=options["trusted-proxy"]),
    )
    site = _Site(api.resource(), reactor=reactor)
    limit_connections(
        site,
        ConnectionLimits(
            request_timeout=options["request-timeout"],
            idle_timeout=options["idle-timeout"],
            realm_path=options["realm-path"].encode("utf-8"),
        ),
    )
    site.displayTracebacks = False
    listener = strports.service(options["listen"], cast(Any, site), reactor=reactor)
    listener.setServiceParent(root)
    if options.get("socket-gid") is not None:
        socket_path = Options.socket_path(options["listen"])
        _SocketGroup(socket_path, options["socket-gid"]).setServiceParent(root)
    config_dir = Path(options["config-dir"])
    reloader = PolicyReloader(config_dir, holder, reactor, reload_pool)
    PolicyWatchService(
        config_dir, reloader.reload, reactor, poll=bool(options["poll"])
    ).setServiceParent(root)
    _Announcer(options).setServiceParent(root)
    keep_out_of_gc()
    return root
