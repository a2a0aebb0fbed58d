"""The keys directory (#24): what ``keys new|activate|retire`` leave on disk, what
``load_key_dir`` makes of it, and every refusal's sentence. Real files in tmp_path."""

from __future__ import annotations

import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import self_signed, verify_jwt

from tokend.signing import key_dir
from tokend.signing.key_dir import (
    KEY_TYPES,
    KeyDirError,
    activate,
    create_key,
    find_key,
    key_paths,
    load_key_dir,
    retire,
)
from tokend.signing.key_set import CURRENT, NEXT, PREVIOUS
from tokend.signing.keys import KeyConfigError, jwk_thumbprint, libtrust_key_id, load_signing_key

NOW = datetime(2026, 12, 3, 13, 45, 7, tzinfo=UTC).timestamp()
DAY = 86400.0
ALGORITHMS = {
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "RSA-2048": "RS256",
    "RSA-3072": "RS256",
    "RSA-4096": "RS256",
    "Ed25519": "EdDSA",
}


def state(directory: Path) -> dict[str, object]:
    return dict(json.loads((directory / "keys.json").read_text()))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rotated(directory: Path) -> tuple[str, str]:
    """A directory after one rotation: (current, previous)."""
    first = create_key(directory, now=NOW - 2 * DAY)
    second = create_key(directory, now=NOW - DAY)
    activate(directory, now=NOW)
    return second, first


def test_the_first_key_is_current_with_its_files_and_the_shared_secret(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    name = create_key(directory, now=NOW)
    assert name == "20261203-134507"
    key_path, cert_path = key_paths(directory, name)
    assert (mode(key_path), mode(cert_path)) == (0o600, 0o644)
    assert mode(directory / "shared.secret") == 0o600
    assert len((directory / "shared.secret").read_bytes()) == 32
    assert state(directory) == {"version": 1, "current": name, "next": None, "previous": []}
    assert sorted(p.name for p in directory.iterdir()) == [
        f"{name}.crt",
        f"{name}.key",
        "keys.json",
        "shared.secret",
    ]
    keys = load_key_dir(directory, now=NOW)
    assert (keys.current.name, keys.current.state, keys.others) == (name, CURRENT, ())
    assert keys.source == f"--keys-dir {directory}"
    assert keys.shared_secret == (directory / "shared.secret").read_bytes()
    assert keys.signing.kid == load_signing_key(key_path, cert_path).kid
    leaf = keys.signing.chain[0]
    assert leaf.subject.rfc4514_string() == "CN=tokend development token signer"
    assert leaf.not_valid_after_utc.timestamp() == NOW - 300 + 3650 * DAY
    header, _ = verify_jwt(keys.sign({"sub": "x"}), leaf)
    assert header["kid"] == keys.signing.kid


def test_new_then_activate_then_retire_moves_keys_through_the_states(tmp_path: Path) -> None:
    first = create_key(tmp_path, now=NOW)
    second = create_key(tmp_path, now=NOW + 1)
    assert state(tmp_path) == {"version": 1, "current": first, "next": second, "previous": []}
    keys = load_key_dir(tmp_path, now=NOW)
    assert [(k.name, k.state) for k in keys.keys] == [(first, CURRENT), (second, NEXT)]
    assert keys.next is not None and keys.next.name == second

    assert activate(tmp_path, now=NOW + 2) == (second, first)
    assert state(tmp_path) == {"version": 1, "current": second, "next": None, "previous": [first]}
    third = create_key(tmp_path, now=NOW + 3)
    activate(tmp_path, now=NOW + 4)
    keys = load_key_dir(tmp_path, now=NOW)
    assert [(k.name, k.state) for k in keys.keys] == [
        (third, CURRENT),
        (second, PREVIOUS),
        (first, PREVIOUS),
    ]
    assert [k.name for k in keys.previous] == [second, first]
    shared = keys.shared_secret

    assert retire(tmp_path, first) == first
    assert state(tmp_path) == {"version": 1, "current": third, "next": None, "previous": [second]}
    assert not any(p.name.startswith(first) for p in tmp_path.iterdir())
    assert retire(tmp_path) == second
    keys = load_key_dir(tmp_path, now=NOW)
    assert [k.name for k in keys.keys] == [third]
    assert keys.shared_secret == shared


def test_a_name_taken_in_the_same_second_gets_a_suffix(tmp_path: Path) -> None:
    first = create_key(tmp_path, now=NOW)
    second = create_key(tmp_path, now=NOW)
    activate(tmp_path, now=NOW)
    third = create_key(tmp_path, now=NOW)
    assert (first, second, third) == ("20261203-134507", "20261203-134507-2", "20261203-134507-3")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_loads_and_signs(tmp_path: Path, key_type: str) -> None:
    name = create_key(tmp_path, key_type=key_type, cn="signer of tests", days=30, now=NOW)
    keys = load_key_dir(tmp_path, now=NOW, allow_loose_permissions=False)
    assert keys.signing.alg == ALGORITHMS[key_type]
    certificate = keys.signing.chain[0]
    assert certificate.subject.rfc4514_string() == "CN=signer of tests"
    assert certificate.not_valid_after_utc.timestamp() == NOW - 300 + 30 * DAY
    verify_jwt(keys.sign({"sub": name}), certificate)


def test_an_unknown_key_type_or_lifetime_is_refused_before_any_file(tmp_path: Path) -> None:
    with pytest.raises(KeyDirError) as refused:
        create_key(tmp_path / "keys", key_type="P-192")
    assert str(refused.value) == (
        "unknown key type 'P-192'; use one of P-256, P-384, P-521, RSA-2048, RSA-3072, "
        "RSA-4096, Ed25519"
    )
    with pytest.raises(KeyDirError, match=r"^a certificate lifetime of 0 days; give at least 1$"):
        create_key(tmp_path / "keys", days=0)
    assert not (tmp_path / "keys").exists()


def test_a_second_next_key_is_refused(tmp_path: Path) -> None:
    create_key(tmp_path, now=NOW)
    waiting = create_key(tmp_path, now=NOW + 1)
    with pytest.raises(KeyDirError) as refused:
        create_key(tmp_path, now=NOW + 2)
    assert str(refused.value) == (
        f"key {waiting} is already next; activate it (tokend keys activate) or drop it "
        f"(tokend keys retire {waiting}) before creating another"
    )


def ca_signed(csr_file: Path, days: int = 90, start: float = NOW - 60) -> bytes:
    """What a CA returns for the request: a certificate for its key, issued by the CA."""
    request = x509.load_pem_x509_csr(csr_file.read_bytes())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    begin = datetime.fromtimestamp(start, UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(ca_name)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin)
        .not_valid_after(begin + timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_csr_key_waits_for_its_certificate_then_activates(tmp_path: Path) -> None:
    current = create_key(tmp_path, now=NOW)
    name = create_key(tmp_path, key_type="P-384", cn="registry signer", csr=True, now=NOW + 1)
    key_path, cert_path = key_paths(tmp_path, name)
    csr_file = tmp_path / f"{name}.csr"
    assert (mode(key_path), mode(csr_file), cert_path.exists()) == (0o600, 0o644, False)
    request = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert request.is_signature_valid
    assert request.subject.rfc4514_string() == "CN=registry signer"
    assert libtrust_key_id(request.public_key()) == load_signing_key(key_path).kid
    assert state(tmp_path)["next"] == name
    assert [k.name for k in load_key_dir(tmp_path, now=NOW).keys] == [current]

    with pytest.raises(KeyDirError) as refused:
        activate(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"key {name} is waiting for its certificate: put the CA's certificate at {cert_path}"
    )
    other = ec.generate_private_key(ec.SECP384R1())
    cert_path.write_bytes(self_signed(other).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyDirError) as refused:
        activate(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"cannot activate key {name}: certificate {cert_path} does not match the key"
    )
    with pytest.raises(KeyConfigError, match="does not match the key"):
        load_key_dir(tmp_path, now=NOW)

    cert_path.write_bytes(ca_signed(csr_file))
    assert activate(tmp_path, now=NOW) == (name, current)
    keys = load_key_dir(tmp_path, now=NOW)
    assert (keys.current.name, keys.signing.alg) == (name, "ES384")
    assert keys.signing.chain[0].issuer.rfc4514_string() == "CN=test CA"


def test_the_first_key_by_csr_is_next_until_activated(tmp_path: Path) -> None:
    name = create_key(tmp_path, csr=True, now=NOW)
    assert state(tmp_path) == {"version": 1, "current": None, "next": name, "previous": []}
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"{tmp_path / 'keys.json'} names no current key; activate {name} once "
        f"{tmp_path / (name + '.crt')} is there"
    )
    key_paths(tmp_path, name)[1].write_bytes(ca_signed(tmp_path / f"{name}.csr"))
    assert activate(tmp_path, now=NOW) == (name, None)
    assert state(tmp_path) == {"version": 1, "current": name, "next": None, "previous": []}


def test_a_crash_before_the_state_is_written_leaves_a_loadable_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = create_key(tmp_path, now=NOW)
    before = (tmp_path / "keys.json").read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between the key files and keys.json

    monkeypatch.setattr(key_dir, "_write_state", killed)
    with pytest.raises(KeyboardInterrupt):
        create_key(tmp_path, now=NOW + 1)
    monkeypatch.undo()
    assert key_paths(tmp_path, "20261203-134508")[0].exists()  # the orphan is there
    assert (tmp_path / "keys.json").read_bytes() == before
    assert [k.name for k in load_key_dir(tmp_path, now=NOW).keys] == [current]
    assert create_key(tmp_path, now=NOW + 1) == "20261203-134508-2"
    assert [k.name for k in load_key_dir(tmp_path, now=NOW).keys] == [
        current,
        "20261203-134508-2",
    ]


def test_a_crash_after_the_first_key_files_keeps_the_shared_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(key_dir, "_write_state", killed)
    with pytest.raises(KeyboardInterrupt):
        create_key(tmp_path, now=NOW)
    monkeypatch.undo()
    secret = (tmp_path / "shared.secret").read_bytes()
    name = create_key(tmp_path, now=NOW)
    assert load_key_dir(tmp_path, now=NOW).shared_secret == secret
    assert name == "20261203-134507-2"


def test_a_previous_key_with_an_expired_certificate_still_verifies(tmp_path: Path) -> None:
    old = create_key(tmp_path, days=30, now=NOW - 100 * DAY)
    new = create_key(tmp_path, now=NOW - DAY)
    activate(tmp_path, now=NOW)
    keys = load_key_dir(tmp_path, now=NOW)
    assert [(k.name, k.state) for k in keys.keys] == [(new, CURRENT), (old, PREVIOUS)]


def test_a_next_key_whose_certificate_starts_later_is_published_not_activated(
    tmp_path: Path,
) -> None:
    create_key(tmp_path, now=NOW)
    later = create_key(tmp_path, now=NOW + 10 * DAY)
    assert [k.name for k in load_key_dir(tmp_path, now=NOW).keys][1:] == [later]
    with pytest.raises(KeyDirError, match=f"^cannot activate key {later}: certificate .* is not"):
        activate(tmp_path, now=NOW)


def test_an_expired_current_certificate_is_refused(tmp_path: Path) -> None:
    name = create_key(tmp_path, days=10, now=NOW - 20 * DAY)
    cert_path = key_paths(tmp_path, name)[1]
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW)
    assert str(refused.value).startswith(f"certificate {cert_path} expired on 2026-11-23")


def test_activate_without_a_next_key_is_refused(tmp_path: Path) -> None:
    create_key(tmp_path, now=NOW)
    with pytest.raises(KeyDirError) as refused:
        activate(tmp_path, now=NOW)
    assert str(refused.value) == (
        "no next key to activate; create one with tokend keys new, publish it to the "
        "registry (tokend keys bundle or jwks), then activate it"
    )


def test_retire_refuses_the_current_key_and_needs_a_name_among_several(tmp_path: Path) -> None:
    current, previous = rotated(tmp_path)
    with pytest.raises(KeyDirError) as refused:
        retire(tmp_path, current)
    assert str(refused.value) == (
        f"key {current} is current: it signs every token; activate the next key first "
        f"(tokend keys new, then tokend keys activate), then retire {current}"
    )
    third = create_key(tmp_path, now=NOW + 1)
    activate(tmp_path, now=NOW + 1)
    with pytest.raises(KeyDirError) as refused:
        retire(tmp_path)
    assert str(refused.value) == (
        f"2 previous keys ({current}, {previous}); name the one to retire"
    )
    retire(tmp_path, previous)
    retire(tmp_path)
    with pytest.raises(KeyDirError, match=r"^no previous key to retire$"):
        retire(tmp_path)
    assert state(tmp_path) == {"version": 1, "current": third, "next": None, "previous": []}


def test_retire_drops_an_unpublished_next_key(tmp_path: Path) -> None:
    current = create_key(tmp_path, now=NOW)
    waiting = create_key(tmp_path, csr=True, now=NOW + 1)
    assert retire(tmp_path, waiting) == waiting
    assert state(tmp_path) == {"version": 1, "current": current, "next": None, "previous": []}
    assert not (tmp_path / f"{waiting}.csr").exists()
    assert not key_paths(tmp_path, waiting)[0].exists()


@pytest.mark.parametrize("form", ["libtrust", "sent thumbprint", "rfc 7638", "prefix"])
def test_find_key_by_kid_thumbprint_or_prefix(tmp_path: Path, form: str) -> None:
    _, previous = rotated(tmp_path)
    key_path = key_paths(tmp_path, previous)[0]
    public_key = load_signing_key(key_path).jose_key.public_key
    text = {
        "libtrust": libtrust_key_id(public_key),
        "sent thumbprint": load_signing_key(key_path, kid_form="thumbprint").kid,
        "rfc 7638": jwk_thumbprint(public_key),
        "prefix": previous[:9],  # "20261201-" starts only the first key's name
    }[form]
    assert find_key(tmp_path, text) == previous
    assert retire(tmp_path, text) == previous


def test_find_key_refuses_an_ambiguous_or_unknown_text(tmp_path: Path) -> None:
    first = create_key(tmp_path, now=NOW)
    second = create_key(tmp_path, now=NOW + 1)
    with pytest.raises(KeyDirError) as refused:
        find_key(tmp_path, "2026")
    assert str(refused.value) == f"'2026' names several keys ({first}, {second}); say which"
    with pytest.raises(KeyDirError) as refused:
        find_key(tmp_path, "nothing")
    assert str(refused.value) == (
        f"no key 'nothing' in {tmp_path}: give a name, kid or thumbprint tokend keys list shows"
    )


def write_state(directory: Path, text: str) -> Path:
    path = directory / "keys.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"version": 1, "current": "a",}', "not JSON: Expecting property name enclosed in "
         "double quotes at line 1 column 31"),
        ("[]", "must be a JSON object"),
        ('{"version": 2, "current": "a"}', "version 2 unknown; this tokend reads version 1"),
        ('{"version": 1, "current": "a", "previus": []}',
         "unknown field 'previus'; known: version, current, next, previous"),
        ('{"version": 1, "current": "../etc/key"}',
         "current must be a key name (a file stem) or null, not '../etc/key'"),
        ('{"version": 1, "current": "a", "previous": "b"}',
         "previous must be a list of key names, not 'b'"),
        ('{"version": 1, "current": "a", "previous": ["a"]}', "key a is named twice"),
    ],
)  # fmt: skip
def test_a_broken_state_file_is_refused_with_its_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = write_state(tmp_path, text)
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path)
    assert str(refused.value) == f"{path}: {reason}"


def test_a_missing_directory_or_state_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(missing)
    assert str(refused.value) == (
        f"keys directory {missing} does not exist; create its first key with "
        f"tokend keys new --keys-dir {missing}"
    )
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path / 'keys.json'} does not exist; create the first key with "
        f"tokend keys new --keys-dir {tmp_path}"
    )


def test_a_named_key_without_files_or_certificate_is_refused(tmp_path: Path) -> None:
    current = create_key(tmp_path, now=NOW)
    document = state(tmp_path) | {"previous": ["gone"]}
    write_state(tmp_path, json.dumps(document))
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"key gone (previous) of {tmp_path / 'keys.json'} has no files: "
        f"{tmp_path / 'gone.key'} and {tmp_path / 'gone.crt'} do not exist"
    )
    write_state(tmp_path, json.dumps(document | {"previous": []}))
    cert_path = key_paths(tmp_path, current)[1]
    cert_path.unlink()
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"key {current} (current) has no certificate: {cert_path} does not exist; every key "
        "of a keys directory needs one (the registry trusts keys by their certificates)"
    )


def test_loose_permissions_are_refused_unless_allowed(tmp_path: Path) -> None:
    name = create_key(tmp_path, now=NOW)
    secret = tmp_path / "shared.secret"
    secret.chmod(0o640)
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW, allow_loose_permissions=False)
    assert str(refused.value) == (
        f"shared secret {secret} is readable by others (mode 0640); "
        f"run chmod 600 {secret} or pass --allow-loose-key-permissions"
    )
    secret.chmod(0o600)
    key_path = key_paths(tmp_path, name)[0]
    key_path.chmod(0o644)
    with pytest.raises(KeyConfigError, match=f"^key {key_path} is readable by others"):
        load_key_dir(tmp_path, now=NOW, allow_loose_permissions=False)
    assert load_key_dir(tmp_path, now=NOW).current.name == name


def test_a_missing_or_short_shared_secret_is_refused(tmp_path: Path) -> None:
    create_key(tmp_path, now=NOW)
    secret = tmp_path / "shared.secret"
    secret.write_bytes(b"short")
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"shared secret {secret} holds 5 bytes; it needs at least 32 random bytes"
    )
    secret.unlink()
    with pytest.raises(KeyConfigError) as refused:
        load_key_dir(tmp_path, now=NOW)
    assert str(refused.value) == (
        f"shared secret {secret} does not exist; tokend keys new creates it with the first "
        "key, or write 32 random bytes there (mode 0600)"
    )


def test_a_key_file_planted_as_a_link_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    directory = tmp_path / "keys"
    directory.mkdir()
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(NOW))
    (directory / f"{name}.key").symlink_to(victim)
    assert create_key(directory, now=NOW) == f"{name}-2"
    assert victim.read_bytes() == b"keep"
