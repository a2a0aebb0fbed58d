"""The key set: the key that signs now, and every key tokend still trusts for what it verifies.

One immutable value per load, swapped whole: a token is signed with one set's current key, and a
refresh token is checked against one set's keys. ``--key``/``--cert`` make a set of one key;
``--keys-dir`` adds the next key (published, not signing yet) and the previous ones (no longer
signing, still trusted until retired).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokend.signing.keys import SigningKey, load_signing_key

CURRENT, NEXT, PREVIOUS = "current", "next", "previous"
KEY_STATES = (NEXT, CURRENT, PREVIOUS)


@dataclass(frozen=True, slots=True)
class SetKey:
    """One key of the set, where it was read from, and what it is for now."""

    name: str
    """Its name in the keys directory (the files' stem); for --key, the key file's path."""
    state: str
    signing: SigningKey
    key_file: Path
    cert_file: Path | None

    @property
    def public_key(self) -> Any:
        return self.signing.jose_key.public_key

    def expiries(self) -> tuple[tuple[str, float], ...]:
        """Each certificate of its chain (leaf first): subject and ``notAfter`` (epoch)."""
        return tuple(
            (cert.subject.rfc4514_string(), cert.not_valid_after_utc.timestamp())
            for cert in self.signing.chain
        )


@dataclass(frozen=True, slots=True)
class KeySet:
    """The current key (which signs) and the others tokend trusts: next, then previous ones."""

    current: SetKey
    others: tuple[SetKey, ...] = ()
    source: str = ""
    """Where the set was read, for log lines: ``--key PATH`` or ``--keys-dir DIR``."""
    shared_secret: bytes | None = None
    """A secret that outlives rotations (the keys directory's), for the keys derived for shared
    login limits; None: derive them from the current key as before."""

    @property
    def signing(self) -> SigningKey:
        return self.current.signing

    @property
    def keys(self) -> tuple[SetKey, ...]:
        """Every trusted key, the current one first."""
        return (self.current, *self.others)

    @property
    def next(self) -> SetKey | None:
        return next((key for key in self.others if key.state == NEXT), None)

    @property
    def previous(self) -> tuple[SetKey, ...]:
        return tuple(key for key in self.others if key.state == PREVIOUS)

    def sign(self, claims: dict[str, object]) -> str:
        """Signed by the current key: a token is always one set's, never a mix."""
        return self.current.signing.sign(claims)


def kid_only(keys: KeySet) -> KeySet:
    """``keys`` with no certificate chain sent (--no-x5c): a registry that knows the keys by
    ``kid`` from a JWKS and has no bundle refuses every token with ``x5c`` (3.x checks x5c first
    and does not fall back). The chain was checked when it loaded; it is no longer sent, nor
    counted down (the registry never sees it)."""

    def without_chain(key: SetKey) -> SetKey:
        header = {name: value for name, value in key.signing.header.items() if name != "x5c"}
        signing = SigningKey(
            alg=key.signing.alg, kid=key.signing.kid, header=header, jose_key=key.signing.jose_key
        )
        return replace(key, signing=signing)

    return replace(
        keys, current=without_chain(keys.current), others=tuple(map(without_chain, keys.others))
    )


def single_key_set(
    key_path: Path,
    cert_path: Path | None,
    kid_form: str = "libtrust",
    now: float | None = None,
    allow_loose_permissions: bool = True,
) -> KeySet:
    """The set of one key that --key/--cert name; KeyConfigError as :func:`load_signing_key`."""
    signing = load_signing_key(
        key_path, cert_path, kid_form, now=now, allow_loose_permissions=allow_loose_permissions
    )
    current = SetKey(str(key_path), CURRENT, signing, key_path, cert_path)
    return KeySet(current, source=f"--key {key_path}")
