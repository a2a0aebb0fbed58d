"""``tokend token``: real tokens from tokend's own issuer, read back and verified against the
certificate the registry is given; forged, expired and garbage input refused in one sentence."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from support import PrivateKey, new_private_key, write_private_key

from tokend.cli import main
from tokend.login.refresh_tokens import RefreshTokens
from tokend.scope import ResourceScope
from tokend.signing.devcert import write_dev_cert
from tokend.signing.keys import SigningKey, key_ids, load_signing_key
from tokend.signing.tokens import TokenIssuer, rfc3339

GRANTED = [
    ResourceScope("repository", "team/app", ("pull", "push")),
    ResourceScope("repository", "team/tools", ("pull",)),
    ResourceScope("registry", "catalog", ("*",)),
]


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["token", *argv], stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    key_path, cert_path = tmp_path / "RootCA.key", tmp_path / "RootCA.crt"
    write_dev_cert(key_path, cert_path, cn="unit signer")
    return key_path, cert_path


def issue(key: SigningKey, now: float, granted: list[ResourceScope] = GRANTED) -> str:
    issuer = TokenIssuer(key, "tokend", 300, new_jti=lambda: "j1")
    return issuer.issue("alice", "registry", granted, now).token


def test_a_real_token_is_verified_and_described(pair: tuple[Path, Path]) -> None:
    key_path, cert_path = pair
    now = time.time()
    token = issue(load_signing_key(key_path, cert_path), now)
    code, out = run("--cert", str(cert_path), "--issuer", "tokend", "--service", "registry", token)
    assert code == 0
    issued = int(now)
    # nbf and iat lie 10 s before the issuing second; the decoder's clock is a moment later
    out = re.sub(r"\((?:10|11) s ago\)", "(10 s ago)", out)
    assert out.splitlines() == [
        "token: access token",
        "header:",
        "  typ  JWT",
        "  alg  ES256",
        f"  kid  {key_ids(cert_path)['libtrust']}",
        "  x5c  1 certificate(s): CN=unit signer",
        "signature: verified, ES256, made by the key of CN=unit signer (sent in x5c; it is in "
        f"{cert_path})",
        "claims:",
        "  iss  tokend  (the registry's auth.token.issuer must equal it)",
        "  sub  alice  (the account)",
        "  aud  registry  (the registry's auth.token.service must be it)",
        f"  exp  {rfc3339(issued + 300)} (expires in 4 min)",
        f"  nbf  {rfc3339(issued - 10)} (10 s ago)",
        f"  iat  {rfc3339(issued - 10)} (10 s ago)",
        "  jti  j1  (this token's unique id)",
        "access:",
        "  may pull and push repository team/app",
        "  may pull repository team/tools",
        "  may list the catalog (registry:catalog:*)",
    ]


def test_the_realms_json_answer_from_stdin_and_its_refresh_token(
    pair: tuple[Path, Path],
) -> None:
    """``curl … | tokend token``: both tokens described, the refresh token as such, neither
    printed whole."""
    key_path, cert_path = pair
    key = load_signing_key(key_path)  # no certificate: the access token names its key by kid
    now = time.time()
    access = issue(key, now, [])
    refresh = RefreshTokens(key, "tokend").issue("alice", "users", b"$2b$04$" + b"a" * 53, now)
    answer = {"token": access, "access_token": access, "expires_in": 300, "refresh_token": refresh}
    code, out = run("--cert", str(cert_path), stdin=json.dumps(answer) + "\n")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "access_token: access token"
    assert (
        "signature: verified, ES256, made by the key of CN=unit signer in "
        f"{cert_path} (kid, libtrust form)"
    ) in lines
    assert lines[lines.index("access:") + 1] == (
        "  no access (the registry lets this token through /v2/ and nothing else)"
    )
    refresh_part = lines[lines.index("refresh_token: refresh token (docker's identity token)") :]
    assert "  typ  tokend-refresh+jwt" in refresh_part
    assert (
        "signature: verified, ES256, made by the key of CN=unit signer in "
        f"{cert_path} (kid, thumbprint form)"
    ) in refresh_part
    assert "  pwd  (not shown)  a fingerprint of the password hash: a new password ends it" in (
        refresh_part
    )
    assert refresh_part[-1].startswith("meaning: 'alice' trades it at the realm")
    assert "access:" not in refresh_part
    assert access not in out
    assert refresh not in out
    assert refresh.split(".")[2] not in out


def test_a_token_signed_by_another_key_is_refused(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cert_path = pair
    other_key, other_cert = tmp_path / "other.key", tmp_path / "other.crt"
    write_dev_cert(other_key, other_cert, cn="someone else")
    now = time.time()
    with_x5c = issue(load_signing_key(other_key, other_cert), now)
    code, out = run("--cert", str(cert_path), with_x5c)
    assert code == 1
    assert "signature: NOT verified" in out
    assert capsys.readouterr().err == (
        "tokend token: the token does not verify: its x5c chain does not lead to a certificate "
        f"of {cert_path}\n"
    )
    with_kid = issue(load_signing_key(other_key), now)
    assert run("--cert", str(cert_path), with_kid)[0] == 1
    kid = key_ids(other_cert)["libtrust"]
    assert capsys.readouterr().err == (
        f"tokend token: the token does not verify: its kid {kid} is the key of no certificate "
        f"in {cert_path}\n"
    )


def test_a_trusted_x5c_over_another_keys_signature_is_refused(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The header of a genuine token, the claims and signature of a forged one."""
    key_path, cert_path = pair
    other_key, other_cert = tmp_path / "other.key", tmp_path / "other.crt"
    write_dev_cert(other_key, other_cert)
    now = time.time()
    genuine = issue(load_signing_key(key_path, cert_path), now)
    forged = issue(load_signing_key(other_key, other_cert), now, [GRANTED[0]])
    spliced = ".".join([genuine.split(".")[0], *forged.split(".")[1:]])
    assert run("--cert", str(cert_path), spliced)[0] == 1
    assert capsys.readouterr().err == (
        "tokend token: the token does not verify: its signature was not made by the key of "
        f"CN=unit signer (sent in x5c; it is in {cert_path})\n"
    )


def test_an_x5c_chain_is_followed_to_the_bundles_certificate(tmp_path: Path) -> None:
    """A signing certificate issued by a CA: the registry is given the CA alone."""
    ca_key, leaf_key = new_private_key("p256"), new_private_key("p256")
    now = datetime.now(UTC)

    def certificate(
        cn: str, key: PrivateKey, issuer: str, signer: PrivateKey, ca: bool = False
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
        )
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        return builder.sign(signer, hashes.SHA256())

    ca = certificate("unit CA", ca_key, "unit CA", ca_key, ca=True)
    leaf = certificate("unit leaf", leaf_key, "unit CA", ca_key)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "chain.crt").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    write_private_key(tmp_path / "leaf.key", leaf_key)
    for chain in ("leaf.crt", "chain.crt"):
        token = issue(load_signing_key(tmp_path / "leaf.key", tmp_path / chain), time.time())
        code, out = run("--cert", str(tmp_path / "ca.crt"), token)
        assert code == 0
        assert (
            "signature: verified, ES256, made by the key of CN=unit leaf (sent in x5c; issued "
            f"by CN=unit CA of {tmp_path / 'ca.crt'})"
        ) in out.splitlines()
    token = issue(load_signing_key(tmp_path / "leaf.key", tmp_path / "leaf.crt"), time.time())
    assert run("--cert", str(tmp_path / "leaf.crt"), token)[0] == 0  # a bundle of the leaf
    unrelated = tmp_path / "unrelated.crt"
    write_dev_cert(tmp_path / "unrelated.key", unrelated)
    assert run("--cert", str(unrelated), token)[0] == 1
    # The same issuer without basicConstraints CA:TRUE: Go's x509 (the registry) refuses it.
    (tmp_path / "plain.crt").write_bytes(
        certificate("unit CA", ca_key, "unit CA", ca_key).public_bytes(pem)
    )
    token = issue(load_signing_key(tmp_path / "leaf.key", tmp_path / "chain.crt"), time.time())
    assert run("--cert", str(tmp_path / "plain.crt"), token)[0] == 1


def test_an_expired_token_is_refused(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key_path, cert_path = pair
    now = time.time()
    token = issue(load_signing_key(key_path, cert_path), now - 1000)
    code, out = run("--cert", str(cert_path), token)
    assert code == 1
    assert "signature: verified" in out
    expired_at = int(now - 1000) + 300
    assert capsys.readouterr().err == (
        f"tokend token: the token expired at {rfc3339(expired_at)} (11 min ago)\n"
    )


def test_issuer_and_service_are_checked_when_given(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key_path, cert_path = pair
    token = issue(load_signing_key(key_path, cert_path), time.time())
    assert (
        run("--cert", str(cert_path), "--issuer", "tokend", "--service", "registry", token)[0] == 0
    )
    assert run("--cert", str(cert_path), "--issuer", "other", "--service", "hub", token)[0] == 1
    assert capsys.readouterr().err == (
        "tokend token: the token was issued by 'tokend', not --issuer 'other'; the token is for "
        "the audience 'registry', not --service 'hub'\n"
    )


@pytest.mark.parametrize(
    ("given", "sentence"),
    [
        ("garbage", "not a token: expected a JWT (three base64url parts separated by dots) or "
         "the realm's JSON answer"),
        ("a.b.c", "not a token: its parts are not base64url-encoded JSON"),
        ("W10.W10.c2ln", "not a token: its header and claims must be JSON objects"),
        ("", "no token given (an argument, or standard input)"),
        ("{\"token\": ", "the input starts like JSON but is not valid JSON"),
        ('{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}',
         "the JSON answer holds no token: the realm answered an error: authentication required"),
    ],
)  # fmt: skip
def test_garbage_is_one_sentence(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str], given: str, sentence: str
) -> None:
    _, cert_path = pair
    assert run("--cert", str(cert_path), stdin=given) == (1, "")
    assert capsys.readouterr().err == f"tokend token: {sentence}\n"


def test_a_missing_certificate_is_one_sentence(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key_path, cert_path = pair
    token = issue(load_signing_key(key_path, cert_path), time.time())
    assert run("--cert", str(tmp_path / "none.crt"), token) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend token: certificate {tmp_path / 'none.crt'} does not exist; give the registry's "
        "bundle with --cert\n"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_token_on_a_terminal_is_one_sentence_not_a_wait(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    assert main(["token", "--cert", str(pair[1])], stdin=Terminal(), stdout=out) == 1
    assert out.getvalue() == ""
    assert capsys.readouterr().err == (
        "tokend token: give a TOKEN, or pipe a token or the realm's answer into standard input "
        "('-' reads it from the terminal)\n"
    )
