"""An access token's secret: its form, its checksum, the pattern scanners use, its hash."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest
from support import REPO

from tokend.access_tokens import secrets as token_secrets
from tokend.access_tokens.secrets import (
    ALPHABET,
    BODY_LENGTH,
    CHECKSUM_LENGTH,
    PREFIX,
    SECRET_LENGTH,
    SECRET_PATTERN,
    matches,
    new_secret,
    parse,
    secret_hash,
    secret_in,
)


def test_a_new_secret_has_the_prefix_256_random_bits_and_a_checksum_and_parses() -> None:
    secret = new_secret()
    assert len(secret) == SECRET_LENGTH == len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
    assert secret.startswith(PREFIX)
    assert len(ALPHABET) ** BODY_LENGTH >= 2**256
    assert set(secret[len(PREFIX) :]) <= set(ALPHABET)
    parsed = parse(secret)
    assert parsed is not None
    assert parsed.secret == secret
    assert secret not in repr(parsed), "a parsed secret never lands in a log by its repr"


def test_secrets_do_not_repeat() -> None:
    made = {new_secret() for _ in range(1000)}
    assert len(made) == 1000
    bodies = "".join(secret[len(PREFIX) : len(PREFIX) + BODY_LENGTH] for secret in made)
    assert set(bodies) == set(ALPHABET), "every character of the alphabet turns up"


def test_the_checksum_catches_every_single_character_change() -> None:
    secret = new_secret()
    for position in range(len(PREFIX), SECRET_LENGTH):
        for replacement in ALPHABET:
            if replacement == secret[position]:
                continue
            changed = secret[:position] + replacement + secret[position + 1 :]
            assert parse(changed) is None, (position, replacement)


def test_two_swapped_neighbours_are_caught_too() -> None:
    secret = new_secret()
    for position in range(len(PREFIX), SECRET_LENGTH - 1):
        a, b = secret[position], secret[position + 1]
        if a != b:
            swapped = secret[:position] + b + a + secret[position + 2 :]
            assert parse(swapped) is None, position


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tkd_at_",
        "hunter2",
        "TKD_AT_" + "a" * (SECRET_LENGTH - len(PREFIX)),
        "tkd_rt_" + "a" * (SECRET_LENGTH - len(PREFIX)),
        "x" * SECRET_LENGTH,
        "tkd_at_" + "a" * 10_000_000,
    ],
)
def test_malformed_and_oversized_text_is_no_secret(text: str) -> None:
    assert parse(text) is None


def test_shorter_longer_or_foreign_characters_are_no_secret() -> None:
    secret = new_secret()
    assert parse(secret[:-1]) is None
    assert parse(secret + "a") is None
    assert parse(" " + secret[1:]) is None
    assert parse(secret + "\n") is None
    for foreign in "-_+/=.: \x00é٣":
        assert parse(secret[:20] + foreign + secret[21:]) is None, foreign


def test_oversized_text_is_refused_before_it_is_read() -> None:
    """A request may carry a megabyte of password: parse looks at its length first."""
    huge = PREFIX + "€" * 5_000_000
    assert parse(huge) is None


def test_the_pattern_finds_generated_secrets_and_nothing_shorter_or_longer() -> None:
    pattern = re.compile(SECRET_PATTERN)
    for _ in range(200):
        secret = new_secret()
        assert pattern.fullmatch(secret)
        text = f"export TOKEN={secret}\nother"
        assert [m.group(0) for m in pattern.finditer(text)] == [secret]
        assert pattern.search(f"TOKEN='{secret[:-1]}'") is None
        assert pattern.search(f"TOKEN='{secret}a'") is None
        assert pattern.search(f"TOKEN='x{secret}'") is None
    assert pattern.search(PREFIX) is None


def test_the_pattern_is_written_in_docs_security() -> None:
    page = (REPO / "docs" / "security.md").read_text()
    section = page.split("## Recognising a leaked access token", 1)[1].split("\n## ", 1)[0]
    assert f"`{SECRET_PATTERN}`" in section


def test_the_stored_hash_is_sha256_of_the_secret() -> None:
    secret = new_secret()
    assert secret_hash(secret) == hashlib.sha256(secret.encode("ascii")).digest()
    assert secret_hash(new_secret()) != secret_hash(secret)


def test_matches_compares_the_hash_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(token_secrets.hmac, "compare_digest", compare_digest)
    secret, other = new_secret(), new_secret()
    stored = secret_hash(secret)
    assert matches(secret, stored)
    assert not matches(other, stored)
    assert not matches(secret, stored[:-1])
    assert compared == [
        (stored, stored),
        (secret_hash(other), stored),
        (stored, stored[:-1]),
    ]


def test_the_core_imports_no_twisted() -> None:
    package = Path(token_secrets.__file__).parent
    imports = re.compile(r"^\s*(?:from|import)\s+(?:twisted|klein)\b", re.MULTILINE)
    for path in package.glob("*.py"):
        assert imports.search(path.read_text()) is None, path.name


def test_the_secret_a_password_holds_is_read_from_bytes_length_first() -> None:
    secret = new_secret()
    assert secret_in(secret.encode("ascii")) == secret
    assert secret_in(secret[:-1].encode("ascii") + b"\xff") is None  # not ASCII
    assert secret_in(secret.encode("ascii") + b"x") is None
    assert secret_in(b"x" * 1_000_000) is None
    broken = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert secret_in(broken.encode("ascii")) is None  # the checksum
