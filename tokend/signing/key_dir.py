"""The keys directory (``--keys-dir``): every key tokend signs with or still trusts, and
keys.json saying which is next, current and previous.

The transitions (new, activate, retire) write the key files first and then replace keys.json
in one rename, so a reader (the daemon reloading, a crash mid-way) sees the old state or the new
one, never a name without its files.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tokend.durable_files import sync_directory
from tokend.secret_files import refuse_loose
from tokend.signing.devcert import DEFAULT_CN, DEFAULT_DAYS, _create, _new_pair, _replace
from tokend.signing.key_set import CURRENT, NEXT, PREVIOUS, KeySet, SetKey
from tokend.signing.keys import (
    KeyConfigError,
    PrivateKey,
    jwk_thumbprint,
    libtrust_key_id,
    load_signing_key,
    public_key_of,
)

STATE_FILE = "keys.json"
SHARED_SECRET_FILE = "shared.secret"  # noqa: S105 (a file name)
SHARED_SECRET_BYTES = 32
STATE_VERSION = 1
KEY_TYPES = ("P-256", "P-384", "P-521", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
"""A file stem, never a path: a hand-edited keys.json cannot point outside the directory."""
_STATE_FIELDS = ("version", "current", "next", "previous")


class KeyDirError(Exception):
    """A transition the directory refuses; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class KeyDirState:
    """What keys.json records: the key that signs, the one published to sign next, and the
    previous ones still trusted (newest first)."""

    current: str | None = None
    """None only before the first key has a certificate (``keys new --csr`` on an empty dir)."""
    next: str | None = None
    previous: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every key named, in the set's order: current, next, then previous."""
        head = (self.current,) if self.current else ()
        return (*head, *((self.next,) if self.next else ()), *self.previous)

    def state_of(self, name: str) -> str:
        return CURRENT if name == self.current else NEXT if name == self.next else PREVIOUS

    def to_json(self) -> bytes:
        document = {
            "version": STATE_VERSION,
            "current": self.current,
            "next": self.next,
            "previous": list(self.previous),
        }
        return (json.dumps(document, indent=2) + "\n").encode("ascii")


def key_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """The key file and the certificate file of the key ``name``."""
    return directory / f"{name}.key", directory / f"{name}.crt"


def csr_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.csr"


def _state_error(path: Path, reason: str) -> KeyConfigError:
    return KeyConfigError(f"{path}: {reason}")


def _name_field(path: Path, document: dict[str, Any], field: str) -> str | None:
    value = document.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise _state_error(path, f"{field} must be a key name (a file stem) or null, not {value!r}")
    return value


def _parse_state(path: Path, data: bytes) -> KeyDirState:
    try:
        document = json.loads(data)
    except json.JSONDecodeError as e:
        raise _state_error(path, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise _state_error(path, "not JSON: not UTF-8 text") from None
    if not isinstance(document, dict):
        raise _state_error(path, "must be a JSON object")
    unknown = sorted(set(document) - set(_STATE_FIELDS))
    if unknown:
        raise _state_error(path, f"unknown field {unknown[0]!r}; known: {', '.join(_STATE_FIELDS)}")
    if document.get("version") != STATE_VERSION:
        raise _state_error(
            path, f"version {document.get('version')!r} unknown; this tokend reads version 1"
        )
    previous = document.get("previous", [])
    if not isinstance(previous, list) or not all(
        isinstance(name, str) and _NAME.match(name) for name in previous
    ):
        raise _state_error(path, f"previous must be a list of key names, not {previous!r}")
    state = KeyDirState(
        _name_field(path, document, "current"), _name_field(path, document, "next"), tuple(previous)
    )
    seen: set[str] = set()
    for name in state.names:
        if name in seen:
            raise _state_error(path, f"key {name} is named twice")
        seen.add(name)
    return state


def read_state(directory: Path) -> KeyDirState:
    """keys.json of ``directory``; KeyConfigError naming the file and what is wrong."""
    path = directory / STATE_FILE
    if not directory.is_dir():
        raise KeyConfigError(
            f"keys directory {directory} does not exist; create its first key with "
            f"tokend keys new --keys-dir {directory}"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyConfigError(
            f"{path} does not exist; create the first key with tokend keys new --keys-dir "
            f"{directory}"
        ) from None
    except OSError as e:
        raise KeyConfigError(f"cannot read {path}: {e.strerror}") from None
    return _parse_state(path, data)


def _read_state_or_empty(directory: Path) -> KeyDirState:
    """The state, or an empty one for a directory that has none yet (the first ``keys new``)."""
    if not (directory / STATE_FILE).exists() and not (directory / STATE_FILE).is_symlink():
        return KeyDirState()
    return read_state(directory)


def _write_state(directory: Path, state: KeyDirState) -> None:
    _replace(directory / STATE_FILE, state.to_json(), 0o644)
    sync_directory(directory)


def _read_shared_secret(directory: Path, allow_loose_permissions: bool) -> bytes:
    path = directory / SHARED_SECRET_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyConfigError(
            f"shared secret {path} does not exist; tokend keys new creates it with the first "
            f"key, or write {SHARED_SECRET_BYTES} random bytes there (mode 0600)"
        ) from None
    except OSError as e:
        raise KeyConfigError(f"cannot read shared secret {path}: {e.strerror}") from None
    if not allow_loose_permissions:
        try:
            refuse_loose(path, "shared secret")
        except ValueError as e:
            raise KeyConfigError(str(e)) from None
    if len(data) < SHARED_SECRET_BYTES:
        raise KeyConfigError(
            f"shared secret {path} holds {len(data)} bytes; it needs at least "
            f"{SHARED_SECRET_BYTES} random bytes"
        )
    return data


def _validity_moment(cert_path: Path, now: float) -> float:
    """``now`` moved into the leaf's validity: a next key's certificate may start later and a
    previous key's may have expired (it signs nothing, it only verifies refresh tokens), yet
    the key must still match it. Unreadable files are left to :func:`load_signing_key`."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        return now
    start = leaf.not_valid_before_utc.timestamp()
    end = leaf.not_valid_after_utc.timestamp()
    return min(max(now, start), end)


def _load_key(
    directory: Path,
    name: str,
    state: str,
    kid_form: str,
    now: float,
    allow_loose_permissions: bool,
) -> SetKey | None:
    key_path, cert_path = key_paths(directory, name)
    if not cert_path.exists() and not cert_path.is_symlink():
        if state == NEXT and csr_path(directory, name).exists():
            return None  # waiting for the CA's certificate; not published, not trusted yet
        if not key_path.exists():
            raise KeyConfigError(
                f"key {name} ({state}) of {directory / STATE_FILE} has no files: "
                f"{key_path} and {cert_path} do not exist"
            )
        raise KeyConfigError(
            f"key {name} ({state}) has no certificate: {cert_path} does not exist; every key "
            "of a keys directory needs one (the registry trusts keys by their certificates)"
        )
    moment = now if state == CURRENT else _validity_moment(cert_path, now)
    signing = load_signing_key(
        key_path, cert_path, kid_form, now=moment, allow_loose_permissions=allow_loose_permissions
    )
    return SetKey(name, state, signing, key_path, cert_path)


def load_key_dir(
    directory: Path,
    kid_form: str = "libtrust",
    now: float | None = None,
    allow_loose_permissions: bool = True,
) -> KeySet:
    """Every key keys.json names, each checked as ``--key``/``--cert`` are; KeyConfigError with
    one sentence naming the file and the reason. A next key still waiting for its certificate
    is left out."""
    moment = time.time() if now is None else now
    state = read_state(directory)
    if state.current is None:
        remedy = "; create one with tokend keys new"
        if state.next:
            remedy = f"; activate {state.next} once {key_paths(directory, state.next)[1]} is there"
        raise KeyConfigError(f"{directory / STATE_FILE} names no current key{remedy}")
    loaded = [
        _load_key(directory, name, state.state_of(name), kid_form, moment, allow_loose_permissions)
        for name in state.names
    ]
    keys = [key for key in loaded if key is not None]
    shared = _read_shared_secret(directory, allow_loose_permissions)
    return KeySet(keys[0], tuple(keys[1:]), f"--keys-dir {directory}", shared)


def new_private_key(key_type: str) -> PrivateKey:
    """A new key of one of :data:`KEY_TYPES`."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    if key_type.startswith("RSA-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyDirError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")


def _csr_pem(key: PrivateKey, cn: str) -> bytes:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, algorithm)
    )
    return request.public_bytes(serialization.Encoding.PEM)


def _free_name(directory: Path, state: KeyDirState, now: float) -> str:
    """``YYYYMMDD-HHMMSS`` of ``now`` (UTC), with ``-2``, ``-3``... when that one is taken."""
    stem = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    for number in range(1, 1000):
        name = stem if number == 1 else f"{stem}-{number}"
        files = (*key_paths(directory, name), csr_path(directory, name))
        if name not in state.names and not any(f.exists() or f.is_symlink() for f in files):
            return name
    raise KeyDirError(f"no free key name for {stem} in {directory}")


def create_key(
    directory: Path,
    key_type: str = "P-256",
    cn: str = DEFAULT_CN,
    days: int = DEFAULT_DAYS,
    csr: bool = False,
    now: float | None = None,
) -> str:
    """A new key, recorded as next (current if the directory has none yet); its name.

    With ``csr`` a certificate signing request is written instead of a self-signed
    certificate: the key waits there until the CA's certificate is put at NAME.crt.
    """
    moment = time.time() if now is None else now
    state = _read_state_or_empty(directory)
    if state.next is not None:
        raise KeyDirError(
            f"key {state.next} is already next; activate it (tokend keys activate) or drop it "
            f"(tokend keys retire {state.next}) before creating another"
        )
    if days < 1:
        raise KeyDirError(f"a certificate lifetime of {days} days; give at least 1")
    key = new_private_key(key_type)
    if csr:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        second_pem = _csr_pem(key, cn)
    else:
        key_pem, second_pem = _new_pair(cn, days, key=key, now=moment)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (directory / SHARED_SECRET_FILE).exists():
        _create(directory / SHARED_SECRET_FILE, os.urandom(SHARED_SECRET_BYTES), 0o600)
    name = _free_name(directory, state, moment)
    key_path, cert_path = key_paths(directory, name)
    _create(key_path, key_pem, 0o600)
    try:
        _create(csr_path(directory, name) if csr else cert_path, second_pem, 0o644)
    except BaseException:
        key_path.unlink()
        raise
    sync_directory(directory)
    if state.current is None and not csr:
        _write_state(directory, KeyDirState(name, None, state.previous))
    else:
        _write_state(directory, KeyDirState(state.current, name, state.previous))
    return name


def activate(directory: Path, now: float | None = None) -> tuple[str, str | None]:
    """The next key signs from now on and the current one becomes previous; (new current,
    new previous). Refused while the next key has no valid certificate matching it."""
    moment = time.time() if now is None else now
    state = read_state(directory)
    name = state.next
    if name is None:
        raise KeyDirError(
            "no next key to activate; create one with tokend keys new, publish it to the "
            "registry (tokend keys bundle or jwks), then activate it"
        )
    key_path, cert_path = key_paths(directory, name)
    if not cert_path.exists() and csr_path(directory, name).exists():
        raise KeyDirError(
            f"key {name} is waiting for its certificate: put the CA's certificate at {cert_path}"
        )
    try:
        load_signing_key(key_path, cert_path, now=moment)
    except KeyConfigError as e:
        raise KeyDirError(f"cannot activate key {name}: {e}") from None
    previous = (state.current, *state.previous) if state.current else state.previous
    _write_state(directory, KeyDirState(name, None, previous))
    return name, state.current


def retire(directory: Path, name_or_kid: str | None = None) -> str:
    """Take a previous key (or the unpublished next one) out of the set and delete its files:
    what it signed stops verifying. Never the current key. Its name."""
    state = read_state(directory)
    if name_or_kid is None:
        if not state.previous:
            raise KeyDirError("no previous key to retire")
        if len(state.previous) > 1:
            raise KeyDirError(
                f"{len(state.previous)} previous keys ({', '.join(state.previous)}); "
                "name the one to retire"
            )
        name = state.previous[0]
    else:
        name = find_key(directory, name_or_kid)
    if name == state.current:
        raise KeyDirError(
            f"key {name} is current: it signs every token; activate the next key first "
            f"(tokend keys new, then tokend keys activate), then retire {name}"
        )
    if name == state.next:
        remaining = KeyDirState(state.current, None, state.previous)
    else:
        remaining = KeyDirState(
            state.current, state.next, tuple(n for n in state.previous if n != name)
        )
    _write_state(directory, remaining)
    for path in (*key_paths(directory, name), csr_path(directory, name)):
        path.unlink(missing_ok=True)
    return name


def key_ids_of(key_path: Path) -> tuple[str, ...]:
    """What names the key in ``key_path`` besides its name: its libtrust kid, the kid
    ``--kid thumbprint`` sends, and its RFC 7638 thumbprint (the refresh tokens' kid)."""
    public_key = public_key_of(key_path)
    sent = load_signing_key(key_path, None, "thumbprint").kid
    return tuple(dict.fromkeys((libtrust_key_id(public_key), sent, jwk_thumbprint(public_key))))


def find_key(directory: Path, text: str) -> str:
    """The name of the key ``text`` names: a name, a kid, a thumbprint, or a unique prefix of a
    name. KeyDirError when none or several match."""
    state = read_state(directory)
    if text in state.names:
        return text
    for name in state.names:
        try:
            ids = key_ids_of(key_paths(directory, name)[0])
        except KeyConfigError:
            continue
        if text in ids:
            return name
    matches = [name for name in state.names if name.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyDirError(f"{text!r} names several keys ({', '.join(matches)}); say which")
    raise KeyDirError(
        f"no key {text!r} in {directory}: give a name, kid or thumbprint tokend keys list shows"
    )
