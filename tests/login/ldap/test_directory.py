"""The directory client against a real OpenLDAP slapd (tests/ldap_server.py).

The directory holds musicians inside the search base, philosophers outside it, a service
account, groups (memberOf maintained by the overlay) and two entries with the same uid.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from ldap_server import BASE, GROUPS, PASSWORD, SUFFIX, Slapd, dn, group_dn, start_slapd
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap.ldapclient import LDAPClient
from support import free_port
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import capturedLogs, formatEvent

from tokend.dn import normalise_dn
from tokend.login.ldap.client import Directory, DirectoryAccount
from tokend.login.ldap.config import (
    DEFAULT_FILTER,
    DirectoryConfig,
    escape_filter_value,
    read_bind_password,
)
from tokend.login.ldap.connections import DirectoryUnavailable

# ldaptor's filter parser calls pyparsing by its pre-3.0 names (tokend silences that warning at
# import, but pytest resets the warning filters around each test).
pytestmark = pytest.mark.filterwarnings("ignore:'parseString' deprecated")

COMPOSERS, SALZBURG = normalise_dn(group_dn("composers")), normalise_dn(group_dn("salzburg"))


def config_for(slapd: Slapd, **overrides: Any) -> DirectoryConfig:
    settings: dict[str, Any] = {
        "urls": slapd.urls,
        "base": slapd.base,
        "bind_dn": slapd.bind_dn,
        "bind_password": slapd.bind_password,
        "timeout": 5.0,
    }
    settings.update(overrides)
    return DirectoryConfig(**settings)


@pytest.fixture
def directories() -> Iterator[list[Directory]]:
    """Directories a test made, closed after it."""
    made: list[Directory] = []
    yield made
    for directory in made:
        directory.close()


@pytest.fixture
def make(slapd: Slapd, directories: list[Directory]) -> Any:
    def make(**overrides: Any) -> Directory:
        directory = Directory(config_for(slapd, **overrides), reactor)
        directories.append(directory)
        return directory

    return make


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


class SilentServer:
    """A TCP port that accepts connections (in the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.url = f"ldap://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("mozart", "mozart"),
        ("*", r"\2a"),
        ("mozart)(uid=*", r"mozart\29\28uid=\2a"),
        ("*)(|(uid=*", r"\2a\29\28|\28uid=\2a"),
        ("a\x00b", r"a\00b"),
        ("a\\b", r"a\5cb"),
        (r"a\2a", r"a\5c2a"),
        ("Dvořák", "Dvořák"),
    ],
)
def test_escape_filter_value(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped


def test_bind_password_strips_one_line_break(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    for content, expected in [
        (b"s3cret\n", b"s3cret"),
        (b"s3cret\r\n", b"s3cret"),
        (b"s3cret\r", b"s3cret"),
        (b"s3cret", b"s3cret"),
        (b"s3cret\n\n", b"s3cret\n"),
        (b" spaced \n", b" spaced "),
    ]:
        path.write_bytes(content)
        path.chmod(0o600)
        assert read_bind_password(str(path)) == expected


def test_bind_password_refuses_loose_permissions(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\n")
    path.chmod(0o640)
    with pytest.raises(ValueError, match=f"bind password file {path} is readable by others"):
        read_bind_password(str(path))
    assert read_bind_password(str(path), allow_loose=True) == b"s3cret"


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_bind_password_refuses_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match=f"bind password file {path} is empty"):
        read_bind_password(str(path))


def test_bind_password_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_bind_password(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"urls": ()}, "at least one directory URL"),
        ({"urls": ("http://x",)}, "must be ldap://"),
        ({"urls": ("ldap://",)}, "must be ldap://"),
        ({"urls": ("ldap://x:99999",)}, "is not ldap://host:port"),
        ({"urls": ("ldap://x/dc=x",)}, "only a host and a port"),
        ({"filter": "(uid=x)"}, "does not contain {account}"),
        ({"filter": "(uid={account}"}, "is not an LDAP filter"),
        ({"group_filter": "(member=x)"}, "does not contain {dn}"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"starttls": True, "urls": ("ldaps://x",)}, "StartTLS applies to ldap://"),
        ({"bind_dn": None, "bind_password": b"x"}, "needs a bind DN"),
        ({"base": " "}, "search base"),
    ],
)
def test_config_refuses(overrides: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"urls": ("ldap://127.0.0.1:389",), "base": BASE}
    settings.update(overrides)
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        DirectoryConfig(**settings)


def test_config_accepts_ad_filter_and_defaults() -> None:
    config = DirectoryConfig(
        urls=("ldap://dc1.example.com", "ldaps://dc2.example.com:3269"),
        base="dc=example,dc=com",
        filter="(&(objectClass=user)(sAMAccountName={account}))",
    )
    assert [s.port for s in config.servers] == [389, 3269]
    assert DirectoryConfig(urls=("ldap://x",), base=BASE).filter == DEFAULT_FILTER


def test_config_repr_hides_the_bind_password() -> None:
    config = DirectoryConfig(urls=("ldap://x",), base=BASE, bind_dn="cn=s", bind_password=b"Se5")
    assert "Se5" not in repr(config)


# -- logins against slapd --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_with_groups_from_member_of(make: Any) -> None:
    directory = make()
    account = await directory.authenticate("mozart", PASSWORD.encode())
    assert account == DirectoryAccount(dn("mozart"), frozenset({COMPOSERS, SALZBURG}))
    bach = await directory.authenticate("bach", PASSWORD.encode())
    assert bach is not None and bach.groups == {COMPOSERS}


@pytest_twisted.ensureDeferred
async def test_login_with_groups_by_search(make: Any) -> None:
    # memberOf is not even asked for: the groups come from searching ou=groups for members.
    directory = make(group_base=GROUPS, group_attribute="doesNotExist")
    account = await directory.authenticate("mozart", PASSWORD.encode())
    assert account == DirectoryAccount(dn("mozart"), frozenset({COMPOSERS, SALZBURG}))
    restricted = make(group_base=GROUPS, group_filter="(&(cn=salz*)(member={dn}))")
    account = await restricted.authenticate("mozart", PASSWORD.encode())
    assert account is not None and account.groups == {SALZBURG}


@pytest_twisted.ensureDeferred
async def test_group_names_are_normalised(make: Any, slapd: Slapd) -> None:
    slapd.add_member("composers", f"UID=Kant, OU=Philosophs,{SUFFIX.upper()}")
    try:
        account = await make(base=SUFFIX).authenticate("kant", PASSWORD.encode())
    finally:
        slapd.remove_member("composers", dn("kant", "philosophs"))
    assert account is not None
    assert account.groups == {COMPOSERS, normalise_dn(group_dn("critics"))}


@pytest_twisted.ensureDeferred
async def test_wrong_password(make: Any) -> None:
    directory = make()
    assert await directory.authenticate("mozart", b"wrong") is None
    assert await directory.authenticate("mozart", b"password ") is None
    assert await directory.authenticate("nobody", b"password") is None


@pytest_twisted.ensureDeferred
async def test_changed_password_and_membership_are_seen(make: Any, slapd: Slapd) -> None:
    directory = make()
    slapd.set_password(dn("bach"), "Wohltemperiert")
    slapd.add_member("salzburg", dn("bach"))
    try:
        assert await directory.authenticate("bach", PASSWORD.encode()) is None
        account = await directory.authenticate("bach", b"Wohltemperiert")
        assert account is not None and account.groups == {COMPOSERS, SALZBURG}
    finally:
        slapd.set_password(dn("bach"), PASSWORD)
        slapd.remove_member("salzburg", dn("bach"))


async def _raw_bind(slapd: Slapd, entry: str, password: bytes) -> int:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", slapd.port)
    client = await connectProtocol(endpoint, LDAPClient())
    try:
        response = await client.send(pureldap.LDAPBindRequest(dn=entry, auth=password))
        return int(response.resultCode)
    finally:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_empty_password_refused_before_the_directory_is_asked(
    make: Any, slapd: Slapd
) -> None:
    # The server itself would let it in (an unauthenticated bind "succeeds") ...
    assert await _raw_bind(slapd, dn("mozart"), b"") == 0
    assert await _raw_bind(slapd, dn("mozart"), b"wrong") == 49
    # ... so the refusal must come first: with nothing listening, asking would raise.
    nowhere = make(urls=(f"ldap://127.0.0.1:{free_port()}",))
    assert await nowhere.authenticate("mozart", b"") is None
    before = slapd.mark()
    assert await make().authenticate("mozart", b"") is None
    assert slapd.bound_since(before) == 0


@pytest.mark.parametrize(
    "account",
    ["*", "mozart)(uid=*", "*)(|(uid=*", "mozart\x00", "mozart\x00)(uid=*", "mo\\zart",
     "mo\\7aart", "mozar*", "(uid=mozart)", "mozart)", "*)(objectClass=*"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_filter_injection_matches_nobody(make: Any, account: str) -> None:
    directory = make()
    assert await directory.authenticate(account, PASSWORD.encode()) is None
    assert await directory.lookup(account) is None


@pytest_twisted.ensureDeferred
async def test_account_outside_the_base(make: Any) -> None:
    directory = make()
    assert await directory.authenticate("kant", PASSWORD.encode()) is None
    assert await directory.lookup("schopenhauer") is None
    wider = make(base=SUFFIX)
    account = await wider.authenticate("kant", PASSWORD.encode())
    assert account is not None and account.dn == dn("kant", "philosophs")


@pytest_twisted.ensureDeferred
async def test_two_entries_matching_are_refused_and_logged(make: Any) -> None:
    directory = make()
    with capturedLogs() as events:
        assert await directory.authenticate("twin", PASSWORD.encode()) is None
        assert await directory.lookup("twin") is None
    warnings = [m for m in messages(events) if "several entries" in m]
    assert len(warnings) == 2
    assert "twin" in warnings[0] and f"ou=baroque,{BASE}" in warnings[0]


@pytest_twisted.ensureDeferred
async def test_account_name_is_escaped_in_the_warning(make: Any, slapd: Slapd) -> None:
    weird = "tw\\in"
    for ou in ("musicians", "baroque,ou=musicians"):
        slapd.ldap_tool(
            "ldapadd",
            f"dn: cn=weird,ou={ou},{SUFFIX}\nobjectClass: inetOrgPerson\ncn: weird\nsn: w\n"
            f"uid:: {__import__('base64').b64encode(weird.encode()).decode()}\n",
        )
    try:
        with capturedLogs() as events:
            assert await make().lookup(weird) is None
    finally:
        for ou in ("musicians", "baroque,ou=musicians"):
            slapd.modify(f"dn: cn=weird,ou={ou},{SUFFIX}\nchangetype: delete\n")
    [warning] = [m for m in messages(events) if "several entries" in m]
    assert "tw\\\\in" in warning


@pytest.mark.parametrize(
    "account",
    [" mozart", "mozart ", "mozart\t", "mozart\n", "\tmozart", "\uff4dozart", "\U0001d426ozart",
     "\u24dcozart", "\uff4d\U0001d428zart", "mo\u00adzart", "mo\u200bzart", "moz\u200dart",
     "mozart\ufeff", "mozart\u034f", "mo\u0301zart"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_spaced_control_or_look_alike_spellings_are_refused_before_traffic(
    make: Any, slapd: Slapd, account: str
) -> None:
    # slapd's uid matching ignores leading and trailing spaces and reads fullwidth,
    # mathematical and circled letters as the letter: " mozart" and a fullwidth m would be
    # mozart under another name (another throttle counter, another ${account}).
    before = slapd.mark()
    assert await make().authenticate(account, PASSWORD.encode()) is None
    assert await make().lookup(account) is None
    assert slapd.bound_since(before) == 0


@pytest_twisted.ensureDeferred
async def test_lookup(make: Any) -> None:
    directory = make()
    account = await directory.lookup("mozart")
    assert account == DirectoryAccount(dn("mozart"), frozenset({COMPOSERS, SALZBURG}))
    assert await directory.lookup("kant") is None
    assert await directory.lookup("nobody") is None
    assert await directory.lookup("") is None


@pytest_twisted.ensureDeferred
async def test_anonymous_searches(make: Any) -> None:
    directory = make(bind_dn=None, bind_password=None)
    account = await directory.authenticate("bach", PASSWORD.encode())
    assert account is not None and account.groups == {COMPOSERS}


@pytest_twisted.ensureDeferred
async def test_ad_style_filter(make: Any) -> None:
    directory = make(filter="(&(objectClass=inetOrgPerson)(cn={account}))")
    account = await directory.authenticate("Johann Sebastian Bach", PASSWORD.encode())
    assert account is not None and account.dn == dn("bach")


# -- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_ldaps_with_the_test_ca(make: Any, slapd: Slapd, host: str) -> None:
    url = f"ldaps://{host}:{slapd.tls_port}"
    directory = make(urls=(url,), ca_cert=str(slapd.ca_cert_path))
    account = await directory.authenticate("mozart", PASSWORD.encode())
    assert account is not None and account.groups == {COMPOSERS, SALZBURG}
    assert (await directory.check()).url == url


@pytest_twisted.ensureDeferred
async def test_starttls_with_the_test_ca(make: Any, slapd: Slapd) -> None:
    before = slapd.log_text().count("oid=1.3.6.1.4.1.1466.20037")
    directory = make(starttls=True, ca_cert=str(slapd.ca_cert_path))
    account = await directory.authenticate("mozart", PASSWORD.encode())
    assert account is not None and account.groups == {COMPOSERS, SALZBURG}
    # Both the service connection and the login's own connection asked for StartTLS.
    assert slapd.log_text().count("oid=1.3.6.1.4.1.1466.20037") - before == 2


@pytest.mark.parametrize("starttls", [False, True])
@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_refused(
    make: Any, slapd: Slapd, starttls: bool
) -> None:
    url = slapd.url if starttls else slapd.ldaps_url
    directory = make(urls=(url,), starttls=starttls, ca_cert=str(slapd.wrong_ca_cert_path))
    with pytest.raises(DirectoryUnavailable, match="TLS failed"):
        await directory.authenticate("mozart", PASSWORD.encode())
    with pytest.raises(DirectoryUnavailable, match="TLS failed"):
        await directory.check()


@pytest_twisted.ensureDeferred
async def test_ldaps_to_a_plain_ldap_port_says_so(make: Any, slapd: Slapd) -> None:
    """slapd hangs up on a TLS hello sent to its plain port: the reason names the mistake."""
    url = f"ldaps://127.0.0.1:{slapd.port}"
    directory = make(urls=(url,), ca_cert=str(slapd.ca_cert_path))
    hint = (
        f"{url}: bind: the server did not answer TLS: is it a plain ldap:// port? use ldap:// "
        "(with --ldap-starttls) instead"
    )
    with capturedLogs() as events:
        with pytest.raises(DirectoryUnavailable) as raised:
            await directory.authenticate("mozart", PASSWORD.encode())
    assert str(raised.value) == hint
    assert f"directory unavailable: {hint}" in messages(events)


def test_unreadable_ca_file(slapd: Slapd, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the directory CA certificate"):
        Directory(config_for(slapd, ca_cert=str(tmp_path / "none.pem")), reactor)
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="is not a PEM certificate"):
        Directory(config_for(slapd, ca_cert=str(tmp_path / "bad.pem")), reactor)


# -- the service connection, fail-over and outages -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_service_connection_is_reused(make: Any, slapd: Slapd) -> None:
    directory = make()
    before = slapd.mark()
    for _ in range(3):
        assert await directory.lookup("mozart") is not None
    assert slapd.bound_since(before) == 1
    # Each login's password bind has a connection of its own; the searches still share one.
    for _ in range(2):
        assert await directory.authenticate("bach", PASSWORD.encode()) is not None
    assert slapd.bound_since(before) == 3


@pytest_twisted.ensureDeferred
async def test_a_cancelled_lookup_leaves_the_service_connection_alone(
    make: Any, slapd: Slapd
) -> None:
    """A caller that stops waiting (the door no longer cancels, but a later caller might) must
    not cost every other login the shared connection: the search's late answer is ignored and
    the next lookup goes out on the same connection."""
    from twisted.internet.defer import CancelledError, Deferred

    directory = make()
    before = slapd.mark()
    assert await directory.lookup("mozart") is not None
    waiting = Deferred.fromCoroutine(directory.lookup("bach"))
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    for _ in range(2):
        assert await directory.lookup("mozart") is not None
    assert slapd.bound_since(before) == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_share_one_connection_attempt(make: Any, slapd: Slapd) -> None:
    directory = make()
    before = slapd.mark()
    results = await _gather(directory, ["mozart", "bach"] * 5)
    assert all(result is not None for result in results)
    assert slapd.bound_since(before) == 1


async def _gather(directory: Directory, accounts: list[str]) -> list[Any]:
    from twisted.internet.defer import Deferred, gatherResults

    return await gatherResults(
        [Deferred.fromCoroutine(directory.lookup(account)) for account in accounts]
    )


@pytest_twisted.ensureDeferred
async def test_refused_service_bind_is_unavailable(make: Any) -> None:
    directory = make(bind_password=b"Sesame-4711")
    with capturedLogs() as events:
        for _ in range(2):
            with pytest.raises(DirectoryUnavailable, match="refused the service account") as e:
                await directory.authenticate("mozart", PASSWORD.encode())
            assert "Sesame-4711" not in str(e.value)
    assert all("Sesame-4711" not in m for m in messages(events))
    assert sum("directory unavailable" in m for m in messages(events)) == 1


@pytest_twisted.ensureDeferred
async def test_fail_over_to_the_next_url(make: Any, slapd: Slapd, silent: SilentServer) -> None:
    refused = f"ldap://127.0.0.1:{free_port()}"
    directory = make(urls=(refused, slapd.url))
    assert await directory.authenticate("mozart", PASSWORD.encode()) is not None
    assert (await directory.check()).url == slapd.url
    slow = make(urls=(silent.url, slapd.url), timeout=0.5)
    assert await slow.authenticate("mozart", PASSWORD.encode()) is not None


@pytest_twisted.ensureDeferred
async def test_a_silent_directory_times_out(make: Any, silent: SilentServer) -> None:
    directory = make(urls=(silent.url,), timeout=0.4)
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable, match=r"timed out after 0\.4 s"):
        await directory.authenticate("mozart", PASSWORD.encode())
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_check_reports_what_it_found(make: Any, slapd: Slapd) -> None:
    report = await make(group_base=GROUPS).check()
    assert report.url == slapd.url
    assert report.accounts == 4  # mozart, bach and the two twins; philosophers are outside
    assert not report.more_accounts
    assert report.groups == 3
    text = "\n".join(report.lines(10, 300))
    assert f"bound as {slapd.bind_dn}" in text
    assert BASE in text and "finds 4 accounts" in text
    assert f"group base {GROUPS} exists; 3 groups" in text
    anonymous = await make(bind_dn=None, bind_password=None).check()
    assert "searches are anonymous" in "\n".join(anonymous.lines(10, 300))


@pytest_twisted.ensureDeferred
async def test_check_names_a_missing_base(make: Any) -> None:
    with pytest.raises(DirectoryUnavailable, match=f"ou=nowhere,{SUFFIX} does not exist"):
        await make(base=f"ou=nowhere,{SUFFIX}").check()
    with pytest.raises(DirectoryUnavailable, match=f"ou=nowhere,{SUFFIX} does not exist"):
        await make(group_base=f"ou=nowhere,{SUFFIX}").check()


@pytest_twisted.ensureDeferred
async def test_outage_logged_once_and_recovered(tmp_path: Path) -> None:
    slapd = start_slapd(tmp_path / "slapd")
    secret = "Zauberflöte-1791"
    slapd.set_password(dn("mozart"), secret)
    directory = Directory(config_for(slapd, timeout=2.0), reactor)
    try:
        with capturedLogs() as events:
            assert await directory.authenticate("mozart", secret.encode()) is not None
            slapd.stop()
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(DirectoryUnavailable, match="connection refused") as e:
                    await directory.authenticate("mozart", secret.encode())
                assert time.monotonic() - started < 2.0
                assert secret not in str(e.value)
            with pytest.raises(DirectoryUnavailable):
                await directory.lookup("mozart")
            slapd.start()
            for _ in range(2):
                assert await directory.authenticate("mozart", secret.encode()) is not None
            assert await directory.lookup("bach") is not None
    finally:
        directory.close()
        slapd.stop()
    logged = messages(events)
    unavailable = [m for m in logged if "directory unavailable" in m]
    assert len(unavailable) == 1 and slapd.url in unavailable[0]
    assert sum("directory reachable again" in m for m in logged) == 1
    assert logged.index(unavailable[0]) < logged.index("directory reachable again")
    assert [e["log_level"].name for e in events if "reachable" in formatEvent(e)] == ["info"]
    assert [e["log_level"].name for e in events if "unavailable" in formatEvent(e)] == ["warn"]
    bind_password = slapd.bind_password.decode()
    assert all(secret not in m and bind_password not in m for m in logged)


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_under_a_request_is_replaced(make: Any, slapd: Slapd) -> None:
    directory = make()
    assert await directory.lookup("mozart") is not None
    before = slapd.mark()
    # The socket is gone but the client has not been told yet (as when the directory closes an
    # idle connection just as a request arrives): the search fails once, then runs on a new one.
    directory._connections._service.client.transport.abortConnection()
    assert await directory.lookup("mozart") is not None
    assert slapd.bound_since(before) == 1
