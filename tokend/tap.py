"""``twistd registry-token``: command-line options, and which service tree they ask for.

Everything is validated in ``postOptions`` (the key, the certificate, the policy files, the
socket path) so a bad configuration stops start-up with one sentence instead of a traceback.
``makeService`` only constructs; threads start in ``startService``, after twistd has forked.
"""

from __future__ import annotations

import grp
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from tokend.client_address import CLIENT_HEADERS, parse_networks
from tokend.daemon.control import CONTROL_SUFFIX
from tokend.daemon.serving import serving_tree
from tokend.daemon.supervising import supervisor_tree
from tokend.daemon.supervisor import worker_count
from tokend.dn import DNError, normalise_dn
from tokend.login.ldap.config import (
    DEFAULT_FILTER,
    DEFAULT_GROUP_ATTRIBUTE,
    DEFAULT_GROUP_FILTER,
    DEFAULT_TIMEOUT,
    DirectoryConfig,
    read_bind_password,
    read_ca_certificates,
)
from tokend.login.ldap.options import NEEDS_URL, ignored_without_url
from tokend.login.refresh_tokens import DEFAULT_TTL as DEFAULT_REFRESH_TTL
from tokend.login.refresh_tokens import REFRESH_AUDIENCE
from tokend.login.shared_limits.redis_address import (
    RedisAddress,
    parse_redis_url,
    read_redis_password,
)
from tokend.policy.examples import example_accounts, example_accounts_error, refusing_examples
from tokend.policy.files import LoadedPolicy, Loader, load_policy
from tokend.policy.model import PolicyError
from tokend.policy.reload import load_settled
from tokend.signing.devcert import LinkRefusedError, ensure_dev_cert
from tokend.signing.keys import KID_FORMS, KeyConfigError, SigningKey, load_signing_key

DEFAULT_LISTEN = "unix:run/tokend.sock:mode=660:lockfile=1"
LISTEN_BACKLOG = 1024
"""Twisted's default of 50 makes connect() fail with EAGAIN when nginx opens more at once."""
MIN_TTL, MAX_TTL = 60, 3600
MAX_REFRESH_TTL = 10 * 365 * 86_400
DEFAULT_SOCKET_DIR = Path("run")
"""The one socket directory tokend creates itself (the default, relative to the working
directory): any other must exist, so a typo in --listen cannot create directories as root."""
REPEATABLE = ("service", "trusted-proxy", "ldap-url")
"""Options given once per value on the command line, comma-separated in the environment."""


def _env_name(option: str) -> str:
    return "TOKEND_" + option.upper().replace("-", "_")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


class _FromCommandLine(usage.CoerceParameter):
    """A parameter parser that remembers the command line gave it (errors name the source)."""

    def dispatch(self, parameterName: str, value: str) -> None:
        super().dispatch(parameterName, value)
        cast(Options, self.options).from_command_line.add(parameterName)


DIRECTORY_PARAMETERS = [
    [
        "ldap-url",
        None,
        None,
        "Directory for accounts not in users.json: ldap://host:port or ldaps://host:port; "
        "repeat for fail-over, tried in order",
    ],
    ["ldap-ca-cert", None, None, "PEM CA certificates trusted for LDAPS/StartTLS (else: system)"],
    ["ldap-bind-dn", None, None, "DN of the service account searching the directory"],
    [
        "ldap-bind-password-file",
        None,
        None,
        "File holding the service account's password (mode 0600; one trailing newline ignored)",
    ],
    ["ldap-base", None, None, "DN under which accounts are searched (subtree)"],
    [
        "ldap-filter",
        None,
        DEFAULT_FILTER,
        "Search filter finding an account; {account} is the name, escaped (RFC 4515)",
    ],
    [
        "ldap-active-filter",
        None,
        None,
        "Filter an account must also match to log in or refresh (e.g. not disabled); "
        "locked ppolicy, nsAccountLock and userAccountControl accounts are refused anyway",
    ],
    [
        "ldap-group-attribute",
        None,
        DEFAULT_GROUP_ATTRIBUTE,
        "Attribute of the account entry listing its group DNs",
    ],
    [
        "ldap-group-base",
        None,
        None,
        "Find groups by searching under this DN with --ldap-group-filter instead",
    ],
    [
        "ldap-group-filter",
        None,
        DEFAULT_GROUP_FILTER,
        "Filter finding an account's groups under --ldap-group-base; {dn} is the account's DN",
    ],
    ["ldap-timeout", None, str(DEFAULT_TIMEOUT), "Seconds for each directory operation"],
]
"""--ldap-url is repeatable (opt_ldap_url); without it none of the others is used."""


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
            [
                "refresh-token-ttl",
                None,
                str(DEFAULT_REFRESH_TTL),
                "Refresh (identity) token lifetime in seconds; 0 turns issuing off",
            ],
            ["kid", None, "libtrust", "Key id form: libtrust (registry 2.x) or thumbprint (3.x)"],
            ["realm-path", None, "/v2/token", "URL path of the token endpoint"],
            ["bcrypt-threads", None, str(min(os.cpu_count() or 1, 4)), "bcrypt worker threads"],
            ["bcrypt-queue", None, "64", "Logins that may wait for a bcrypt thread; more get 503"],
            [
                "bcrypt-per-address",
                None,
                "4",
                "Password checks one client address may have running or waiting (its /48 or "
                "IPv4 /24 twice as many, its /32 four times); more get 429 (0: no limit)",
            ],
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
                "TCP peer (IP or CIDR) whose --client-address-header names the client; "
                "repeat for several (the UNIX socket peer is always trusted)",
            ],
            [
                "client-address-header",
                None,
                "x-real-ip",
                "Header in which trusted proxies name the client: x-real-ip (nginx) or "
                "x-forwarded-for (HAProxy, load balancers that append to it)",
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
            [
                "workers",
                None,
                "1",
                "Worker processes serving the one socket (auto: one per CPU); login limits "
                "hold in total across them",
            ],
            [
                "redis",
                None,
                None,
                "Redis shared by every daemon's login throttle: redis://[user@]host[:port][/db], "
                "rediss://… (TLS) or unix:///path/to/redis.sock[?db=N] (off when not given); "
                "daemons on one Redis must share the signing key",
            ],
            [
                "redis-password-file",
                None,
                None,
                "File holding Redis's password (mode 0600; one trailing newline ignored)",
            ],
            [
                "control-socket",
                None,
                None,
                "UNIX socket (mode 0600) through which tokend unlock reaches the daemon; "
                "default: the --listen socket's path + .control; off: none",
            ],
            *DIRECTORY_PARAMETERS,
            [
                "metrics",
                None,
                None,
                "Endpoint serving Prometheus metrics at /metrics, e.g. "
                "tcp:9102:interface=127.0.0.1 (off when not given)",
            ],
            [
                "log-format",
                None,
                "text",
                "text, or json: one JSON object per line where --logfile says",
            ],
        ]
    )
    optFlags = _with_env_names(
        [
            [
                "poll",
                None,
                "Poll the config directory and the directories its symlinks lead to instead "
                "of inotify (network filesystems)",
            ],
            ["dev-cert", None, "Create a development key and certificate if the key is missing"],
            [
                "allow-loose-key-permissions",
                None,
                "Start even if the key (or --ldap-bind-password-file, --redis-password-file) is "
                "group/other readable",
            ],
            ["ldap-starttls", None, "Upgrade ldap:// directory connections with StartTLS"],
        ]
    )

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.from_command_line: set[str] = set()
        for name, handler in list(self._dispatch.items()):
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _FromCommandLine(self, handler.coerce)
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

    def source(self, name: str) -> str:
        """Where an option's value came from, as an error message should name it."""
        from_cli = name in self.from_command_line or name in self._lists_from_cli
        if from_cli or self.environ.get(_env_name(name)) is None:
            return f"--{name}"
        return _env_name(name)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd (a parent is set), stop with one sentence: twistd answers a UsageError
        with its whole --help text before the message."""
        self.argv: list[str] = list(sys.argv[1:] if options is None else options)
        """What --workers hands on to each worker process (which parses it again)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            raise SystemExit(f"twistd registry-token: {e}") from None

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

    def opt_ldap_url(self, value: str) -> None:
        """Directory URL (ldap:// or ldaps://); repeat for fail-over [env TOKEND_LDAP_URL]"""
        self._append("ldap-url", value)

    def opt_cert(self, value: str) -> None:
        """PEM certificate chain of the key (tokens get x5c) [env TOKEND_CERT]"""
        self["cert"] = value
        self._cert_explicit = True
        self.from_command_line.add("cert")

    def postOptions(self) -> None:
        if not self["service"]:
            self["service"] = ["registry"]
        self["token-ttl"] = self._integer("token-ttl", MIN_TTL, MAX_TTL)
        self["refresh-token-ttl"] = self._integer("refresh-token-ttl", 0, MAX_REFRESH_TTL)
        if REFRESH_AUDIENCE in self["service"]:
            raise usage.UsageError(f"{REFRESH_AUDIENCE} is the audience of refresh tokens")
        self["bcrypt-threads"] = self._integer("bcrypt-threads", 1, 64)
        self["bcrypt-queue"] = self._integer("bcrypt-queue", 0, 100_000)
        self["bcrypt-per-address"] = self._integer("bcrypt-per-address", 0, 100_000)
        header = self["client-address-header"].strip().lower()
        if header not in CLIENT_HEADERS:
            accepted = ", ".join(CLIENT_HEADERS)
            raise usage.UsageError(
                f"{self.source('client-address-header')} must be one of {accepted}"
            )
        self["client-address-header"] = header
        self["max-failures-per-account"] = self._integer("max-failures-per-account", 0, 1000)
        self["max-failures-per-address"] = self._integer("max-failures-per-address", 0, 1000)
        self["failure-window"] = self._integer("failure-window", 1, 86_400)
        self["credential-cache-ttl"] = self._integer("credential-cache-ttl", 0, 3600)
        self["credential-cache-size"] = self._integer("credential-cache-size", 1, 1_000_000)
        self["request-timeout"] = self._integer("request-timeout", 1, 600)
        self["idle-timeout"] = self._integer("idle-timeout", 1, 3600)
        try:
            self["workers"] = worker_count(str(self["workers"]))
        except ValueError:
            raise usage.UsageError(
                f"{self.source('workers')} must be auto or a whole number from 1 to 256"
            ) from None
        self["redis"] = self._redis_address()
        try:
            self["trusted-proxy"] = parse_networks(self["trusted-proxy"])
        except ValueError as e:
            raise usage.UsageError(f"{self.source('trusted-proxy')} {e}") from None
        if self["kid"] not in KID_FORMS:
            raise usage.UsageError(f"{self.source('kid')} must be one of {', '.join(KID_FORMS)}")
        realm_path = self["realm-path"]
        if not realm_path.startswith("/") or realm_path == "/healthz":
            raise usage.UsageError(
                f"{self.source('realm-path')} must be an absolute URL path other than /healthz"
            )
        self["listen"] = self._checked_listen(self["listen"])
        self["control-socket"] = self._checked_control(self["control-socket"])
        self["metrics"] = self._checked_metrics(self["metrics"])
        self._check_log_format()
        self.signing_key: SigningKey = self._load_key()
        self.directory: DirectoryConfig | None = self._directory_config()
        self.loaded_policy: LoadedPolicy = self._load_policy()

    def _redis_address(self) -> RedisAddress | None:
        """--redis, with the password --redis-password-file holds (it wins over the URL's)."""
        password_file = self["redis-password-file"]
        if not self["redis"]:
            if password_file:
                raise usage.UsageError(f"{self.source('redis-password-file')} needs --redis")
            return None
        try:
            address = parse_redis_url(self["redis"])
        except ValueError as e:
            raise usage.UsageError(f"{self.source('redis')} {e}") from None
        if not password_file:
            return address
        try:
            allow_loose = bool(self["allow-loose-key-permissions"])
            return address.with_password(read_redis_password(password_file, allow_loose))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _checked_control(self, path: str | None) -> str | None:
        """The control socket's path: by default next to a UNIX token socket, none beside a
        TCP one unless given; ``off`` for none."""
        if path is None or not path.strip():
            listen = self["listen"]
            return self.socket_path(listen) + CONTROL_SUFFIX if listen.startswith("unix:") else None
        if path.strip().lower() == "off":
            return None
        if not Path(path).parent.is_dir():
            raise usage.UsageError(
                f"{self.source('control-socket')} {path}: its directory does not exist"
            )
        return path

    def _directory_config(self) -> DirectoryConfig | None:
        """The directory to log accounts in with, when --ldap-url names one; without it the
        other --ldap-* options are ignored, with the warning the tool gives too."""
        self.directory_ignored: str | None = None
        if not self["ldap-url"]:
            self.directory_ignored = ignored_without_url(
                [self.source(name) for name in NEEDS_URL if self._given(name)]
            )
            return None
        if not self["ldap-base"]:
            raise usage.UsageError(f"{self.source('ldap-url')} needs --ldap-base (a DN)")
        bind_dn, password_file = self["ldap-bind-dn"], self["ldap-bind-password-file"]
        if bool(bind_dn) != bool(password_file):
            raise usage.UsageError(
                "--ldap-bind-dn and --ldap-bind-password-file go together (without both, "
                "searches are anonymous)"
            )
        try:
            timeout = float(self["ldap-timeout"])
        except ValueError:
            raise usage.UsageError(f"{self.source('ldap-timeout')} must be a number") from None
        if not 0 < timeout <= 300:
            raise usage.UsageError(f"{self.source('ldap-timeout')} must be between 0 and 300 s")
        ca_cert = self["ldap-ca-cert"]
        try:
            password = (
                read_bind_password(
                    password_file, allow_loose=bool(self["allow-loose-key-permissions"])
                )
                if password_file
                else None
            )
            for dn_option in ("ldap-base", "ldap-bind-dn", "ldap-group-base"):
                if self[dn_option]:
                    try:
                        normalise_dn(self[dn_option])
                    except DNError as e:
                        raise ValueError(f"{self.source(dn_option)} is not a DN: {e}") from None
            if ca_cert:
                try:
                    read_ca_certificates(ca_cert)
                except ValueError as e:
                    raise ValueError(f"{self.source('ldap-ca-cert')}: {e}") from None
            return DirectoryConfig(
                urls=tuple(self["ldap-url"]),
                base=self["ldap-base"],
                starttls=bool(self["ldap-starttls"]),
                ca_cert=ca_cert or None,
                bind_dn=bind_dn or None,
                bind_password=password,
                filter=self["ldap-filter"],
                active_filter=self["ldap-active-filter"] or None,
                group_attribute=self["ldap-group-attribute"],
                group_base=self["ldap-group-base"] or None,
                group_filter=self["ldap-group-filter"],
                timeout=timeout,
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _given(self, name: str) -> bool:
        """Whether the command line or the environment set ``name`` (not its default)."""
        if any(flag[0] == name for flag in self.optFlags):
            return bool(self[name])
        return name in self.from_command_line or bool(self.environ.get(_env_name(name)))

    def _integer(self, name: str, low: int, high: int) -> int:
        try:
            value = int(self[name])
        except (TypeError, ValueError):
            raise usage.UsageError(f"{self.source(name)} must be a whole number") from None
        if not low <= value <= high:
            raise usage.UsageError(f"{self.source(name)} must be between {low} and {high}")
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
        if socket_dir == DEFAULT_SOCKET_DIR:
            try:
                socket_dir.mkdir(exist_ok=True)
            except OSError as e:
                raise usage.UsageError(
                    f"cannot create socket directory {socket_dir}: {e.strerror}"
                ) from None
        elif not socket_dir.is_dir():
            raise usage.UsageError(
                f"socket directory {socket_dir} does not exist; create it (writable by the "
                "daemon's user) or choose another --listen"
            )
        if not os.access(socket_dir, os.W_OK | os.X_OK):
            raise usage.UsageError(f"cannot create the socket in {socket_dir}: not writable")
        if self["socket-group"]:
            try:
                self["socket-gid"] = grp.getgrnam(self["socket-group"]).gr_gid
            except KeyError:
                raise usage.UsageError(f"no such group {self['socket-group']!r}") from None
        return description

    def _checked_metrics(self, description: str | None) -> str | None:
        """The metrics endpoint; a UNIX socket gets the token socket's mode and lock file."""
        if not description:
            return None
        try:
            serverFromString(global_reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(
                f"{self.source('metrics')} {description!r} is not an endpoint: {e}"
            ) from None
        if description.startswith("unix:"):
            if ":mode=" not in description:
                description += ":mode=660"
            if ":lockfile=" not in description:
                description += ":lockfile=1"
        return description

    def _check_log_format(self) -> None:
        log_format = self["log-format"].strip().lower()
        if log_format not in ("text", "json"):
            raise usage.UsageError(f"{self.source('log-format')} must be text or json")
        if log_format == "json" and self.parent is not None and self.parent.get("syslog"):
            raise usage.UsageError(
                f"{self.source('log-format')} json writes to --logfile or stdout, not syslog"
            )
        self["log-format"] = log_format

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
            except LinkRefusedError as e:
                raise usage.UsageError(f"--dev-cert: {e}") from None
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
        config_dir = Path(self["config-dir"])
        try:
            loaded = load_policy(config_dir)
        except PolicyError as e:
            raise usage.UsageError(f"invalid policy: {e}") from None
        examples = example_accounts(loaded.policy)
        if examples and not self["dev-cert"]:
            raise usage.UsageError(str(example_accounts_error(config_dir, examples)))
        return loaded

    def policy_loader(self) -> Loader:
        """How a reload reads the files: as at start-up, example accounts refused unless this
        is a development daemon (--dev-cert)."""
        return load_settled if self["dev-cert"] else refusing_examples(load_settled)


def makeService(options: Options, reactor: Any = global_reactor) -> MultiService:
    """The daemon's tree; with --workers N > 1 the parent's (the socket, the supervisor).
    Each worker builds its own with :func:`tokend.daemon.serving.serving_tree`."""
    if options["workers"] > 1:
        return supervisor_tree(options, reactor)
    return serving_tree(options, reactor)
