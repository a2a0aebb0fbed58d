"""Every option of ``twistd registry-token``, declared once and grouped as the settings are
(:mod:`tokend.settings.values`); the ``--ldap-*`` ones are the directory's own
(:mod:`tokend.login.ldap.options`). The ``tokend`` tool takes the daemon's options it needs from
here, with their variables."""

from __future__ import annotations

import os

from tokend.access_tokens.lifetimes import DEFAULT_MAX_TTL, HIGHEST_MAX_TTL, MIN_LIFETIME
from tokend.login.ldap.options import DIRECTORY_OPTIONS
from tokend.login.refresh_tokens import DEFAULT_TTL as DEFAULT_REFRESH_TTL
from tokend.option_table import Option, by_name

DEFAULT_LISTEN = "unix:run/tokend.sock:mode=660:lockfile=1"
MIN_TTL, MAX_TTL = 60, 3600
MAX_REFRESH_TTL = 10 * 365 * 86_400

LISTEN = (
    Option(
        "listen", "Endpoint to serve on: unix:PATH or tcp:PORT:interface=IP", DEFAULT_LISTEN, "l"
    ),
    Option("socket-group", "Group to own the UNIX socket (e.g. the nginx worker's)"),
    Option("realm-path", "URL path of the token endpoint", "/v2/token"),
    Option(
        "trusted-proxy",
        "Proxy IP/CIDR trusted for X-Real-IP",
        repeatable=True,
        metavar="CIDR",
        env_note=", comma-separated",
    ),
    Option(
        "client-address-header",
        "Header in which trusted proxies name the client: x-real-ip (nginx) or "
        "x-forwarded-for (HAProxy, load balancers that append to it)",
        "x-real-ip",
    ),
    Option(
        "request-timeout",
        "Seconds from a connection's opening or a request's first byte until the whole "
        "request has arrived; bytes trickling in do not extend it",
        "10",
        bounds=(1, 600),
    ),
    Option(
        "idle-timeout",
        "Seconds a kept-alive connection may wait for a request",
        "30",
        bounds=(1, 3600),
    ),
    Option(
        "control-socket",
        "UNIX socket (mode 0600) through which tokend unlock reaches the daemon; "
        "default: the --listen socket's path + .control; off: none",
    ),
)
SIGNING = (
    Option("key", "PEM private key that signs tokens (mode 0600)", "certs/RootCA.key", "k"),
    Option("cert", "PEM certificate chain of the key (tokens get x5c)", "certs/RootCA.crt"),
    Option(
        "keys-dir",
        "Directory of rotating keys (tokend keys new|activate|retire); replaces --key/--cert",
        None,
        metavar="DIR",
    ),
    Option("issuer", "iss claim; must equal the registry's auth.token.issuer", "tokend", "i"),
    Option(
        "service",
        "Accepted service (audience); repeat for several",
        "registry",
        "s",
        repeatable=True,
        env_note=", comma-separated",
    ),
    Option(
        "token-ttl",
        f"Token lifetime in seconds ({MIN_TTL}-{MAX_TTL})",
        "300",
        bounds=(MIN_TTL, MAX_TTL),
    ),
    Option(
        "refresh-token-ttl",
        "Refresh (identity) token lifetime in seconds; 0 turns issuing off",
        str(DEFAULT_REFRESH_TTL),
        bounds=(0, MAX_REFRESH_TTL),
    ),
    Option("kid", "Key id form: libtrust (registry 2.x) or thumbprint (3.x)", "libtrust"),
    Option(
        "no-x5c",
        "Send only the kid, not the certificate chain (x5c): for a distribution 3.x registry "
        "that trusts a JWKS (auth.token.jwks) without a rootcertbundle",
        flag=True,
    ),
    Option("dev-cert", "Create a development key and certificate if the key is missing", flag=True),
    Option(
        "allow-loose-key-permissions",
        "Start even if the key (or --ldap-bind-password-file, --redis-password-file) is "
        "group/other readable",
        flag=True,
    ),
)
POLICY = (
    Option("config-dir", "Directory of the policy files (users.json…)", "config", "c"),
    Option(
        "poll",
        "Poll the config directory and the directories its symlinks lead to instead "
        "of inotify (network filesystems)",
        flag=True,
    ),
)
LOGIN_LIMITS = (
    Option(
        "bcrypt-threads",
        "bcrypt worker threads",
        str(min(os.cpu_count() or 1, 4)),
        bounds=(1, 64),
    ),
    Option(
        "bcrypt-queue",
        "Logins that may wait for a bcrypt thread; more get 503",
        "64",
        bounds=(0, 100_000),
    ),
    Option(
        "bcrypt-per-address",
        "Password checks one client address may have running or waiting (its /48 or "
        "IPv4 /24 twice as many, its /32 four times); more get 429 (0: no limit)",
        "4",
        bounds=(0, 100_000),
    ),
    Option(
        "max-failures-per-account",
        "Failed logins per account in --failure-window before 429 (0: no limit)",
        "10",
        bounds=(0, 1000),
        metavar="N",
    ),
    Option(
        "max-failures-per-address",
        "Failed logins per client address in --failure-window before 429 (0: no limit)",
        "30",
        bounds=(0, 1000),
    ),
    Option(
        "failure-window",
        "Seconds over which failed logins are counted",
        "300",
        bounds=(1, 86_400),
        metavar="SECONDS",
    ),
    Option(
        "credential-cache-ttl",
        "Seconds a password bcrypt accepted is remembered (0: no cache)",
        "60",
        bounds=(0, 3600),
    ),
    Option(
        "credential-cache-size",
        "Remembered passwords at most",
        "10000",
        bounds=(1, 1_000_000),
    ),
)
REDIS = (
    Option(
        "redis",
        "Redis shared by every daemon's login throttle: redis://[user@]host[:port][/db], "
        "rediss://… (TLS) or unix:///path/to/redis.sock[?db=N] (off when not given); "
        "daemons on one Redis must share the signing key",
    ),
    Option(
        "redis-password-file",
        "File holding Redis's password (mode 0600; one trailing newline ignored)",
    ),
)
DATABASE = (
    Option(
        "database",
        "Database of access tokens: a SQLite file's path, sqlite:///ABSOLUTE/PATH or "
        "postgresql://… (shared by several daemons); default: state/tokend.db beside the "
        "--config-dir (in its parent directory)",
        metavar="URL",
    ),
)
METRICS = (
    Option(
        "metrics",
        "Endpoint serving Prometheus metrics at /metrics, e.g. "
        "tcp:9102:interface=127.0.0.1 (off when not given)",
    ),
)
LOGS = (
    Option("log-format", "text, or json: one JSON object per line where --logfile says", "text"),
)
WORKERS = (
    Option(
        "workers",
        "Worker processes serving the one socket (auto: one per CPU); login limits "
        "hold in total across them",
        "1",
    ),
)
PROGRAMS = (
    Option(
        "auth-program",
        "Program deciding logins users.json does not hold (docker_auth's ext_auth): reads "
        "USER PASSWORD on stdin; exit 0 accepts, 1 refuses, 2 passes to the directory",
        metavar="PATH",
    ),
    Option(
        "auth-program-arg",
        "Argument of --auth-program; repeat for several (never a secret: visible in /proc)",
        repeatable=True,
        metavar="ARG",
        env_note=", comma-separated",
    ),
    Option(
        "auth-program-timeout",
        "Seconds --auth-program may run; past it it is killed and the login gets 503",
        "5",
        bounds=(1, 300),
        metavar="SECONDS",
    ),
    Option(
        "authz-program",
        "Program asked about each scope a token would grant (docker_auth's ext_authz): "
        "reads the request as JSON on stdin; exit 0 grants, 1 refuses",
        metavar="PATH",
    ),
    Option(
        "authz-program-arg",
        "Argument of --authz-program; repeat for several",
        repeatable=True,
        metavar="ARG",
        env_note=", comma-separated",
    ),
    Option(
        "authz-program-timeout",
        "Seconds --authz-program may run; past it it is killed and the request gets 503",
        "5",
        bounds=(1, 300),
        metavar="SECONDS",
    ),
    Option(
        "authz-program-decides",
        "--authz-program's exit 0 grants what it was asked for logged-in accounts, beyond "
        "the policy (default: it only narrows what the policy grants)",
        flag=True,
    ),
    Option(
        "programs-at-once",
        "--auth-program and --authz-program runs at once (together); four times as many "
        "may wait, more get 503",
        "8",
        bounds=(1, 256),
        metavar="N",
    ),
)
ACCESS_TOKEN_MAX_TTL = Option(
    "access-token-max-ttl",
    "Longest lifetime of an access token in seconds (tokend token create --expires)",
    str(DEFAULT_MAX_TTL),
    bounds=(MIN_LIFETIME, HIGHEST_MAX_TTL),
    metavar="SECONDS",
)
ACCESS_TOKENS = (ACCESS_TOKEN_MAX_TTL, *DATABASE)
"""The daemon's and the tool's (``tokend token``, ``tokend db``)."""

DAEMON_OPTIONS: tuple[Option, ...] = (
    *LISTEN,
    *SIGNING,
    *POLICY,
    *LOGIN_LIMITS,
    *REDIS,
    *DIRECTORY_OPTIONS,
    *METRICS,
    *LOGS,
    *WORKERS,
    *PROGRAMS,
    *ACCESS_TOKENS,
)
"""Every option of the daemon, each once."""
DAEMON = by_name(DAEMON_OPTIONS)
