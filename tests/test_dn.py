from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokend.dn import DNError, normalise_dn, parse_dn


@pytest.mark.parametrize(
    "spelling",
    [
        "cn=musicians,ou=groups,dc=example,dc=com",
        "CN=Musicians,OU=Groups,DC=Example,DC=COM",
        "cn = musicians , ou=groups,  dc=example,dc=com",
        "cn=\\4dusicians,ou=groups,dc=example,dc=com",
        "cn=musicians ,ou=groups,dc=example,dc=com",
    ],
)
def test_spellings_of_one_dn_normalise_alike(spelling: str) -> None:
    assert normalise_dn(spelling) == "cn=musicians,ou=groups,dc=example,dc=com"


def test_different_dns_stay_different() -> None:
    assert normalise_dn("cn=musicians,ou=groups,dc=example,dc=com") != normalise_dn(
        "cn=musicians,ou=people,dc=example,dc=com"
    )
    # An escaped comma is part of the value, not a separator.
    assert normalise_dn("cn=a\\,ou=b,dc=c") != normalise_dn("cn=a,ou=b,dc=c")
    assert parse_dn("cn=a\\,ou=b,dc=c") == [[("cn", "a,ou=b")], [("dc", "c")]]


def test_escapes_are_written_one_way() -> None:
    assert normalise_dn("cn=a\\2cb,dc=c") == normalise_dn("cn=a\\,b,dc=c") == "cn=a\\,b,dc=c"
    assert normalise_dn("cn=\\ lead,dc=c") == "cn=\\ lead,dc=c"
    assert normalise_dn("cn=M\\c3\\bcller,dc=c") == "cn=müller,dc=c"


def test_multi_valued_rdn_order_does_not_matter() -> None:
    assert normalise_dn("cn=a+uid=b,dc=c") == normalise_dn("UID=b+CN=a,dc=c")


@pytest.mark.parametrize("text", ["", "   ", "musicians", "cn=", "=x", "cn=a,", "cn=a\\", "c n=a"])
def test_malformed_dns_are_refused(text: str) -> None:
    with pytest.raises(DNError):
        normalise_dn(text)


@given(st.text(max_size=40))
def test_any_text_is_a_dn_or_a_dn_error(text: str) -> None:
    try:
        once = normalise_dn(text)
    except DNError:
        return
    assert normalise_dn(once) == once
