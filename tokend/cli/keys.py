"""``tokend kid`` and ``tokend dev-cert``: the key ids a registry needs, a development key pair."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from tokend.cli.common import CommandError
from tokend.signing.devcert import DEFAULT_CN, DEFAULT_DAYS, LinkRefusedError, write_dev_cert
from tokend.signing.keys import KeyConfigError, key_ids


def kid(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    try:
        ids = key_ids(Path(args.path))
    except KeyConfigError as e:
        raise CommandError(str(e)) from None
    if args.json:
        stdout.write(json.dumps(ids) + "\n")
        return
    stdout.write(f"libtrust   {ids['libtrust']}   (distribution 2.x, --kid libtrust)\n")
    stdout.write(f"thumbprint {ids['thumbprint']}   (distribution 3.x, --kid thumbprint)\n")


def dev_cert(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    key_path, cert_path = Path(args.key), Path(args.cert)
    try:
        write_dev_cert(key_path, cert_path, cn=args.cn, days=args.days, overwrite=args.force)
    except FileExistsError as e:
        raise CommandError(f"{e}; pass --force to replace it") from None
    except LinkRefusedError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise CommandError(f"cannot write the key pair: {e}") from None
    stdout.write(
        f"wrote {key_path} (P-256, mode 0600) and {cert_path}; "
        f"give the registry {cert_path} as auth.token.rootcertbundle\n"
    )


def _days(value: str) -> int:
    days = int(value)
    if days < 1:
        raise argparse.ArgumentTypeError("days must be at least 1")
    return days


def register(commands: Any) -> None:
    key_id = commands.add_parser("kid", help="print both key ids of a key or certificate")
    key_id.add_argument("path", help="PEM certificate, public key or private key")
    key_id.add_argument("--json", action="store_true", help="print a JSON object")
    key_id.set_defaults(run=kid)

    dev = commands.add_parser("dev-cert", help="write a development key and certificate")
    dev.add_argument("--key", default="certs/RootCA.key", help="default %(default)s")
    dev.add_argument("--cert", default="certs/RootCA.crt", help="default %(default)s")
    dev.add_argument("--cn", default=DEFAULT_CN, help="certificate common name")
    dev.add_argument("--days", type=_days, default=DEFAULT_DAYS, help="default %(default)s")
    dev.add_argument(
        "--force",
        action="store_true",
        help="replace existing files (a symbolic link is replaced itself, never its target)",
    )
    dev.set_defaults(run=dev_cert)
