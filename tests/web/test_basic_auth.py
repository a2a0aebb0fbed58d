"""The Authorization header parser: anonymous, valid, and every malformation."""

from __future__ import annotations

from base64 import b64encode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.web.basic_auth import (
    Credentials,
    MalformedCredentials,
    UnsupportedScheme,
    parse_authorization,
)


def basic(raw: bytes) -> bytes:
    return b"Basic " + b64encode(raw)


def test_anonymous() -> None:
    assert parse_authorization(None) is None
    assert parse_authorization(basic(b":")) is None


def test_valid_credentials_keep_colons_in_the_password() -> None:
    assert parse_authorization(basic(b"alice:pa:ss")) == Credentials("alice", b"pa:ss")
    assert parse_authorization(b"basic " + b64encode(b"\xc3\xa9:x")) == Credentials("é", b"x")


def test_password_is_never_in_the_repr() -> None:
    assert "secret" not in repr(parse_authorization(basic(b"a:secret")))


@pytest.mark.parametrize(
    "header",
    [
        b"Basic !!!",
        basic(b"no-colon"),
        basic(b"\xff:x"),
        basic(b"a\x00b:x"),
        b"Basic " + b"A" * 5000,
    ],
)
def test_malformed(header: bytes) -> None:
    with pytest.raises(MalformedCredentials):
        parse_authorization(header)


@pytest.mark.parametrize("header", [b"Bearer abc", b"Digest x", b"", b"Basic"])
def test_other_schemes(header: bytes) -> None:
    if header == b"Basic":
        with pytest.raises(MalformedCredentials):
            parse_authorization(header)
        return
    with pytest.raises(UnsupportedScheme):
        parse_authorization(header)


@given(st.binary(max_size=200))
def test_arbitrary_headers_raise_only_the_parsers_errors(header: bytes) -> None:
    try:
        parse_authorization(header)
    except (MalformedCredentials, UnsupportedScheme):
        pass
