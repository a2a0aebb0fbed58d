"""``tokend keys`` (#24), called as operators call it, on real key directories: what each
command prints, what the registry is given (bundle, jwks) and every refusal with its status."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import KeySet as JWKSet
from joserfc.jws import JWSRegistry
from support import write_policy

from tokend.cli import main
from tokend.signing.key_dir import activate, create_key, key_paths, load_key_dir, read_state
from tokend.signing.keys import libtrust_key_id, load_signing_key


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdin=io.StringIO(""), stdout=out)
    return code, out.getvalue()


def leaf_of(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(key_paths(directory, name)[1].read_bytes())[0]


@pytest.fixture
def keys_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty place for a keys directory, named by TOKEND_KEYS_DIR as in a container."""
    directory = tmp_path / "keys"
    monkeypatch.setenv("TOKEND_KEYS_DIR", str(directory))
    return directory


def test_every_command_needs_a_keys_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TOKEND_KEYS_DIR", raising=False)
    for action in ("list", "new", "activate", "retire", "bundle", "jwks"):
        assert run("keys", action) == (2, "")
        assert capsys.readouterr().err == (
            "tokend keys: no keys directory: pass --keys-dir DIR or set TOKEND_KEYS_DIR\n"
        )


def test_a_directory_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert run("keys", "list", "--keys-dir", str(missing)) == (2, "")
    assert capsys.readouterr().err == (
        f"tokend keys: keys directory {missing} does not exist; create its first key with "
        f"tokend keys new --keys-dir {missing}\n"
    )


def test_a_rotation_from_the_tool(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run("keys", "new")
    first = read_state(keys_dir).current
    assert first is not None
    assert (code, out) == (
        0,
        f"key {first} (P-256) is current: it signs tokens; give the registry tokend keys "
        "bundle (or jwks)\n",
    )
    code, out = run("keys", "new", "--type", "RSA-3072", "--cn", "signer 2", "--days", "400")
    second = read_state(keys_dir).next
    assert second is not None
    assert (code, out) == (
        0,
        f"key {second} (RSA-3072) is next; publish it to the registry (tokend keys bundle or "
        "jwks) and restart the registry, then tokend keys activate\n",
    )
    assert leaf_of(keys_dir, second).subject.rfc4514_string() == "CN=signer 2"

    code, out = run("keys", "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    public_key = load_signing_key(key_paths(keys_dir, second)[0]).jose_key.public_key
    assert lines[1].startswith(f"next     {second}  RSA 3072 bits (RS256)  kid ")
    assert f"kid {libtrust_key_id(public_key)}  thumbprint " in lines[1]
    assert "  certificate until " in lines[1]
    assert lines[0].startswith(f"current  {first}  P-256 (ES256)  kid ")

    assert run("keys", "activate") == (
        0,
        f"key {second} signs from now on\nkey {first} is previous: its refresh tokens stay "
        "valid; keep it in the registry's bundle until the tokens it signed expire "
        f"(--token-ttl), then tokend keys retire {first}\n",
    )
    assert run("keys", "retire") == (
        0,
        f"retired key {first}: what it signed no longer verifies (docker clients whose "
        "refresh token it signed log in again); drop its certificate from the registry's "
        "bundle (tokend keys bundle)\n",
    )
    assert [key.name for key in load_key_dir(keys_dir).keys] == [second]


def test_refusals_are_findings_with_their_sentence(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keys", "new")
    current = read_state(keys_dir).current
    assert run("keys", "activate") == (1, "")
    assert capsys.readouterr().err == (
        "tokend keys: no next key to activate; create one with tokend keys new, publish it to "
        "the registry (tokend keys bundle or jwks), then activate it\n"
    )
    assert run("keys", "retire", str(current)) == (1, "")
    assert capsys.readouterr().err.startswith(f"tokend keys: key {current} is current: ")
    run("keys", "new")
    assert run("keys", "new") == (1, "")
    assert "is already next; activate it" in capsys.readouterr().err


def test_a_csr_key_is_listed_as_waiting_and_left_out_of_the_bundle(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keys", "new")
    code, out = run("keys", "new", "--csr", "--type", "P-384", "--cn", "registry signer")
    waiting = read_state(keys_dir).next
    assert waiting is not None
    csr_file, cert_file = keys_dir / f"{waiting}.csr", key_paths(keys_dir, waiting)[1]
    assert (code, out) == (
        0,
        f"key {waiting} (P-384) is next; have your CA sign {csr_file}, put its certificate at "
        f"{cert_file}, then publish it to the registry (tokend keys bundle or jwks) and restart "
        "the registry, then run tokend keys activate\n",
    )
    request = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert request.subject.rfc4514_string() == "CN=registry signer"

    code, out = run("keys", "list")
    assert code == 0
    assert out.splitlines()[1].endswith(
        f"waiting for its certificate: put the CA's certificate at {cert_file}"
    )
    capsys.readouterr()
    code, out = run("keys", "bundle")
    assert code == 0
    assert len(x509.load_pem_x509_certificates(out.encode())) == 1
    assert capsys.readouterr().err == (
        f"tokend keys: key {waiting} (next) is left out: waiting for its certificate at "
        f"{cert_file}\n"
    )
    assert run("keys", "activate") == (1, "")
    assert capsys.readouterr().err == (
        f"tokend keys: key {waiting} is waiting for its certificate: put the CA's certificate "
        f"at {cert_file}\n"
    )


def test_the_bundle_holds_exactly_current_next_and_previous_leaves(keys_dir: Path) -> None:
    first = create_key(keys_dir, now=1_790_000_000)
    second = create_key(keys_dir, now=1_790_000_001)
    activate(keys_dir)
    third = create_key(keys_dir, key_type="Ed25519", now=1_790_000_002)
    code, out = run("keys", "bundle")
    assert code == 0
    bundle = x509.load_pem_x509_certificates(out.encode())
    expected = [leaf_of(keys_dir, name) for name in (second, third, first)]
    assert [c.public_bytes(serialization.Encoding.DER) for c in bundle] == [
        c.public_bytes(serialization.Encoding.DER) for c in expected
    ]


@pytest.mark.parametrize("kid_form", ["libtrust", "thumbprint"])
def test_jwks_kids_are_the_kids_tokend_sends(
    keys_dir: Path, kid_form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [create_key(keys_dir, key_type="P-521", now=1_790_000_000)]
    names.append(create_key(keys_dir, key_type="RSA-2048", now=1_790_000_001))
    activate(keys_dir)
    names.append(create_key(keys_dir, key_type="Ed25519", now=1_790_000_002))
    monkeypatch.setenv("TOKEND_KID", kid_form)
    code, out = run("keys", "jwks")
    assert code == 0
    document = json.loads(out)
    key_set = JWKSet.import_key_set(document)
    order = [names[1], names[2], names[0]]  # current, next, previous
    keys = load_key_dir(keys_dir, kid_form=kid_form)
    for entry, imported, name, set_key in zip(
        document["keys"], key_set.keys, order, keys.keys, strict=True
    ):
        sent = load_signing_key(*key_paths(keys_dir, name), kid_form=kid_form)
        assert (entry["kid"], entry["alg"], entry["use"]) == (sent.kid, sent.alg, "sig")
        assert not imported.is_private and "d" not in entry
        token = set_key.signing.sign({"sub": name})
        registry = JWSRegistry(algorithms=[sent.alg])
        registry.max_header_length = 16384  # x5c: a certificate chain in the header
        assert jwt.decode(token, imported, registry=registry).header["kid"] == entry["kid"]


def test_jwks_refuses_an_unknown_kid_form(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keys", "new")
    assert run("keys", "jwks", "--kid", "x5t") == (2, "")
    assert capsys.readouterr().err == (
        "tokend keys: unknown kid form 'x5t'; use libtrust or thumbprint\n"
    )


def test_list_reports_a_directory_the_daemon_would_refuse_and_stray_files(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keys", "new")
    current = read_state(keys_dir).current
    (keys_dir / "20200101-000000.key").write_bytes(b"left over")
    cert_path = key_paths(keys_dir, str(current))[1]
    cert_path.unlink()
    code, out = run("keys", "list")
    assert code == 1
    assert out.splitlines() == [
        f"current  {current}  P-256 (ES256)  kid "
        f"{load_signing_key(key_paths(keys_dir, str(current))[0]).kid}  thumbprint "
        f"{load_signing_key(key_paths(keys_dir, str(current))[0], kid_form='thumbprint').kid}"
        f"  certificate {cert_path} missing or unreadable",
        "not in keys.json: 20200101-000000.key (left by an interrupted command; remove it)",
    ]
    assert capsys.readouterr().err == (
        f"tokend keys: the daemon would refuse {keys_dir}: key {current} (current) has no "
        f"certificate: {cert_path} does not exist; every key of a keys directory needs one "
        "(the registry trusts keys by their certificates)\n"
    )


def test_new_says_which_types_distribution_2_cannot_verify(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        run("keys", "new", "--help")
    assert exited.value.code == 0
    assert "distribution 2.x cannot verify Ed25519" in " ".join(capsys.readouterr().out.split())


def test_new_refuses_a_shared_secret_planted_as_a_link(
    keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_dir.mkdir()
    (keys_dir / "shared.secret").symlink_to(tmp_path / "elsewhere")
    assert run("keys", "new") == (1, "")
    assert capsys.readouterr().err == (
        f"tokend keys: {keys_dir / 'shared.secret'} is a symbolic link to "
        f"{tmp_path / 'elsewhere'}, which does not exist; refusing to create a file through it\n"
    )
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in keys_dir.iterdir()) == ["shared.secret"]


def test_the_directory_may_come_before_or_after_the_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tokend keys --keys-dir DIR list`` as well as ``tokend keys list --keys-dir DIR``; the
    command line wins over TOKEND_KEYS_DIR, and the one after the action over the one before."""
    keys, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    monkeypatch.setenv("TOKEND_KEYS_DIR", str(tmp_path / "nowhere"))
    assert run("keys", "--keys-dir", str(keys), "new")[0] == 0
    assert run("keys", "new", "--keys-dir", str(elsewhere))[0] == 0
    assert run("keys", "new", "--keys-dir", str(elsewhere))[0] == 0  # elsewhere has a next key
    for argv in (
        ("keys", "--keys-dir", str(keys), "list"),
        ("keys", "list", "--keys-dir", str(keys)),
        ("keys", "--keys-dir", str(elsewhere), "list", "--keys-dir", str(keys)),
    ):
        code, out = run(*argv)
        assert code == 0, argv
        assert [line.split()[0] for line in out.splitlines()] == ["current"], argv


def test_check_config_checks_a_keys_directory_as_the_daemon_loads_it(
    keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TOKEND_KEYS_DIR set beside the daemon: check-config reports that directory's keys (not
    the default --key), refuses what the daemon would refuse, and --key with it."""
    write_policy(tmp_path / "config", {"a": ("pw", {"*": ["pull"]})})
    check = ("check-config", "--config-dir", str(tmp_path / "config"))
    current = create_key(keys_dir)
    upcoming = create_key(keys_dir, key_type="RSA-2048")
    code, out = run(*check)
    assert code == 0, out
    assert f"keys directory {keys_dir}: key {current} signs; 2 trusted" in out
    assert f"key {key_paths(keys_dir, current)[0]}: P-256 (ES256)" in out
    assert f"next key {upcoming}: RSA 2048 bits (RS256)" in out
    kid = libtrust_key_id(load_key_dir(keys_dir).next.public_key)  # type: ignore[union-attr]
    assert f"next key {upcoming}: kid libtrust {kid}" in out
    assert run(*check, "--key", "certs/RootCA.key")[0] == 2
    assert "--keys-dir replaces --key and --cert" in capsys.readouterr().err
    state = keys_dir / "keys.json"
    state.write_text(state.read_text().replace('"current"', '"curent"'))
    assert run(*check)[0] == 1
    assert "keys.json" in capsys.readouterr().err
