"""``tokend doctor --registry-config PATH``: would the registry accept a token tokend issues now?

It reads the registry's ``config.yml`` (``auth.token``) with the daemon's own options and checks
issuer, service, realm, that ``rootcertbundle`` or ``jwks`` trusts the current key under the
distribution 2.x and 3.x rules, the certificates' validity and expiry and
``signingalgorithms``: one line per finding, naming what to change. Exit status 0 only when a
token issued now would be accepted by every registry version checked.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tokend.cli.common import CommandError
from tokend.cli.daemon_options import add_option
from tokend.cli.times import DAY, relative
from tokend.settings.options import DAEMON
from tokend.signing.key_dir import load_key_dir
from tokend.signing.key_set import KeySet, SetKey, kid_only, single_key_set
from tokend.signing.keys import KeyConfigError
from tokend.signing.registry_trust import (
    V2,
    V3,
    Trusted,
    TrustError,
    Verdict,
    read_bundle,
    read_jwks,
    subject,
    verdict,
)
from tokend.signing.tokens import rfc3339

WARNING_DAYS = 14
ALGORITHMS_3X = (
    *("EdDSA", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"),
    *("ES256", "ES384", "ES512", "PS256", "PS384", "PS512"),
)
"""registry/auth/token/token.go ``signingAlgorithms``: the names 3.x starts with."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: ``error`` (the registry refuses or does not start), ``warning``
    or ``ok``, about one or both registry versions."""

    level: str
    versions: tuple[str, ...]
    text: str

    def line(self) -> str:
        return f"{self.level} ({' and '.join(self.versions)}): {self.text}"


def _token_section(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as e:
        raise CommandError(f"cannot read the registry config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or "cannot be parsed"
        raise CommandError(f"the registry config {path} is not YAML: {problem}{where}") from None
    auth = config.get("auth") if isinstance(config, dict) else None
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, dict):
        raise CommandError(
            f"{path} has no auth.token section: that registry does not ask for tokens; add "
            "auth.token with realm, service, issuer and rootcertbundle"
        )
    return token


def _versions(token: dict[str, Any], chosen: str | None) -> tuple[tuple[str, ...], str]:
    if chosen is not None:
        return ((V2,) if chosen == "2" else (V3,)), f"--registry-version {chosen}"
    for option in ("jwks", "signingalgorithms"):
        if option in token:
            return (V3,), f"auth.token.{option} is a 3.x option"
    return (V2, V3), "nothing in it tells 2.x from 3.x; --registry-version 2 or 3 checks one"


def _key_set(args: argparse.Namespace, now: float) -> KeySet:
    try:
        if args.keys_dir:
            keys = load_key_dir(Path(args.keys_dir), args.kid, now)
        else:
            cert = Path(args.cert) if args.cert else None
            given = "cert" in args.daemon.given
            used = cert if cert is not None and (given or cert.exists()) else None
            keys = single_key_set(Path(args.key), used, args.kid, now)
    except KeyConfigError as e:
        raise CommandError(str(e)) from None
    return kid_only(keys) if args.no_x5c else keys


def _string(token: dict[str, Any], name: str, versions: tuple[str, ...]) -> Iterator[Finding]:
    if not isinstance(token.get(name), str):
        yield Finding(
            "error",
            versions,
            f"auth.token.{name} is missing or not a string: the registry does not start",
        )


def _claims(
    token: dict[str, Any], args: argparse.Namespace, versions: tuple[str, ...]
) -> Iterator[Finding]:
    """iss, aud and the realm: what the registry compares with what tokend sends."""
    for name in ("realm", "issuer", "service"):
        yield from _string(token, name, versions)
    issuer, service, realm = token.get("issuer"), token.get("service"), token.get("realm")
    if isinstance(issuer, str) and issuer != args.issuer:
        yield Finding(
            "error",
            versions,
            f"auth.token.issuer is {issuer!r} but tokend signs iss "
            f"{args.issuer!r} (--issuer): make them equal",
        )
    services = list(args.service) or ["registry"]
    if isinstance(service, str) and service not in services:
        yield Finding(
            "error",
            versions,
            f"auth.token.service is {service!r} but tokend accepts "
            f"--service {', '.join(services)}: docker asks for a token for {service!r} and "
            f"tokend refuses it; set auth.token.service to one of them or add --service {service}",
        )
    if isinstance(realm, str):
        parts = urlsplit(realm)
        if not parts.scheme or not parts.netloc:
            yield Finding(
                "error",
                versions,
                f"auth.token.realm {realm!r} is not an absolute URL: "
                f"clients are sent there; use https://HOST{args.realm_path}",
            )
        elif parts.path != args.realm_path:
            yield Finding(
                "error",
                versions,
                f"auth.token.realm path is {parts.path or '/'!r} but tokend "
                f"answers at --realm-path {args.realm_path}: set auth.token.realm to "
                f"{parts.scheme}://{parts.netloc}{args.realm_path}",
            )


def _algorithms(token: dict[str, Any], alg: str, versions: tuple[str, ...]) -> Iterator[Finding]:
    if "signingalgorithms" not in token:
        return
    if V2 in versions:
        yield Finding("warning", (V2,), "2.x ignores auth.token.signingalgorithms")
    if V3 not in versions:
        return
    names = token["signingalgorithms"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        yield Finding(
            "error",
            (V3,),
            "auth.token.signingalgorithms must be a list of algorithm names: "
            "the registry does not start",
        )
        return
    unknown = [name for name in names if name not in ALGORITHMS_3X]
    if unknown:
        yield Finding(
            "error",
            (V3,),
            f"auth.token.signingalgorithms names {', '.join(unknown)}, which "
            f"3.x does not know: the registry does not start; use {', '.join(ALGORITHMS_3X)}",
        )
    elif names and alg not in names:
        yield Finding(
            "error",
            (V3,),
            f"auth.token.signingalgorithms lacks {alg}, the algorithm of "
            f"tokend's current key: add {alg}",
        )


def _path(value: Any, root: str | None) -> Path:
    path = Path(value)
    return Path(root) / path.relative_to("/") if root and path.is_absolute() else path


def _trusted(
    token: dict[str, Any], root: str | None, versions: tuple[str, ...]
) -> tuple[Trusted, list[Finding]]:
    """The bundle and jwks as the registry reads them; findings for what stops it starting."""
    findings: list[Finding] = []
    roots: tuple[Any, ...] = ()
    jwks: tuple[tuple[str, Any], ...] = ()
    bundle, jwks_file = token.get("rootcertbundle"), token.get("jwks")
    if isinstance(bundle, str) and bundle:
        try:
            roots = read_bundle(_path(bundle, root))
        except TrustError as e:
            findings.append(
                Finding(
                    "error",
                    versions,
                    f"auth.token.rootcertbundle: {e}: the registry does not start",
                )
            )
    if V2 in versions:
        if not roots and not findings:
            findings.append(
                Finding(
                    "error",
                    (V2,),
                    "auth.token.rootcertbundle names no certificate: 2.x "
                    "does not start; give it the certificates tokend keys bundle prints",
                )
            )
        for certificate in roots:
            if isinstance(certificate.public_key(), ed25519.Ed25519PublicKey):
                findings.append(
                    Finding(
                        "error",
                        (V2,),
                        "auth.token.rootcertbundle holds the Ed25519 certificate "
                        f"{subject(certificate)}: 2.x cannot read Ed25519 keys and does not "
                        "start; remove it or run distribution 3.x",
                    )
                )
        if jwks_file is not None:
            findings.append(Finding("warning", (V2,), "2.x ignores auth.token.jwks"))
    if V3 in versions and isinstance(jwks_file, str) and jwks_file:
        try:
            jwks = read_jwks(_path(jwks_file, root))
        except TrustError as e:
            findings.append(
                Finding("error", (V3,), f"auth.token.jwks: {e}: the registry does not start")
            )
    if V3 in versions and not roots and not jwks and not findings:
        findings.append(
            Finding(
                "error",
                (V3,),
                "auth.token has neither rootcertbundle certificates nor jwks "
                "keys: 3.x does not start",
            )
        )
    return Trusted(roots, jwks), findings


def _fix(key: SetKey, kid_form: str, version: str, config_key: str) -> str:
    """What to change when this version does not trust the key."""
    if key.signing.chain:
        return (
            f"add the certificate of the current key ({key.cert_file}) to {config_key}, or "
            "the CA that issued it (tokend keys bundle prints them)"
        )
    if version == V2 and kid_form != "libtrust":
        return "2.x looks kids up by libtrust id: use --kid libtrust, or --cert so tokens carry x5c"
    if version == V3 and kid_form == "libtrust":
        return "3.x does not know libtrust ids: use --kid thumbprint, or --cert so tokens carry x5c"
    return f"add the current key's certificate to {config_key}"


def _trust(
    keys: KeySet, kid_form: str, trusted: Trusted, versions: tuple[str, ...], now: float
) -> Iterator[Finding]:
    """Whether each version trusts the current key, the expiries it rests on, the next key."""
    moment = datetime.fromtimestamp(now, UTC)
    key = keys.current
    if V2 in versions and isinstance(key.public_key, ed25519.Ed25519PublicKey):
        yield Finding(
            "error",
            (V2,),
            "the current key is Ed25519 (EdDSA), which 2.x cannot "
            "verify: use an EC or RSA key (tokend keys new --type P-256)",
        )
    verdicts = {version: verdict(key.signing, trusted, version, moment) for version in versions}
    config_key = (
        "auth.token.jwks" if trusted.jwks and not trusted.roots else "auth.token.rootcertbundle"
    )

    def line(version: str, found: Verdict) -> str:
        fix = "" if found.accepted else f"; {_fix(key, kid_form, version, config_key)}"
        return f"tokend's current key {key.name}: {found.how}{fix}"

    yield from _grouped(verdicts, line)
    three = verdicts.get(V3)
    if three and three.accepted and three.anchors and not key.signing.chain:
        if isinstance(key.public_key, ec.EllipticCurvePublicKey):
            yield Finding(
                "warning",
                (V3,),
                "distribution 3.0.0 does not know this kid: it took every EC thumbprint from "
                "the curve's generator (fixed in 3.1.0); on 3.0.0 give tokend the certificate "
                "(--cert) so tokens carry x5c",
            )
    yield from _expiries(key, verdicts, versions, now)
    upcoming = keys.next
    if upcoming is not None:
        ahead = {
            version: verdict(upcoming.signing, trusted, version, moment) for version in versions
        }
        for version, found in ahead.items():
            if not found.accepted:
                yield Finding(
                    "warning",
                    (version,),
                    f"the next key {upcoming.name} is not trusted yet "
                    f"({found.how}): publish it (tokend keys bundle) and restart the registry "
                    "before tokend keys activate",
                )


def _grouped(
    verdicts: dict[str, Verdict], text: Callable[[str, Verdict], str]
) -> Iterator[Finding]:
    """One line for both versions when they agree, else one line each."""
    lines: dict[tuple[bool, str], list[str]] = {}
    for version, found in verdicts.items():
        lines.setdefault((found.accepted, text(version, found)), []).append(version)
    for (accepted, line), versions in lines.items():
        yield Finding("ok" if accepted else "error", tuple(versions), line)


def _expiries(
    key: SetKey, verdicts: dict[str, Verdict], versions: Sequence[str], now: float
) -> Iterator[Finding]:
    for position, certificate in enumerate(key.signing.chain):
        not_after = certificate.not_valid_after_utc.timestamp()
        where = f"certificate {position + 1} of {key.cert_file}"
        if now <= not_after < now + WARNING_DAYS * DAY:
            yield Finding(
                "warning",
                tuple(versions),
                f"{where} ({subject(certificate)}) expires "
                f"{relative(not_after, now)} ({rfc3339(not_after)}): renew it; then "
                "the registry refuses every token",
            )
    anchors = {anchor for found in verdicts.values() for anchor in found.anchors}
    for anchor in sorted(anchors, key=lambda cert: cert.not_valid_after_utc):
        not_after = anchor.not_valid_after_utc.timestamp()
        if anchor not in key.signing.chain and now <= not_after < now + WARNING_DAYS * DAY:
            yield Finding(
                "warning",
                tuple(versions),
                f"auth.token.rootcertbundle: "
                f"{subject(anchor)} expires {relative(not_after, now)} "
                f"({rfc3339(not_after)}): renew it and its bundle entry",
            )


def doctor(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    now = time.time()
    config_path = Path(args.registry_config)
    token = _token_section(config_path)
    versions, why = _versions(token, args.registry_version)
    stdout.write(f"checking {config_path} for distribution {' and '.join(versions)} ({why})\n")
    keys = _key_set(args, now)
    trusted, findings = _trusted(token, args.registry_root, versions)
    startable = tuple(
        v for v in versions if not any(f.level == "error" and v in f.versions for f in findings)
    )
    findings += [*_claims(token, args, versions), *_algorithms(token, keys.signing.alg, versions)]
    if startable:
        findings += _trust(keys, args.kid, trusted, startable, now)
    for finding in findings:
        stdout.write(finding.line() + "\n")
    refusing = [
        v for v in versions if any(f.level == "error" and v in f.versions for f in findings)
    ]
    if refusing:
        raise CommandError(
            f"a token tokend issues now would be refused by distribution {' and '.join(refusing)}"
        )
    stdout.write(
        f"a token tokend issues now would be accepted by distribution {' and '.join(versions)}\n"
    )


def register(commands: Any) -> None:
    check = commands.add_parser(
        "doctor", help="check a registry's config.yml against tokend: would it accept our tokens?"
    )
    check.add_argument(
        "--registry-config",
        required=True,
        metavar="PATH",
        help="the registry's config.yml (its auth.token section is checked)",
    )
    check.add_argument(
        "--registry-version",
        choices=("2", "3"),
        default=None,
        help="check for distribution 2.x or 3.x only (default: what the config shows, else both)",
    )
    check.add_argument(
        "--registry-root",
        metavar="DIR",
        default=None,
        help="read the config's absolute paths under DIR (the registry's files "
        "seen from here, e.g. a mounted volume)",
    )
    for name in ("key", "cert", "keys-dir", "kid", "no-x5c", "issuer", "service", "realm-path"):
        option = DAEMON[name]
        default = "" if option.default is None else f" (default {option.default})"
        add_option(check, option, f"the daemon's --{name}{default}")
    check.set_defaults(run=doctor)
