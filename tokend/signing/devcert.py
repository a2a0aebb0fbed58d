"""A development key and self-signed certificate, as the seed's openssl commands made them.

For trying tokend out and for tests; production keys come from the operator's own PKI.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_CN = "tokend development token signer"
DEFAULT_DAYS = 3650


class DanglingLinkError(Exception):
    """A path to write is a symbolic link to nothing: writing would create a file elsewhere."""


def _refuse_dangling_link(path: Path) -> None:
    """Opening a dangling link with O_CREAT creates its target, wherever that points (as root,
    anywhere); nobody asking for a key at ``path`` means that."""
    if path.is_symlink() and not path.exists():
        raise DanglingLinkError(
            f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; "
            "refusing to create a file through it"
        )


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    """Create the key file 0600 from the start: it is never readable by others, not even briefly."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def write_dev_cert(
    key_path: Path,
    cert_path: Path,
    cn: str = DEFAULT_CN,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> None:
    """Write a P-256 key (0600) and a self-signed CA certificate for it (0644)."""
    for path in (key_path, cert_path):
        _refuse_dangling_link(path)
    if not overwrite:
        for path in (key_path, cert_path):
            if path.exists():
                raise FileExistsError(f"{path} already exists")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.now(UTC) - timedelta(minutes=5)
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
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        overwrite,
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_dev_cert(key_path: Path, cert_path: Path) -> bool:
    """Create a development pair when no key exists; True if one was made."""
    if key_path.exists():
        return False
    write_dev_cert(key_path, cert_path, overwrite=True)
    return True
