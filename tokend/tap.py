"""``twistd registry-token``: the command line (over ``TOKEND_*``) parsed into one frozen
:class:`~tokend.settings.values.Settings`, and which service tree it asks for.

Everything is checked in ``postOptions`` (the key, the certificate, the policy files, the
socket path) so a bad configuration stops start-up with one sentence instead of a traceback.
``makeService`` only constructs; threads start in ``startService``, after twistd has forked.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from tokend.client_address import CLIENT_HEADERS, parse_networks
from tokend.daemon.control import CONTROL_SUFFIX
from tokend.daemon.serving_tree import serving_tree
from tokend.daemon.supervisor import worker_count
from tokend.daemon.supervisor_tree import supervisor_tree
from tokend.login.ldap.config import directory_config
from tokend.login.ldap.options import ignored
from tokend.login.refresh_tokens import REFRESH_AUDIENCE
from tokend.login.shared_limits.redis_address import (
    RedisAddress,
    parse_redis_url,
    read_redis_password,
)
from tokend.option_table import Layered, Option, OptionError, env_name, socket_path
from tokend.policy.examples import example_accounts, example_accounts_error
from tokend.policy.files import LoadedPolicy, load_policy
from tokend.policy.model import PolicyError
from tokend.programs.runner import Program
from tokend.settings.options import DAEMON, DAEMON_OPTIONS
from tokend.settings.values import (
    AccessTokenSettings,
    DirectorySettings,
    Group,
    ListenSettings,
    LoginLimits,
    LogSettings,
    PolicySettings,
    ProgramSettings,
    Settings,
    SigningSettings,
    WorkerSettings,
)
from tokend.signing.devcert import LinkRefusedError, ensure_dev_cert
from tokend.signing.key_dir import STATE_FILE, KeyDirError, create_key, load_key_dir
from tokend.signing.key_set import kid_only, single_key_set
from tokend.signing.keys import KID_FORMS, KeyConfigError
from tokend.store.database import DatabaseError, Location, locate

LISTEN_BACKLOG = 1024
"""Twisted's default of 50 makes connect() fail with EAGAIN when nginx opens more at once."""
DEFAULT_SOCKET_DIR = Path("run")
"""The one socket directory tokend creates itself (the default, relative to the working
directory): any other must exist, so a typo in --listen cannot create directories as root."""


class _FromCommandLine(usage.CoerceParameter):
    """A parameter parser that remembers the command line gave it (errors name the source)."""

    def dispatch(self, parameterName: str, value: str) -> None:
        super().dispatch(parameterName, value)
        cast(Options, self.options).from_command_line.add(parameterName)


def _appending(option: Option) -> Callable[[Options, str], None]:
    """The handler of a repeatable option (its docstring is its --help text)."""

    def append(self: Options, value: str) -> None:
        self._append(option.name, value)

    append.__doc__ = option.help_with_env
    return append


class Options(usage.Options):
    """Every option can also come from ``TOKEND_<NAME>``; the command line wins."""

    synopsis = "[options]"
    longdesc = (
        "Issue registry bearer tokens (docker distribution token auth) from users.json and "
        "repositories.json, reloaded live on change or SIGHUP."
    )
    optParameters = [
        [option.name, option.short, option.default, option.help_with_env]
        for option in DAEMON_OPTIONS
        if not option.flag
    ]
    optFlags = [
        [option.name, option.short, option.help_with_env]
        for option in DAEMON_OPTIONS
        if option.flag
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.from_command_line: set[str] = set()
        for name, handler in list(self._dispatch.items()):
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _FromCommandLine(self, handler.coerce)
        self._lists_from_cli: set[str] = set()
        for option in DAEMON_OPTIONS:
            value = option.from_environment(self.environ)
            if value is not None:
                self[option.name] = value

    def source(self, name: str) -> str:
        """Where an option's value came from, as an error message should name it."""
        from_cli = name in self.from_command_line or name in self._lists_from_cli
        if from_cli or self.environ.get(env_name(name)) is None:
            return f"--{name}"
        return env_name(name)

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

    opt_service = _appending(DAEMON["service"])
    opt_s = opt_service
    opt_trusted_proxy = _appending(DAEMON["trusted-proxy"])
    opt_ldap_url = _appending(DAEMON["ldap-url"])
    opt_auth_program_arg = _appending(DAEMON["auth-program-arg"])
    opt_authz_program_arg = _appending(DAEMON["authz-program-arg"])

    def opt_cert(self, value: str) -> None:
        self["cert"] = value
        self.from_command_line.add("cert")

    opt_cert.__doc__ = DAEMON["cert"].help_with_env

    def postOptions(self) -> None:
        """Every check, then the one :class:`Settings` value (``self.settings``) the daemon's
        services are built from."""
        try:
            self.settings: Settings = self._settings()
        except OptionError as e:
            raise usage.UsageError(str(e)) from None

    def _layered(self) -> Layered:
        """The values parsed, with where each came from, as the shared checks read them."""
        from_environment = {
            option.name for option in DAEMON_OPTIONS if self.source(option.name) == option.env
        }
        return Layered(dict(self), frozenset(from_environment), frozenset(self._given_names()))

    def _given_names(self) -> set[str]:
        """The options the command line or the environment set (not their defaults)."""
        given = set()
        for option in DAEMON_OPTIONS:
            if option.flag:
                if self[option.name]:
                    given.add(option.name)
            elif option.name in self.from_command_line or self.environ.get(option.env):
                given.add(option.name)
        return given

    def _settings(self) -> Settings:
        """The checks in the order their errors are reported, then the settings."""
        services = tuple(self["service"]) or ("registry",)
        token_ttl = self._integer("token-ttl")
        refresh_token_ttl = self._integer("refresh-token-ttl")
        if REFRESH_AUDIENCE in services:
            raise OptionError(f"{REFRESH_AUDIENCE} is the audience of refresh tokens")
        bcrypt_threads = self._integer("bcrypt-threads")
        bcrypt_queue = self._integer("bcrypt-queue")
        bcrypt_per_address = self._integer("bcrypt-per-address")
        header = self["client-address-header"].strip().lower()
        if header not in CLIENT_HEADERS:
            accepted = ", ".join(CLIENT_HEADERS)
            raise OptionError(f"{self.source('client-address-header')} must be one of {accepted}")
        limits = LoginLimits(
            bcrypt_threads=bcrypt_threads,
            bcrypt_queue=bcrypt_queue,
            bcrypt_per_address=bcrypt_per_address,
            max_failures_per_account=self._integer("max-failures-per-account"),
            max_failures_per_address=self._integer("max-failures-per-address"),
            failure_window=self._integer("failure-window"),
            credential_cache_ttl=self._integer("credential-cache-ttl"),
            credential_cache_size=self._integer("credential-cache-size"),
        )
        request_timeout = self._integer("request-timeout")
        idle_timeout = self._integer("idle-timeout")
        try:
            workers = worker_count(str(self["workers"]))
        except ValueError:
            raise OptionError(
                f"{self.source('workers')} must be auto or a whole number from 1 to 256"
            ) from None
        redis = self._redis_address()
        try:
            trusted_proxies = parse_networks(self["trusted-proxy"])
        except ValueError as e:
            raise OptionError(f"{self.source('trusted-proxy')} {e}") from None
        if self["kid"] not in KID_FORMS:
            raise OptionError(f"{self.source('kid')} must be one of {', '.join(KID_FORMS)}")
        realm_path = self["realm-path"]
        if not realm_path.startswith("/") or realm_path == "/healthz":
            raise OptionError(
                f"{self.source('realm-path')} must be an absolute URL path other than /healthz"
            )
        listen, socket_group = self._checked_listen(self["listen"])
        control_socket = self._checked_control(self["control-socket"], listen)
        metrics = self._checked_metrics(self["metrics"])
        log_format = self._checked_log_format()
        signing = self._signing(services, token_ttl, refresh_token_ttl)
        programs = ProgramSettings(
            authentication=self._program("auth-program"),
            authorization=self._program("authz-program"),
            authorization_decides=bool(self["authz-program-decides"]),
            at_once=self._integer("programs-at-once"),
        )
        if programs.authorization_decides and programs.authorization is None:
            raise OptionError(f"{self.source('authz-program-decides')} needs --authz-program")
        layered = self._layered()
        allow_loose = bool(self["allow-loose-key-permissions"])
        config = directory_config(layered, allow_loose) if self["ldap-url"] else None
        policy = PolicySettings(
            config_dir=Path(self["config-dir"]),
            loaded=self._load_policy(),
            poll=bool(self["poll"]),
            development=bool(self["dev-cert"]),
        )
        return Settings(
            listen=ListenSettings(
                endpoint=listen,
                socket_group=socket_group,
                control_socket=control_socket,
                realm_path=realm_path,
                trusted_proxies=trusted_proxies,
                client_address_header=header,
                request_timeout=request_timeout,
                idle_timeout=idle_timeout,
            ),
            signing=signing,
            policy=policy,
            limits=limits,
            directory=DirectorySettings(config, ignored(layered)),
            redis=redis,
            metrics=metrics,
            logs=LogSettings(log_format, self.parent),
            workers=WorkerSettings(workers, tuple(self.argv)),
            from_environment=layered.from_environment,
            programs=programs,
            access_tokens=AccessTokenSettings(
                location=self._database(policy.config_dir),
                max_ttl=self._integer("access-token-max-ttl"),
            ),
        )

    def _integer(self, name: str) -> int:
        """A whole number within the bounds its declaration gives."""
        return DAEMON[name].whole_number(self[name], self.source(name))

    def _database(self, config_dir: Path) -> Location:
        """--database, or the default beside the config directory; a file's directory must
        exist (only the default's is created, at start-up by the daemon's user)."""
        try:
            location = locate(self["database"], config_dir)
        except DatabaseError as e:
            raise OptionError(str(e).replace("--database", self.source("database"), 1)) from None
        path = location.path
        if path is not None and not location.is_default and not path.parent.is_dir():
            raise OptionError(
                f"{self.source('database')} {path}: the directory {path.parent} does not exist"
            )
        return location

    def _program(self, name: str) -> Program | None:
        """--auth-program or --authz-program with its arguments and timeout: an executable
        file, its path made absolute (the daemon's working directory may change)."""
        path, args = self[name], tuple(self[f"{name}-arg"])
        timeout = self._integer(f"{name}-timeout")
        if not path:
            if args:
                raise OptionError(f"{self.source(name + '-arg')} needs --{name}")
            return None
        absolute = os.path.abspath(path)
        if not os.path.isfile(absolute) or not os.access(absolute, os.X_OK):
            raise OptionError(f"{self.source(name)} {path}: not an executable file")
        return Program(absolute, args, timeout)

    def _redis_address(self) -> RedisAddress | None:
        """--redis, with the password --redis-password-file holds (it wins over the URL's)."""
        password_file = self["redis-password-file"]
        if not self["redis"]:
            if password_file:
                raise OptionError(f"{self.source('redis-password-file')} needs --redis")
            return None
        try:
            address = parse_redis_url(self["redis"])
        except ValueError as e:
            raise OptionError(f"{self.source('redis')} {e}") from None
        if not password_file:
            return address
        try:
            allow_loose = bool(self["allow-loose-key-permissions"])
            return address.with_password(read_redis_password(password_file, allow_loose))
        except ValueError as e:
            raise OptionError(str(e)) from None

    def _checked_control(self, path: str | None, listen: str) -> str | None:
        """The control socket's path: by default next to a UNIX token socket, none beside a
        TCP one unless given; ``off`` for none."""
        if path is None or not path.strip():
            return socket_path(listen) + CONTROL_SUFFIX if listen.startswith("unix:") else None
        if path.strip().lower() == "off":
            return None
        if not Path(path).parent.is_dir():
            raise OptionError(
                f"{self.source('control-socket')} {path}: its directory does not exist"
            )
        return path

    def _checked_listen(self, description: str) -> tuple[str, Group | None]:
        """The --listen endpoint with backlog (and for UNIX, mode and lock file) filled in,
        and the --socket-group to give its socket."""
        try:
            serverFromString(global_reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise OptionError(f"--listen {description!r} is not an endpoint: {e}") from None
        if ":backlog=" not in description:
            description += f":backlog={LISTEN_BACKLOG}"
        if not description.startswith("unix:"):
            if self["socket-group"]:
                raise OptionError("--socket-group only applies to a unix: --listen")
            return description, None
        if ":mode=" not in description:
            description += ":mode=660"
        if ":lockfile=" not in description:
            description += ":lockfile=1"
        socket_dir = Path(socket_path(description)).parent
        if socket_dir == DEFAULT_SOCKET_DIR:
            try:
                socket_dir.mkdir(exist_ok=True)
            except OSError as e:
                raise OptionError(
                    f"cannot create socket directory {socket_dir}: {e.strerror}"
                ) from None
        elif not socket_dir.is_dir():
            raise OptionError(
                f"socket directory {socket_dir} does not exist; create it (writable by the "
                "daemon's user) or choose another --listen"
            )
        if not os.access(socket_dir, os.W_OK | os.X_OK):
            raise OptionError(f"cannot create the socket in {socket_dir}: not writable")
        if not self["socket-group"]:
            return description, None
        try:
            return description, Group(
                self["socket-group"], grp.getgrnam(self["socket-group"]).gr_gid
            )
        except KeyError:
            raise OptionError(f"no such group {self['socket-group']!r}") from None

    def _checked_metrics(self, description: str | None) -> str | None:
        """The metrics endpoint; a UNIX socket gets the token socket's mode and lock file."""
        if not description:
            return None
        try:
            serverFromString(global_reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise OptionError(
                f"{self.source('metrics')} {description!r} is not an endpoint: {e}"
            ) from None
        if description.startswith("unix:"):
            if ":mode=" not in description:
                description += ":mode=660"
            if ":lockfile=" not in description:
                description += ":lockfile=1"
        return description

    def _checked_log_format(self) -> str:
        log_format = str(self["log-format"]).strip().lower()
        if log_format not in ("text", "json"):
            raise OptionError(f"{self.source('log-format')} must be text or json")
        if log_format == "json" and self.parent is not None and self.parent.get("syslog"):
            raise OptionError(
                f"{self.source('log-format')} json writes to --logfile or stdout, not syslog"
            )
        return log_format

    def _given(self, name: str) -> bool:
        """Whether the command line or the environment gave ``name`` (not its default)."""
        return name in self.from_command_line or DAEMON[name].env in self.environ

    def _signing(
        self, services: tuple[str, ...], token_ttl: int, refresh_token_ttl: int
    ) -> SigningSettings:
        """The keys of --keys-dir or of --key/--cert; with --no-x5c, named by kid only."""
        if self["keys-dir"]:
            signing = self._keys_dir_signing(services, token_ttl, refresh_token_ttl)
        else:
            signing = self._key_file_signing(services, token_ttl, refresh_token_ttl)
        if not self["no-x5c"]:
            return signing
        return dataclasses.replace(signing, keys=kid_only(signing.keys), send_x5c=False)

    def _key_file_signing(
        self, services: tuple[str, ...], token_ttl: int, refresh_token_ttl: int
    ) -> SigningSettings:
        key_path, cert_path = Path(self["key"]), Path(self["cert"])
        created_dev_cert = False
        if self["dev-cert"]:
            try:
                created_dev_cert = ensure_dev_cert(key_path, cert_path)
            except LinkRefusedError as e:
                raise OptionError(f"--dev-cert: {e}") from None
            except OSError as e:
                raise OptionError(f"cannot create a development key at {key_path}: {e}") from None
        explicit = self._given("cert")
        cert_used = cert_path if explicit or cert_path.exists() else None
        allow_loose = bool(self["allow-loose-key-permissions"])
        try:
            keys = single_key_set(key_path, cert_used, self["kid"], None, allow_loose)
        except KeyConfigError as e:
            raise OptionError(str(e)) from None
        return SigningSettings(
            keys=keys,
            key_file=self["key"],
            cert_file=self["cert"],
            cert_used=cert_used,
            created_dev_cert=created_dev_cert,
            issuer=self["issuer"],
            services=services,
            token_ttl=token_ttl,
            refresh_token_ttl=refresh_token_ttl,
            kid_form=self["kid"],
            allow_loose_permissions=allow_loose,
        )

    def _keys_dir_signing(
        self, services: tuple[str, ...], token_ttl: int, refresh_token_ttl: int
    ) -> SigningSettings:
        """--keys-dir: the set keys.json records; with --dev-cert, its first key is created
        when the directory has none."""
        directory = Path(self["keys-dir"])
        given = [f"--{name}" for name in ("key", "cert") if self._given(name)]
        if given:
            raise OptionError(
                f"{self.source('keys-dir')} replaces --key and --cert; give one or the other "
                f"(drop {' and '.join(given)} or their TOKEND_ variables)"
            )
        created_dev_cert = False
        if self["dev-cert"] and not (directory / STATE_FILE).exists():
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                create_key(directory)
            except (OSError, KeyDirError) as e:
                raise OptionError(f"--dev-cert: cannot create a key in {directory}: {e}") from None
            created_dev_cert = True
        allow_loose = bool(self["allow-loose-key-permissions"])
        try:
            keys = load_key_dir(directory, self["kid"], None, allow_loose)
        except KeyConfigError as e:
            raise OptionError(str(e)) from None
        return SigningSettings(
            keys=keys,
            key_file=str(keys.current.key_file),
            cert_file=str(keys.current.cert_file),
            cert_used=keys.current.cert_file,
            created_dev_cert=created_dev_cert,
            issuer=self["issuer"],
            services=services,
            token_ttl=token_ttl,
            refresh_token_ttl=refresh_token_ttl,
            keys_dir=directory,
            kid_form=self["kid"],
            allow_loose_permissions=allow_loose,
        )

    def _load_policy(self) -> LoadedPolicy:
        config_dir = Path(self["config-dir"])
        try:
            loaded = load_policy(config_dir)
        except PolicyError as e:
            raise OptionError(f"invalid policy: {e}") from None
        examples = example_accounts(loaded.policy)
        if examples and not self["dev-cert"]:
            raise OptionError(str(example_accounts_error(config_dir, examples)))
        return loaded


def makeService(options: Options, reactor: Any = global_reactor) -> MultiService:
    """The daemon's tree; with --workers N > 1 the parent's (the socket, the supervisor).
    Each worker builds its own with :func:`tokend.daemon.serving_tree.serving_tree`."""
    settings = options.settings
    if settings.workers.count > 1:
        return supervisor_tree(settings, reactor)
    return serving_tree(settings, reactor)
