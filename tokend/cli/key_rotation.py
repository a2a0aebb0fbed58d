"""``tokend keys``: rotating the signing key in a keys directory (``--keys-dir``) without a
restart: list, new, activate, retire, and what the registry needs to trust the keys (bundle,
jwks). The daemon picks each change up live; these commands only write the directory."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tokend.cli.common import CommandError, UsageError
from tokend.cli.daemon_options import add_option
from tokend.cli.keys import key_type
from tokend.cli.times import when
from tokend.settings.options import DAEMON
from tokend.signing.devcert import DEFAULT_CN, DEFAULT_DAYS, LinkRefusedError
from tokend.signing.key_dir import (
    KEY_TYPES,
    STATE_FILE,
    KeyDirError,
    KeyDirState,
    activate,
    create_key,
    csr_path,
    key_paths,
    load_key_dir,
    read_state,
    retire,
)
from tokend.signing.key_set import KeySet
from tokend.signing.keys import KID_FORMS, KeyConfigError, load_signing_key, public_key_of

_PUBLISH = "publish it to the registry (tokend keys bundle or jwks) and restart the registry"


def _directory(args: argparse.Namespace, must_exist: bool = True) -> Path:
    """The keys directory the command acts on: --keys-dir, else TOKEND_KEYS_DIR."""
    if not args.keys_dir:
        raise UsageError("no keys directory: pass --keys-dir DIR or set TOKEND_KEYS_DIR")
    directory = Path(args.keys_dir)
    if must_exist and not directory.is_dir():
        raise UsageError(
            f"keys directory {directory} does not exist; create its first key with "
            f"tokend keys new --keys-dir {directory}"
        )
    return directory


def _kid_form(args: argparse.Namespace) -> str:
    if args.kid not in KID_FORMS:
        raise UsageError(f"unknown kid form {args.kid!r}; use {' or '.join(KID_FORMS)}")
    return str(args.kid)


def _state(directory: Path) -> KeyDirState:
    try:
        return read_state(directory)
    except KeyConfigError as e:
        raise CommandError(str(e)) from None


def _key_set(directory: Path) -> KeySet:
    """The set the daemon would load now; the command's finding when it would refuse it."""
    try:
        return load_key_dir(directory)
    except KeyConfigError as e:
        raise CommandError(f"the daemon would refuse {directory}: {e}") from None


def _waiting(directory: Path, state: KeyDirState) -> str | None:
    """The next key still waiting for its CA certificate, if any."""
    name = state.next
    if name is None or key_paths(directory, name)[1].exists():
        return None
    return name if csr_path(directory, name).exists() else None


def _list_line(directory: Path, state: KeyDirState, name: str, now: float) -> str:
    key_path, cert_path = key_paths(directory, name)
    head = f"{state.state_of(name):8} {name}"
    try:
        public_key = public_key_of(key_path)
        libtrust = load_signing_key(key_path).kid
        thumbprint = load_signing_key(key_path, kid_form="thumbprint").kid
    except KeyConfigError as e:
        return f"{head}  {e}"
    kinds = f"{head}  {key_type(public_key)}  kid {libtrust}  thumbprint {thumbprint}"
    if name == _waiting(directory, state):
        return f"{kinds}  waiting for its certificate: put the CA's certificate at {cert_path}"
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        return f"{kinds}  certificate {cert_path} missing or unreadable"
    return f"{kinds}  certificate until {when(leaf.not_valid_after_utc.timestamp(), now)}"


def _strays(directory: Path, state: KeyDirState) -> list[str]:
    """Key files keys.json does not name: left by an interrupted new or retire."""
    named = set(state.names)
    return sorted(
        path.name
        for path in directory.iterdir()
        if path.suffix in (".key", ".crt", ".csr") and path.stem not in named
    )


def list_keys(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    directory = _directory(args)
    state = _state(directory)
    now = time.time()
    for name in state.names:
        stdout.write(_list_line(directory, state, name, now) + "\n")
    for stray in _strays(directory, state):
        stdout.write(f"not in {STATE_FILE}: {stray} (left by an interrupted command; remove it)\n")
    _key_set(directory)


def new(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    directory = _directory(args, must_exist=False)
    try:
        name = create_key(directory, args.type, cn=args.cn, days=args.days, csr=args.csr)
    except (KeyConfigError, KeyDirError, LinkRefusedError) as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise CommandError(f"cannot write the key in {directory}: {e}") from None
    cert_path = key_paths(directory, name)[1]
    state = _state(directory)
    if args.csr:
        stdout.write(
            f"key {name} ({args.type}) is next; have your CA sign {csr_path(directory, name)}, "
            f"put its certificate at {cert_path}, then {_PUBLISH}, then run tokend keys activate\n"
        )
    elif state.current == name:
        stdout.write(
            f"key {name} ({args.type}) is current: it signs tokens; give the registry "
            f"tokend keys bundle (or jwks)\n"
        )
    else:
        stdout.write(f"key {name} ({args.type}) is next; {_PUBLISH}, then tokend keys activate\n")


def activate_next(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    directory = _directory(args)
    try:
        current, previous = activate(directory)
    except (KeyConfigError, KeyDirError) as e:
        raise CommandError(str(e)) from None
    stdout.write(f"key {current} signs from now on\n")
    if previous is not None:
        stdout.write(
            f"key {previous} is previous: its refresh tokens stay valid; keep it in the "
            "registry's bundle until the tokens it signed expire (--token-ttl), then "
            f"tokend keys retire {previous}\n"
        )


def retire_key(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    directory = _directory(args)
    try:
        name = retire(directory, args.key)
    except (KeyConfigError, KeyDirError) as e:
        raise CommandError(str(e)) from None
    stdout.write(
        f"retired key {name}: what it signed no longer verifies (docker clients whose refresh "
        "token it signed log in again); drop its certificate from the registry's bundle "
        "(tokend keys bundle)\n"
    )


def _name_waiting(directory: Path) -> None:
    name = _waiting(directory, _state(directory))
    if name is not None:
        sys.stderr.write(
            f"tokend keys: key {name} (next) is left out: waiting for its certificate at "
            f"{key_paths(directory, name)[1]}\n"
        )


def bundle(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    directory = _directory(args)
    keys = _key_set(directory)
    _name_waiting(directory)
    for key in keys.keys:
        pem = key.signing.chain[0].public_bytes(serialization.Encoding.PEM).decode("ascii")
        stdout.write(pem)


def jwks(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    directory = _directory(args)
    kid_form = _kid_form(args)
    try:
        keys = load_key_dir(directory, kid_form=kid_form)
    except KeyConfigError as e:
        raise CommandError(f"the daemon would refuse {directory}: {e}") from None
    _name_waiting(directory)
    document = {
        "keys": [
            key.signing.jose_key.as_dict(private=False)
            | {"kid": key.signing.kid, "alg": key.signing.alg, "use": "sig"}
            for key in keys.keys
        ]
    }
    stdout.write(json.dumps(document, indent=2) + "\n")


def _days(value: str) -> int:
    days = int(value)
    if days < 1:
        raise argparse.ArgumentTypeError("days must be at least 1")
    return days


def register(commands: Any) -> None:
    family = commands.add_parser(
        "keys",
        help="rotate the signing key in a keys directory: list, new, activate, retire, "
        "bundle, jwks",
    )
    actions = family.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list", help="one line per key: state, name, type, kids, certificate expiry"
    )
    listing.set_defaults(run=list_keys)

    creating = actions.add_parser(
        "new", help="create the next key and its self-signed certificate (or a CSR)"
    )
    creating.add_argument(
        "--type",
        choices=KEY_TYPES,
        default="P-256",
        help="key type, default %(default)s; distribution 2.x cannot verify Ed25519 (an Ed25519 "
        "certificate in its bundle stops it starting)",
    )
    creating.add_argument("--cn", default=DEFAULT_CN, help="certificate (or CSR) common name")
    creating.add_argument(
        "--days", type=_days, default=DEFAULT_DAYS, help="certificate lifetime, default %(default)s"
    )
    creating.add_argument(
        "--csr",
        action="store_true",
        help="write a certificate signing request NAME.csr for your CA instead of a "
        "self-signed certificate; put the CA's certificate at NAME.crt before activating",
    )
    creating.set_defaults(run=new)

    activating = actions.add_parser(
        "activate", help="the next key signs from now on; the current one becomes previous"
    )
    activating.set_defaults(run=activate_next)

    retiring = actions.add_parser(
        "retire",
        help="stop trusting a previous key (or drop the unpublished next one): what it signed "
        "no longer verifies",
    )
    retiring.add_argument(
        "key",
        nargs="?",
        metavar="KID",
        help="name, kid, thumbprint or name prefix; default: the only previous key",
    )
    retiring.set_defaults(run=retire_key)

    bundling = actions.add_parser(
        "bundle",
        help="the PEM certificates of the current, next and previous keys, for the "
        "registry's auth.token.rootcertbundle",
    )
    bundling.set_defaults(run=bundle)

    jwk_set = actions.add_parser(
        "jwks", help="a JWKS of the current, next and previous keys, for auth.token.jwks (3.x)"
    )
    add_option(
        jwk_set, DAEMON["kid"], "kid form the daemon sends: libtrust (default) or thumbprint"
    )
    jwk_set.set_defaults(run=jwks)

    # Before the action (tokend keys --keys-dir DIR list) or after it: the action's own
    # default must not overwrite a directory given before it.
    add_option(family, DAEMON["keys-dir"], "the keys directory (default: TOKEND_KEYS_DIR)")
    for parser in (listing, creating, activating, retiring, bundling, jwk_set):
        add_option(
            parser,
            DAEMON["keys-dir"],
            "the keys directory (default: TOKEND_KEYS_DIR)",
            unset=argparse.SUPPRESS,
        )
