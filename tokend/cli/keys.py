"""``tokend kid`` and ``tokend dev-cert``: the key ids a registry needs, a development key pair;
and what ``check-config`` says about the key and certificate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokend.cli.common import CommandError
from tokend.cli.times import DAY, relative, when
from tokend.signing.devcert import DEFAULT_CN, DEFAULT_DAYS, LinkRefusedError, write_dev_cert
from tokend.signing.key_dir import load_key_dir
from tokend.signing.key_set import NEXT
from tokend.signing.keys import (
    KeyConfigError,
    key_ids,
    libtrust_key_id,
    load_signing_key,
    public_key_of,
    registry_thumbprint,
)
from tokend.signing.tokens import rfc3339

EXPIRY_WARNING_DAYS = 30
_CURVES = {
    "secp256r1": ("P-256", "ES256"),
    "secp384r1": ("P-384", "ES384"),
    "secp521r1": ("P-521", "ES512"),
}


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
    if ids["rfc7638"] != ids["thumbprint"]:
        stdout.write(
            f"rfc7638    {ids['rfc7638']}   (not the registry's: distribution 3.x writes EC "
            "coordinates without leading zero bytes, so its thumbprint of this key differs "
            "from RFC 7638's; tokend sends the registry's)\n"
        )


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


def key_type(public_key: Any) -> str:
    """``P-256 (ES256)``, ``RSA 2048 bits (RS256)``, ``Ed25519 (EdDSA)``: what an operator
    compares with the registry's ``signingalgorithms`` and its support for curves."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve, alg = _CURVES.get(public_key.curve.name, (public_key.curve.name, "unsupported"))
        return f"{curve} ({alg})"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size} bits (RS256)"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519 (EdDSA)"
    return type(public_key).__name__


def _kid_line(what: str, public_key: Any) -> str:
    return (
        f"{what}: kid libtrust {libtrust_key_id(public_key)} (--kid libtrust, distribution 2.x), "
        f"thumbprint {registry_thumbprint(public_key)} (--kid thumbprint, 3.x)"
    )


def key_summary(
    key_path: Path | None, cert_path: Path | None, allow_loose_permissions: bool, now: float
) -> list[str]:
    """``check-config``'s lines about --key and --cert: the checks the daemon makes at start-up
    (a CommandError where it would refuse to start), then type, key ids, and each certificate's
    subject, issuer and expiry, with a warning within EXPIRY_WARNING_DAYS of an expiry."""
    lines = []
    if key_path is not None:
        try:
            load_signing_key(
                key_path, cert_path, allow_loose_permissions=allow_loose_permissions, now=now
            )
            public_key = public_key_of(key_path)
        except KeyConfigError as e:
            raise CommandError(str(e)) from None
        lines.append(f"key {key_path}: {key_type(public_key)}")
        lines.append(_kid_line(f"key {key_path}", public_key))
    if cert_path is None:
        return lines
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except OSError as e:
        raise CommandError(f"cannot read certificate {cert_path}: {e.strerror}") from None
    except ValueError:
        raise CommandError(f"certificate {cert_path} is not a PEM certificate") from None
    if key_path is None:
        lines.append(f"certificate {cert_path}: {key_type(chain[0].public_key())}")
        lines.append(_kid_line(f"certificate {cert_path}", chain[0].public_key()))
    warnings = []
    for index, certificate in enumerate(chain):
        where = f"certificate {cert_path}" + (f" [{index + 1}/{len(chain)}]" if chain[1:] else "")
        subject = certificate.subject.rfc4514_string()
        issuer = certificate.issuer.rfc4514_string()
        self_signed = certificate.issuer == certificate.subject
        issued_by = "self-signed" if self_signed else f"issuer {issuer}"
        not_after = certificate.not_valid_after_utc.timestamp()
        lines.append(f"{where}: subject {subject}, {issued_by}, not after {when(not_after, now)}")
        if not_after < now:
            if index == 0:
                raise CommandError(
                    f"certificate {cert_path} expired {relative(not_after, now)}, on "
                    f"{rfc3339(not_after)}; the daemon refuses it"
                )
            warnings.append(
                f"warning: {where}: {subject} expired {relative(not_after, now)}: registries "
                "that check the x5c chain refuse the tokens"
            )
        elif not_after - now < EXPIRY_WARNING_DAYS * DAY:
            warnings.append(
                f"warning: {where}: {subject} expires {relative(not_after, now)} "
                f"({rfc3339(not_after)}): renew it before then; the daemon refuses "
                "to start with an expired certificate, and registries refuse tokens it signed"
            )
    return lines + warnings


def keys_dir_summary(directory: Path, allow_loose_permissions: bool, now: float) -> list[str]:
    """``check-config``'s lines about --keys-dir: the directory loaded as the daemon loads it
    (a CommandError where it would refuse to start), the current key as :func:`key_summary`
    reports --key and --cert, then the next and previous keys' type, kids and expiry."""
    try:
        keys = load_key_dir(directory, now=now, allow_loose_permissions=allow_loose_permissions)
    except KeyConfigError as e:
        raise CommandError(str(e)) from None
    current = keys.current
    lines = [f"keys directory {directory}: key {current.name} signs; {len(keys.keys)} trusted"]
    lines += key_summary(current.key_file, current.cert_file, allow_loose_permissions, now)
    for key in keys.others:
        what = f"{key.state} key {key.name}"
        lines.append(f"{what}: {key_type(key.public_key)}")
        lines.append(_kid_line(what, key.public_key))
        for subject, not_after in key.expiries()[:1]:
            lines.append(f"{what}: certificate {subject}, not after {when(not_after, now)}")
            if key.state == NEXT and not_after - now < EXPIRY_WARNING_DAYS * DAY:
                lines.append(
                    f"warning: {what}: its certificate ends {relative(not_after, now)}; "
                    "renew it before activating the key"
                )
    return lines


def days(value: str) -> int:
    """A certificate lifetime in days, for dev-cert and keys new."""
    days = int(value)
    if days < 1:
        raise argparse.ArgumentTypeError("days must be at least 1")
    return days


def register(commands: Any) -> None:
    key_id = commands.add_parser(
        "kid",
        help="print the key ids of a key or certificate (and its RFC 7638 thumbprint where "
        "distribution 3.x computes another)",
    )
    key_id.add_argument("path", help="PEM certificate, public key or private key")
    key_id.add_argument("--json", action="store_true", help="print a JSON object")
    key_id.set_defaults(run=kid)

    dev = commands.add_parser("dev-cert", help="write a development key and certificate")
    dev.add_argument("--key", default="certs/RootCA.key", help="default %(default)s")
    dev.add_argument("--cert", default="certs/RootCA.crt", help="default %(default)s")
    dev.add_argument("--cn", default=DEFAULT_CN, help="certificate common name")
    dev.add_argument("--days", type=days, default=DEFAULT_DAYS, help="default %(default)s")
    dev.add_argument(
        "--force",
        action="store_true",
        help="replace existing files (a symbolic link is replaced itself, never its target)",
    )
    dev.set_defaults(run=dev_cert)
