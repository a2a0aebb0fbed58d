"""A development key and self-signed certificate, as the seed's openssl commands made them.

For trying tokend out and for tests; production keys come from the operator's own PKI.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

DEFAULT_CN = "tokend development token signer"
DEFAULT_DAYS = 3650


class LinkRefusedError(Exception):
    """A path to write is a symbolic link: writing would change whatever it points at."""


def _refuse_link(path: Path) -> None:
    """Writing through a link writes wherever it points (as root, anywhere; a dangling one
    creates its target): nobody asking for a key at ``path`` means that."""
    if not path.is_symlink():
        return
    target = os.readlink(path)
    if path.exists():
        raise LinkRefusedError(
            f"{path} is a symbolic link to {target}; refusing to write through it"
        )
    raise LinkRefusedError(
        f"{path} is a symbolic link to {target}, which does not exist; "
        "refusing to create a file through it"
    )


def _create(path: Path, data: bytes, mode: int) -> None:
    """A new file, never an existing one nor a link's target (O_EXCL, O_NOFOLLOW), with
    ``mode`` from the start whatever the umask: the key is never readable by others, not even
    briefly."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode & 0o600)
    except FileExistsError:
        _refuse_link(path)  # raced with a link planted since the check: say so
        raise FileExistsError(f"{path} already exists") from None
    try:
        _fill(fd, data, mode)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _fill(fd: int, data: bytes, mode: int) -> None:
    """Give a new file its mode (whatever the umask), its bytes, and the disk; closes ``fd``."""
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``: an existing link is
    replaced itself, its target never touched, and a reader sees the old file or the new."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _fill(fd, data, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _new_pair(
    cn: str,
    days: int,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None = None,
    now: float | None = None,
) -> tuple[bytes, bytes]:
    """A key (PKCS#8 PEM; a new P-256 one unless given) and a self-signed CA certificate for it
    (PEM), valid from five minutes before ``now``."""
    key = ec.generate_private_key(ec.SECP256R1()) if key is None else key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    start = moment - timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_dev_cert(
    key_path: Path,
    cert_path: Path,
    cn: str = DEFAULT_CN,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> None:
    """Write a P-256 key (0600) and a self-signed CA certificate for it (0644).

    Without ``overwrite`` both files are created, never over anything (a link included); with
    it, each is replaced by rename, a link by a file.
    """
    if not overwrite:
        for path in (key_path, cert_path):
            _refuse_link(path)
            if path.exists():
                raise FileExistsError(f"{path} already exists")
    key_pem, cert_pem = _new_pair(cn, days)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _replace(key_path, key_pem, 0o600)
        _replace(cert_path, cert_pem, 0o644)
        return
    _create(key_path, key_pem, 0o600)
    try:
        _create(cert_path, cert_pem, 0o644)
    except BaseException:
        key_path.unlink()  # a pair or nothing: a lone key would stop the next try
        raise


def ensure_dev_cert(key_path: Path, cert_path: Path) -> bool:
    """Create a development pair when no key exists; True if one was made.

    The key is created, never written over; a certificate already there belongs to no key and
    is replaced by rename; a link at either path is refused, never followed or replaced.
    """
    if key_path.exists():
        return False
    _refuse_link(key_path)
    _refuse_link(cert_path)
    key_pem, cert_pem = _new_pair(DEFAULT_CN, DEFAULT_DAYS)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _create(key_path, key_pem, 0o600)
    try:
        _replace(cert_path, cert_pem, 0o644)
    except BaseException:
        key_path.unlink()
        raise
    return True
