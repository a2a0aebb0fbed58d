"""``tokend unlock``: end a lockout now instead of waiting for the failure window.

The tool talks to the running daemon through its control socket (:mod:`tokend.daemon.control`): by
default the token socket's path plus ``.control`` (``--listen`` or ``TOKEND_LISTEN`` name the
token socket, ``--control`` or ``TOKEND_CONTROL_SOCKET`` the control socket itself). The daemon
clears the failures in every worker and, with ``--redis``, in Redis and in every other daemon.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
from typing import Any, TextIO

from tokend.cli.common import CommandError, UsageError
from tokend.option_table import socket_path
from tokend.settings.options import DAEMON, DEFAULT_LISTEN

ANSWER_TIMEOUT = 15.0
"""Seconds the daemon has to answer (it waits for every worker and Redis, each bounded)."""
MAX_ANSWER = 65536


def control_path(args: argparse.Namespace, environ: Any = os.environ) -> str:
    """Where the daemon's control socket is, from the options or the daemon's own
    environment variables."""
    control = args.control or (None if args.listen else environ.get(DAEMON["control-socket"].env))
    if control:
        if control.strip().lower() == "off":
            raise UsageError("the daemon has no control socket (TOKEND_CONTROL_SOCKET=off)")
        return str(control)
    listen: str = args.listen or environ.get(DAEMON["listen"].env) or DEFAULT_LISTEN
    if not listen.startswith("unix:"):
        raise UsageError(
            f"--listen {listen} is not a UNIX socket: name the daemon's --control-socket "
            "with --control PATH"
        )
    from tokend.daemon.control import CONTROL_SUFFIX

    return socket_path(listen) + CONTROL_SUFFIX


def ask_daemon(path: str, request: dict[str, str]) -> dict[str, Any]:
    """One request over the control socket, its answer; CommandError with a sentence when
    the daemon cannot be reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(ANSWER_TIMEOUT)
            connection.connect(path)
            connection.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n") and len(answer) < MAX_ANSWER:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except FileNotFoundError:
        raise CommandError(
            f"no control socket at {path}: is the daemon running? (name its socket with "
            "--listen, or the control socket with --control)"
        ) from None
    except PermissionError:
        raise CommandError(
            f"cannot connect to {path}: permission denied (run as the daemon's user, or root)"
        ) from None
    except ConnectionRefusedError:
        raise CommandError(f"nothing answers on {path}: the daemon is not running") from None
    except TimeoutError:
        raise CommandError(f"the daemon did not answer on {path} in time") from None
    except OSError as e:
        raise CommandError(f"cannot talk to the daemon on {path}: {e.strerror or e}") from None
    try:
        parsed = json.loads(answer)
    except ValueError:
        raise CommandError(f"the daemon sent no answer on {path}") from None
    if not isinstance(parsed, dict):
        raise CommandError(f"the daemon sent no answer on {path}")
    if "error" in parsed:
        raise CommandError(str(parsed["error"]))
    return parsed


def described(answer: dict[str, Any]) -> str:
    """What the daemon cleared, in one line."""
    processes = int(answer.get("processes", 0))
    line = (
        f"unlocked {answer.get('unlocked')} {answer.get('name')}: "
        f"{int(answer.get('cleared', 0))} failures cleared ({processes} "
        f"process{'es' if processes != 1 else ''})"
    )
    redis = answer.get("redis")
    if isinstance(redis, dict):
        told = int(redis.get("told", 0))
        line += (
            f"; Redis: {int(redis.get('cleared', 0))} failures cleared, {told} other "
            f"daemon{'s' if told != 1 else ''} told"
        )
    elif answer.get("redis_configured"):
        line += "; Redis is unavailable: other daemons keep their count until the window ends"
    return line


def unlock(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    if (args.account is None) == (args.address is None):
        raise UsageError("name an ACCOUNT or --address ADDRESS (one of them)")
    if args.address is not None:
        try:
            address = ipaddress.ip_address(args.address)
        except ValueError:
            raise UsageError(f"--address {args.address!r} is not an IP address") from None
        request = {"unlock": "address", "name": str(address)}
    else:
        request = {"unlock": "account", "name": args.account}
    answer = ask_daemon(control_path(args), request)
    stdout.write(described(answer) + "\n")


def register(commands: Any) -> None:
    unlocking = commands.add_parser(
        "unlock",
        help="end a login lockout now (every worker; every daemon sharing --redis)",
        description=(
            "End the lockout of an account or a client address now. An IPv6 address unlocks "
            "its /64 (the throttle counts a /64 as one client)."
        ),
    )
    unlocking.add_argument("account", nargs="?", help="the account to unlock")
    unlocking.add_argument("--address", help="the client address to unlock instead")
    unlocking.add_argument(
        "--listen", help="the daemon's --listen (default: TOKEND_LISTEN, else unix:run/tokend.sock)"
    )
    unlocking.add_argument(
        "--control",
        help="the daemon's control socket (default: TOKEND_CONTROL_SOCKET, else the --listen "
        "socket's path + .control)",
    )
    unlocking.set_defaults(run=unlock)
