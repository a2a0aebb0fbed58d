"""The daemon's settings as one frozen value, grouped per concern: what
:func:`tokend.tap.makeService` and everything below it are built from. Made once by
:class:`tokend.tap.Options` after every check passed (key, policy and directory loaded)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend.option_table import env_name, socket_path

if TYPE_CHECKING:
    from tokend.client_address import IPNetwork
    from tokend.login.ldap.config import DirectoryConfig
    from tokend.login.shared_limits.redis_address import RedisAddress
    from tokend.policy.files import LoadedPolicy, Loader
    from tokend.programs.runner import Program
    from tokend.signing.key_set import KeySet
    from tokend.store.database import Location


@dataclass(frozen=True, slots=True)
class Group:
    """A group by name and id (--socket-group, looked up once at start-up)."""

    name: str
    gid: int


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where tokens are served, and the HTTP edge's limits."""

    endpoint: str
    """A strports description, with backlog (and for UNIX, mode and lock file) filled in."""
    socket_group: Group | None
    """The group to give the UNIX socket (--socket-group)."""
    control_socket: str | None
    realm_path: str
    trusted_proxies: tuple[IPNetwork, ...]
    client_address_header: str
    request_timeout: int
    idle_timeout: int

    @property
    def socket_path(self) -> str:
        """The path of the UNIX socket (only for a ``unix:`` endpoint)."""
        return socket_path(self.endpoint)


@dataclass(frozen=True, slots=True)
class SigningSettings:
    """The keys as loaded at start-up, how a reload reads them again, and what tokens say."""

    keys: KeySet
    key_file: str
    cert_file: str
    cert_used: Path | None
    """The certificate sent as x5c; None when the default one is missing (kid only)."""
    created_dev_cert: bool
    issuer: str
    services: tuple[str, ...]
    token_ttl: int
    refresh_token_ttl: int
    keys_dir: Path | None = None
    """--keys-dir: the keys and their states; None: the one key of --key/--cert."""
    kid_form: str = "libtrust"
    allow_loose_permissions: bool = True
    send_x5c: bool = True
    """False with --no-x5c: tokens name their key by kid only."""

    def loader(self) -> Callable[[float], KeySet]:
        """How a reload reads the keys at a moment: as at start-up, from the same files."""
        from tokend.signing.key_set import kid_only, single_key_set

        keys_dir, kid_form, allow_loose = self.keys_dir, self.kid_form, self.allow_loose_permissions
        key_file, cert_used, send_x5c = Path(self.key_file), self.cert_used, self.send_x5c

        def load(now: float) -> KeySet:
            if keys_dir is not None:
                from tokend.signing.key_dir import load_key_dir

                keys = load_key_dir(keys_dir, kid_form, now, allow_loose)
            else:
                keys = single_key_set(key_file, cert_used, kid_form, now, allow_loose)
            return keys if send_x5c else kid_only(keys)

        return load


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy files, as loaded at start-up, and how a reload reads them again."""

    config_dir: Path
    loaded: LoadedPolicy
    poll: bool
    development: bool
    """--dev-cert: the example accounts are accepted, on reload too."""

    def loader(self) -> Loader:
        """How a reload reads the files: as at start-up, example accounts refused unless this
        is a development daemon (--dev-cert)."""
        from tokend.policy.examples import refusing_examples
        from tokend.policy.reload import load_settled

        return load_settled if self.development else refusing_examples(load_settled)


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """The bcrypt pool, the failure throttle and the credential cache."""

    bcrypt_threads: int
    bcrypt_queue: int
    bcrypt_per_address: int
    max_failures_per_account: int
    max_failures_per_address: int
    failure_window: int
    credential_cache_ttl: int
    credential_cache_size: int


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """The directory (--ldap-*), or None with the warning for options given without a URL."""

    config: DirectoryConfig | None
    ignored: str | None


@dataclass(frozen=True, slots=True)
class LogSettings:
    """--log-format, and twistd's own options (--logfile, --syslog, the pid file and status
    pipe it fills in after makeService): a live view of twistd's mapping, None without it."""

    format: str
    twistd: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """--workers, and the arguments each worker parses again."""

    count: int
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProgramSettings:
    """The external authentication and authorization programs (none: not configured)."""

    authentication: Program | None
    authorization: Program | None
    authorization_decides: bool
    """--authz-program-decides: its exit 0 grants beyond the policy (logged-in accounts)."""
    at_once: int


@dataclass(frozen=True, slots=True)
class AccessTokenSettings:
    """The access tokens' database (--database) and their longest lifetime."""

    location: Location
    max_ttl: int


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon was told, checked: the one value its services are built from."""

    listen: ListenSettings
    signing: SigningSettings
    policy: PolicySettings
    limits: LoginLimits
    directory: DirectorySettings
    redis: RedisAddress | None
    metrics: str | None
    """The --metrics endpoint (a UNIX one with the token socket's mode and lock file)."""
    logs: LogSettings
    workers: WorkerSettings
    from_environment: frozenset[str]
    """The options whose value a TOKEND_* variable gave, for :meth:`source`."""
    programs: ProgramSettings
    access_tokens: AccessTokenSettings

    def source(self, name: str) -> str:
        """Where an option's value came from, as an error message should name it."""
        return env_name(name) if name in self.from_environment else f"--{name}"
