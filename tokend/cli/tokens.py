"""``tokend token``: a token read back in plain words, checked the way the registry checks it.

It takes a token, or the realm's whole JSON answer (``curl … | tokend token``), verifies the
signature against the certificate bundle the registry is given (the ``x5c`` chain, else the
``kid`` among the bundle's keys), checks the lifetime (and ``--issuer``, ``--service``), and
prints the header, the claims and what the access list allows. A refresh token is described as
such; no token is ever printed whole.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tokend.cli.common import CommandError
from tokend.cli.times import when
from tokend.login.refresh_tokens import REFRESH_AUDIENCE, REFRESH_TYP
from tokend.signing.keys import libtrust_key_id, registry_thumbprint
from tokend.signing.registry_trust import may_sign, signed_by

MAX_INPUT_CHARS = 1024 * 1024
"""More than any realm answer: tokens with a long x5c chain are a few kilobytes."""

_EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_ACTION_WORDS = {"pull": "pull", "push": "push", "delete": "delete", "*": "do anything with"}


class TokenError(Exception):
    """Why a token is refused: one sentence."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A compact JWS split and parsed, not yet verified."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    """The certificates the registry trusts (its ``rootcertbundle``)."""

    path: Path
    certificates: tuple[x509.Certificate, ...]


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode(token: str) -> Decoded:
    """The header and claims of a compact JWS; TokenError for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        raise TokenError(
            "not a token: expected a JWT (three base64url parts separated by dots) or the "
            "realm's JSON answer"
        )
    try:
        header, claims = (json.loads(_b64url(part)) for part in parts[:2])
        signature = _b64url(parts[2])
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("not a token: its parts are not base64url-encoded JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("not a token: its header and claims must be JSON objects")
    return Decoded(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def tokens_in(text: str) -> list[tuple[str, str]]:
    """The tokens in the input, each with the name it was found under: a bare token (with or
    without ``Bearer``), or the realm's answer holding ``access_token``/``token`` and maybe a
    ``refresh_token``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            answer = json.loads(text)
        except (ValueError, RecursionError):
            raise TokenError("the input starts like JSON but is not valid JSON") from None
        if not isinstance(answer, dict):
            raise TokenError("the realm's answer is a JSON object")
        found: list[tuple[str, str]] = []
        for name in ("access_token", "token", "refresh_token"):
            value = answer.get(name)
            if isinstance(value, str) and not (name == "token" and found):
                found.append((name, value))
        if not found:
            raise TokenError(f"the JSON answer holds no token: {_error_of(answer)}")
        return found
    if text.lower().startswith("bearer "):
        text = text[len("bearer ") :].strip()
    if not text:
        raise TokenError("no token given (an argument, or standard input)")
    return [("token", text)]


def _error_of(answer: dict[str, Any]) -> str:
    """What an error answer of the realm says, or the keys a non-answer has."""
    errors = answer.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return f"the realm answered an error: {errors[0].get('message', errors[0])}"
    if "error" in answer:
        return f"the realm answered an error: {answer.get('error_description', answer['error'])}"
    return f"expected access_token, token or refresh_token, found {', '.join(sorted(answer))}"


def load_bundle(path: Path) -> Bundle:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise CommandError(
            f"certificate {path} does not exist; give the registry's bundle with --cert"
        ) from None
    except OSError as e:
        raise CommandError(f"cannot read certificate {path}: {e.strerror}") from None
    except ValueError:
        raise CommandError(f"certificate {path} is not a PEM certificate") from None
    return Bundle(path, tuple(certificates))


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _check_dates(certificate: x509.Certificate, now: float) -> None:
    if now < certificate.not_valid_before_utc.timestamp():
        raise TokenError(f"certificate {_subject(certificate)} is not valid yet")
    if now > certificate.not_valid_after_utc.timestamp():
        raise TokenError(f"certificate {_subject(certificate)} has expired")


def _trusted_chain(chain: Sequence[x509.Certificate], bundle: Bundle, now: float) -> str:
    """Walk the ``x5c`` chain from the leaf until a certificate of the bundle, or one the bundle
    issued, checking every signature and validity period on the way (as the registry's x509
    verification does); what trusted it, or TokenError."""
    trusted = {certificate.fingerprint(hashes.SHA256()) for certificate in bundle.certificates}
    for index, certificate in enumerate(chain):
        _check_dates(certificate, now)
        if certificate.fingerprint(hashes.SHA256()) in trusted:
            return f"it is in {bundle.path}"
        for anchor in bundle.certificates:
            if signed_by(certificate, anchor):
                if not may_sign(anchor):
                    raise TokenError(
                        f"its x5c certificate {_subject(certificate)} was signed by "
                        f"{_subject(anchor)} of {bundle.path}, which is no CA (no basicConstraints "
                        "CA:TRUE): the registry's x509 verification refuses it"
                    )
                _check_dates(anchor, now)
                return f"issued by {_subject(anchor)} of {bundle.path}"
        if index + 1 == len(chain) or not signed_by(certificate, chain[index + 1]):
            break
        if not may_sign(chain[index + 1]):
            break
    raise TokenError(f"its x5c chain does not lead to a certificate of {bundle.path}")


def _x5c(header: dict[str, Any]) -> list[x509.Certificate]:
    chain = header["x5c"]
    if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
        raise TokenError("its x5c header is not a list of certificates")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain]
    except (binascii.Error, ValueError):
        raise TokenError("its x5c header holds something that is not a certificate") from None


def _key_for(decoded: Decoded, bundle: Bundle, now: float) -> tuple[Any, str]:
    """The public key the registry would verify with, and how it was found."""
    header = decoded.header
    if "x5c" in header:
        chain = _x5c(header)
        trust = _trusted_chain(chain, bundle, now)
        return chain[0].public_key(), f"the key of {_subject(chain[0])} (sent in x5c; {trust})"
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenError("its header names no key: neither x5c nor kid")
    for certificate in bundle.certificates:
        public_key = certificate.public_key()
        for form, key_id in (("libtrust", libtrust_key_id), ("thumbprint", registry_thumbprint)):
            if key_id(public_key) == kid:
                return public_key, (
                    f"the key of {_subject(certificate)} in {bundle.path} (kid, {form} form)"
                )
    raise TokenError(f"its kid {kid} is the key of no certificate in {bundle.path}")


def _fits(alg: str, public_key: Any) -> bool:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS.get(alg) == public_key.curve.name
    if isinstance(public_key, rsa.RSAPublicKey):
        return alg in _RSA_ALGORITHMS
    return isinstance(public_key, ed25519.Ed25519PublicKey) and alg in ("EdDSA", "Ed25519")


def verify(decoded: Decoded, bundle: Bundle, now: float) -> str:
    """Check the signature as the registry would; which key made it, or TokenError."""
    alg = decoded.header.get("alg")
    public_key, which = _key_for(decoded, bundle, now)
    if not isinstance(alg, str) or not _fits(alg, public_key):
        raise TokenError(f"its alg {alg!r} does not fit {which}")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jose_key: ECKey | RSAKey | OKPKey = ECKey.import_key(public_key)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jose_key = RSAKey.import_key(public_key)
    else:
        jose_key = OKPKey.import_key(public_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc's deprecation notice for EdDSA
        algorithm = JWSRegistry.algorithms[alg]
        valid = algorithm.verify(decoded.signing_input, decoded.signature, jose_key)
    if not valid:
        raise TokenError(f"its signature was not made by {which}")
    return f"{alg}, made by {which}"


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def access_lines(access: object) -> list[str]:
    """What each entry of the ``access`` claim lets the holder do, in words."""
    if access == []:
        return ["no access (the registry lets this token through /v2/ and nothing else)"]
    if not isinstance(access, list):
        return [f"unreadable access claim: {json.dumps(access)}"]
    lines = []
    for entry in access:
        if not isinstance(entry, dict) or not isinstance(entry.get("actions"), list):
            lines.append(f"unreadable access entry: {json.dumps(entry)}")
            continue
        kind, name, actions = entry.get("type"), entry.get("name"), entry["actions"]
        if (kind, name, actions) == ("registry", "catalog", ["*"]):
            lines.append("may list the catalog (registry:catalog:*)")
        elif not actions:
            lines.append(f"nothing on {kind} {name} (no actions)")
        else:
            words = [_ACTION_WORDS.get(str(a), repr(a)) for a in actions]
            lines.append(f"may {_and(words)} {kind} {name}")
    return lines


_CLAIM_NOTES = {
    "iss": "the registry's auth.token.issuer must equal it",
    "aud": "the registry's auth.token.service must be it",
    "jti": "this token's unique id",
}


def _claim_lines(claims: dict[str, Any], now: float, refresh: bool) -> list[str]:
    lines = []
    for name, value in claims.items():
        if name == "access":
            continue
        if name in ("iat", "nbf", "exp") and type(value) is int:
            shown = when(value, now)
            if name == "exp" and value > now:
                shown = shown.replace("(in ", "(expires in ")
        elif name == "sub":
            shown = f"{value}  (the account)" if value else '""  (anonymous)'
        elif name == "pwd" and refresh:
            shown = "(not shown)  a fingerprint of the password hash: a new password ends it"
        elif name == "src" and refresh:
            shown = f"{value}  (where the account lives: users.json or the directory)"
        else:
            shown = json.dumps(value) if not isinstance(value, str) else value
            if name in _CLAIM_NOTES and not (refresh and name == "aud"):
                shown += f"  ({_CLAIM_NOTES[name]})"
        lines.append(f"  {name}  {shown}")
    return lines


def _header_lines(header: dict[str, Any]) -> list[str]:
    lines = []
    for name, value in header.items():
        if name == "x5c" and isinstance(value, list):
            try:
                chain = ", ".join(_subject(c) for c in _x5c(header))
            except TokenError as e:
                chain = str(e)
            lines.append(f"  x5c  {len(value)} certificate(s): {chain}")
        else:
            lines.append(f"  {name}  {value if isinstance(value, str) else json.dumps(value)}")
    return lines


def describe(
    name: str, token: str, bundle: Bundle, args: argparse.Namespace, now: float, out: TextIO
) -> list[str]:
    """Print what the token is and says; return the reasons it would be refused."""
    decoded = decode(token)
    header, claims = decoded.header, decoded.claims
    refresh = header.get("typ") == REFRESH_TYP
    kind = "refresh token (docker's identity token)" if refresh else "access token"
    out.write(f"{name}: {kind}\nheader:\n")
    out.writelines(line + "\n" for line in _header_lines(header))
    refusals = []
    try:
        out.write(f"signature: verified, {verify(decoded, bundle, now)}\n")
    except TokenError as e:
        out.write(f"signature: NOT verified: {e}\n")
        refusals.append(f"does not verify: {e}")
    out.write("claims:\n")
    out.writelines(line + "\n" for line in _claim_lines(claims, now, refresh))
    refusals += _claim_refusals(claims, args, now, refresh)
    if refresh:
        out.write(
            f"meaning: {claims.get('sub')!r} trades it at the realm (grant_type=refresh_token) "
            f"for access tokens until it expires or is revoked; registries refuse it (aud "
            f"{REFRESH_AUDIENCE}). It is a password's equal: keep it secret\n"
        )
    else:
        out.write("access:\n")
        out.writelines(f"  {line}\n" for line in access_lines(claims.get("access")))
    return refusals


def _claim_refusals(
    claims: dict[str, Any], args: argparse.Namespace, now: float, refresh: bool
) -> list[str]:
    refusals = []
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if type(exp) is not int:
        refusals.append("has no exp (expiry) claim")
    elif now >= exp:
        refusals.append(f"expired at {when(exp, now)}")
    if type(nbf) is int and now < nbf:
        refusals.append(f"is not valid before {when(nbf, now)}")
    if args.issuer is not None and claims.get("iss") != args.issuer:
        refusals.append(f"was issued by {claims.get('iss')!r}, not --issuer {args.issuer!r}")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if args.service is not None and not refresh and args.service not in audiences:
        refusals.append(f"is for the audience {aud!r}, not --service {args.service!r}")
    return refusals


def token(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    if args.token is None and stdin.isatty():
        raise CommandError(
            "give a TOKEN, or pipe a token or the realm's answer into standard input ('-' reads "
            "it from the terminal)"
        )
    text = args.token if args.token not in (None, "-") else stdin.read(MAX_INPUT_CHARS + 1)
    if len(text) > MAX_INPUT_CHARS:
        raise CommandError(f"the input is longer than {MAX_INPUT_CHARS} characters")
    try:
        found = tokens_in(text)
        for _, value in found:
            decode(value)  # garbage is one sentence, before anything is printed
    except TokenError as e:
        raise CommandError(str(e)) from None
    bundle = load_bundle(Path(args.cert))
    now = time.time()
    refusals = []
    for index, (name, value) in enumerate(found):
        if index:
            stdout.write("\n")
        reasons = describe(name, value, bundle, args, now, stdout)
        refusals += [f"the {name} {reason}" for reason in reasons]
    if refusals:
        raise CommandError("; ".join(refusals))


def register(commands: Any) -> None:
    reading = commands.add_parser(
        "token",
        help="decode a token (or the realm's JSON answer), verify it against the certificate, "
        "and say what it allows",
    )
    reading.epilog = (
        "access tokens: tokend token create|list|show|revoke (tokend token create --help)"
    )
    reading.add_argument(
        "token", nargs="?", metavar="TOKEN", help="the token; '-' or none: read standard input"
    )
    reading.add_argument(
        "--cert",
        default="certs/RootCA.crt",
        help="the registry's auth.token.rootcertbundle (default %(default)s)",
    )
    reading.add_argument("--issuer", help="refuse a token whose iss is another")
    reading.add_argument("--service", help="refuse an access token whose aud is another")
    reading.set_defaults(run=token)
