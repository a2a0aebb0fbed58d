"""Property tests for hardening: every parser fails only in its own, located way, and the web
layer answers any input with JSON and never a 5xx.

The policy properties hold for any loader (no crash, located errors, seed-format documents
load), so they keep passing as the policy format grows.
"""

from __future__ import annotations

import base64
import json
import string
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes, urlencode, urlsplit

import pytest
from hyperlink import EncodedURL
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from realms import realm_api
from support import settled, write_key_pair, write_policy
from treq.testing import StubTreq
from twisted.internet.task import Clock

from tokend.policy.documents import anonymous_from_document, users_from_document
from tokend.policy.files import load_policy
from tokend.policy.model import PolicyError
from tokend.scope import (
    MAX_NAME_LENGTH,
    MAX_SCOPES,
    ResourceScope,
    ScopeError,
    is_valid_name,
    parse_scope,
    parse_scopes,
)
from tokend.web.basic_auth import (
    MAX_AUTHORIZATION_BYTES,
    Credentials,
    MalformedCredentials,
    UnsupportedScheme,
    parse_authorization,
)
from tokend.web.requests import FormlessRequest

FUZZ = settings(
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(max_examples: int) -> Callable[[Any], Any]:
    return settings(FUZZ, max_examples=max_examples)


# --- The scope grammar ------------------------------------------------------------------------

_LOWER_ALNUM = string.ascii_lowercase + string.digits
_alphanumeric = st.text(_LOWER_ALNUM, min_size=1, max_size=8)
_separator = st.sampled_from([".", "_", "__"]) | st.integers(1, 3).map(lambda n: "-" * n)
_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    _alphanumeric,
    st.lists(st.tuples(_separator, _alphanumeric), max_size=3),
)
_HOST_CHARACTERS = string.ascii_letters + string.digits
_host_component = st.text(_HOST_CHARACTERS, min_size=1, max_size=1) | st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_HOST_CHARACTERS),
    st.text(_HOST_CHARACTERS + "-", max_size=8),
    st.sampled_from(_HOST_CHARACTERS),
)
_hostname = st.lists(_host_component, min_size=1, max_size=3).map(".".join)
_ipv6 = st.text("0123456789abcdefABCDEF:", min_size=1, max_size=16).map(lambda s: f"[{s}]")
_host = st.builds(
    lambda host, port: host if port is None else f"{host}:{port}",
    _hostname | _ipv6,
    st.none() | st.integers(0, 99999).map(str),
)
names = st.builds(
    lambda host, components: "/".join(([host] if host else []) + components),
    st.none() | _host,
    st.lists(_component, min_size=1, max_size=4),
).filter(lambda name: len(name) <= MAX_NAME_LENGTH)
resource_types = st.text(_LOWER_ALNUM, min_size=1, max_size=12)
actions = st.text(string.ascii_lowercase, min_size=1, max_size=8) | st.sampled_from(
    ["pull", "push", "delete", "*"]
)
resource_scopes = st.builds(
    ResourceScope,
    resource_types | st.sampled_from(["repository", "registry"]),
    names,
    st.lists(actions, unique=True, max_size=4).map(tuple),
)


@fuzz(300)
@given(resource_scopes)
def test_valid_scopes_round_trip(scope: ResourceScope) -> None:
    text = str(scope)
    assert is_valid_name(scope.name)
    assert parse_scope(text) == scope
    assert str(parse_scope(text)) == text


@fuzz(100)
@given(resource_scopes, resource_types)
def test_a_resource_class_is_dropped(scope: ResourceScope, resource_class: str) -> None:
    text = f"{scope.type}({resource_class}):{scope.name}:{','.join(scope.actions)}"
    assert parse_scope(text) == scope
    assert "(" not in str(parse_scope(text))


@fuzz(100)
@given(resource_types, names, st.lists(actions | st.just(""), max_size=8))
def test_repeated_and_empty_actions_are_dropped(
    resource_type: str, name: str, listed: list[str]
) -> None:
    parsed = parse_scope(f"{resource_type}:{name}:{','.join(listed)}")
    assert parsed.actions == tuple(dict.fromkeys(a for a in listed if a))


@fuzz(100)
@given(st.lists(resource_scopes, min_size=1, max_size=6), st.data())
def test_scopes_split_across_values_and_spaces_are_merged_per_resource(
    scopes: list[ResourceScope], data: st.DataObject
) -> None:
    texts = [str(s) for s in scopes]
    values: list[str] = []
    for text in texts:
        if values and data.draw(st.booleans(), label="same value"):
            values[-1] += " " * data.draw(st.integers(1, 3), label="spaces") + text
        else:
            values.append(text)
    expected: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        merged = expected.setdefault((scope.type, scope.name), [])
        merged.extend(a for a in scope.actions if a not in merged)
    assert parse_scopes(values) == tuple(
        ResourceScope(t, n, tuple(a)) for (t, n), a in expected.items()
    )


@fuzz(200)
@given(names, st.integers(0, 255), st.sampled_from(["A", "Z", "/", "//", "-", "_", ".", ":", " "]))
def test_a_name_spoiled_in_its_last_component_is_refused(
    name: str, position: int, spoiler: str
) -> None:
    head, slash, last = name.rpartition("/")
    at = position % (len(last) + 1)
    if spoiler in {"-", "_", "."}:
        at = 0  # a separator is only wrong at an edge
    elif spoiler == "/" and 0 < at < len(last):
        at = 0  # splitting a component in two may make another valid name
    spoiled = head + slash + last[:at] + spoiler + last[at:]
    assert not is_valid_name(spoiled)
    with pytest.raises(ScopeError):
        parse_scope(f"repository:{spoiled}:pull")


_SCOPE_ALPHABET = _LOWER_ALNUM + "AZ:/.,_-*()[] \t\x00é"


@fuzz(400)
@given(
    st.lists(
        st.text(max_size=300) | st.text(_SCOPE_ALPHABET, max_size=300),
        max_size=4,
    )
)
def test_arbitrary_scope_values_raise_only_scope_error(values: list[str]) -> None:
    try:
        parsed = parse_scopes(values)
    except ScopeError as e:
        assert e.reason
        return
    assert len(parsed) <= MAX_SCOPES
    assert len({(s.type, s.name) for s in parsed}) == len(parsed)
    for scope in parsed:
        assert is_valid_name(scope.name)
        assert parse_scope(str(scope)) == scope


# --- The Authorization header -----------------------------------------------------------------

_usernames = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")),
    max_size=40,
).filter(lambda u: ":" not in u and u.isprintable())


@fuzz(300)
@given(
    _usernames,
    st.binary(max_size=200),
    st.sampled_from([b"Basic", b"basic", b"BASIC", b"bAsIc"]),
    st.sampled_from([b" ", b"  "]),
    st.sampled_from([b"", b" ", b"\t"]),
)
def test_valid_credentials_round_trip(
    username: str, password: bytes, scheme: bytes, separator: bytes, padding: bytes
) -> None:
    encoded = base64.b64encode(username.encode("utf-8") + b":" + password)
    header = padding + scheme + separator + encoded + padding
    parsed = parse_authorization(header)
    if not username and not password:
        assert parsed is None
    else:
        assert parsed == Credentials(username, password)
        assert repr(parsed).endswith("password=<hidden>)")


_schemes = st.sampled_from([b"Basic", b"basic", b"Bearer", b"Digest", b"", b"Basic\t"]) | st.binary(
    max_size=10
)
_base64ish = st.text(string.ascii_letters + string.digits + "+/=", max_size=60).map(str.encode)
_header_payloads = (
    st.binary(max_size=120).map(base64.b64encode)
    | _base64ish
    | st.binary(max_size=120)
    | st.integers(4000, 5000).map(lambda n: b"QUFB" * (n // 4))
)


@fuzz(500)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda s, sep, p: s + sep + p, _schemes, st.sampled_from([b" ", b""]), _header_payloads
    )
)
def test_arbitrary_headers_raise_only_the_parsers_errors(header: bytes) -> None:
    try:
        parsed = parse_authorization(header)
    except (MalformedCredentials, UnsupportedScheme) as e:
        assert str(e)
        return
    assert len(header) <= MAX_AUTHORIZATION_BYTES
    if parsed is not None:
        assert ":" not in parsed.username and parsed.username.isprintable()
        again = b"Basic " + base64.b64encode(parsed.username.encode() + b":" + parsed.password)
        assert parse_authorization(again) == parsed


# --- The policy loader ------------------------------------------------------------------------

_POLICY_WORDS = [
    "pass_hash",
    "repositories",
    "blacklist",
    "backlist",
    "catalog",
    "*",
    "pull",
    "push",
    "delete",
    "a/b",
    "team/*",
    "alice",
]
_SEED_NAME = st.builds(
    str.__add__, st.sampled_from(string.ascii_lowercase), st.text(_LOWER_ALNUM + "_.-", max_size=11)
)
_BCRYPT_ALPHABET = string.ascii_letters + string.digits + "./"
_bcrypt_hashes = st.builds(
    lambda variant, cost, salt, salt_end, rest: f"$2{variant}${cost:02d}${salt}{salt_end}{rest}",
    st.sampled_from("aby"),
    st.integers(4, 31),
    st.text(_BCRYPT_ALPHABET, min_size=21, max_size=21),
    st.sampled_from(".Oeu"),  # the salt's last character holds 2 bits: bcrypt refuses others
    st.text(_BCRYPT_ALPHABET, min_size=31, max_size=31),
)
_json_keys = st.sampled_from(_POLICY_WORDS) | st.text(max_size=12)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from(_POLICY_WORDS)
    | _bcrypt_hashes
    | st.text(max_size=20)
)
json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(_json_keys, children, max_size=5)
    ),
    max_leaves=25,
)

_seed_rules = st.dictionaries(
    st.just("*") | names.filter(lambda n: "[" not in n),
    st.sampled_from([[], ["pull"], ["pull", "push"], ["push", "pull"]]),
    max_size=4,
)
seed_users = st.dictionaries(
    _SEED_NAME,
    st.fixed_dictionaries({"pass_hash": _bcrypt_hashes}, optional={"repositories": _seed_rules}),
    max_size=4,
)
seed_anonymous = st.fixed_dictionaries(
    {},
    optional={
        "blacklist": st.booleans(),
        "repositories": st.lists(names.filter(lambda n: "[" not in n), max_size=4),
        "catalog": st.booleans(),
    },
)


def _containers(value: object, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        yield path
        for key, child in value.items():
            yield from _containers(child, (*path, key))
    elif isinstance(value, list):
        yield path
        for index, child in enumerate(value):
            yield from _containers(child, (*path, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def mutated(document: Any, data: st.DataObject) -> Any:
    """A copy of a valid document with a few local changes: the near misses people write."""
    document = json.loads(json.dumps(document))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = list(_containers(document))
        if not paths:
            return data.draw(json_values, label="replacement document")
        target = _at(document, data.draw(st.sampled_from(paths), label="path"))
        keys = list(target.keys()) if isinstance(target, dict) else list(range(len(target)))
        how = data.draw(st.sampled_from(["replace", "delete", "add", "rename", "edit"]))
        if how == "add" or not keys:
            value = data.draw(json_values, label="added")
            if isinstance(target, dict):
                target[data.draw(_json_keys, label="added key")] = value
            else:
                target.append(value)
            continue
        key = data.draw(st.sampled_from(keys), label="key")
        if how == "replace":
            target[key] = data.draw(json_values, label="replacement")
        elif how == "delete":
            del target[key]
        elif how == "rename" and isinstance(target, dict):
            target[data.draw(_json_keys, label="new key")] = target.pop(key)
        elif isinstance(target[key], str):
            text = target[key]
            at = data.draw(st.integers(0, len(text)), label="edit at")
            insert = data.draw(st.sampled_from(["", "A", "/", "*", ":", " ", "$", "é"]))
            target[key] = text[:at] + insert + text[at + 1 :]
    return document


def _check_located(error: PolicyError, file: str) -> None:
    assert error.file == file
    assert str(error).startswith(file)
    assert error.reason
    assert (error.line is None) == (error.column is None)


@fuzz(300)
@given(json_values | seed_users | seed_anonymous)
def test_any_json_document_is_a_policy_or_a_located_error(document: object) -> None:
    for read in (users_from_document, lambda d, f: anonymous_from_document(d, f)[0]):
        try:
            read(document, "policy.json")
        except PolicyError as e:
            _check_located(e, "policy.json")


@fuzz(300)
@given(seed_users, seed_anonymous, st.data())
def test_near_valid_documents_are_a_policy_or_a_located_error(
    users: dict[str, Any], anonymous: dict[str, Any], data: st.DataObject
) -> None:
    try:
        users_from_document(mutated(users, data), "users.json")
    except PolicyError as e:
        _check_located(e, "users.json")
    try:
        anonymous_from_document(mutated(anonymous, data), "repositories.json")
    except PolicyError as e:
        _check_located(e, "repositories.json")


@dataclass
class PolicyDir:
    path: Path

    def write(self, users: bytes, repositories: bytes) -> None:
        (self.path / "users.json").write_bytes(users)
        (self.path / "repositories.json").write_bytes(repositories)

    def load_or_locate(self) -> PolicyError | None:
        """Load the files; a failure must name a file in this directory, and a JSON syntax
        error must carry the line and column."""
        try:
            load_policy(self.path)
        except PolicyError as e:
            assert Path(e.file).parent == self.path, e
            assert str(e).startswith(e.file)
            raw = Path(e.file).read_bytes()
            try:
                json.loads(raw.decode("utf-8"))
            except json.JSONDecodeError:
                assert e.line is not None and e.column is not None, e
                assert 1 <= e.line <= raw.count(b"\n") + 1, e
                assert e.column >= 1, e
            except (UnicodeDecodeError, RecursionError):
                pass  # not a JSON syntax error: the file alone locates it
            return e
        return None


@pytest.fixture(scope="module")
def policy_dir() -> Iterator[PolicyDir]:
    with tempfile.TemporaryDirectory() as directory:
        yield PolicyDir(Path(directory))


def _near_json(data: st.DataObject, document: object) -> bytes:
    """Valid JSON text with a character dropped, doubled, replaced, or the tail cut off."""
    text = json.dumps(document, indent=data.draw(st.sampled_from([None, 2]), label="indent"))
    at = data.draw(st.integers(0, len(text)), label="at")
    how = data.draw(st.sampled_from(["drop", "double", "replace", "truncate", "as is"]))
    if how == "drop":
        text = text[:at] + text[at + 1 :]
    elif how == "double":
        text = text[:at] + text[at : at + 1] * 2 + text[at + 1 :]
    elif how == "replace":
        text = text[:at] + data.draw(st.sampled_from(list(',:{}[]"\\ \n'))) + text[at + 1 :]
    elif how == "truncate":
        text = text[:at]
    return text.encode("utf-8")


@fuzz(300)
@given(seed_users, seed_anonymous, st.data())
def test_policy_files_load_or_fail_located(
    policy_dir: PolicyDir, users: dict[str, Any], anonymous: dict[str, Any], data: st.DataObject
) -> None:
    choice = data.draw(st.sampled_from(["near text", "mutated", "arbitrary json", "bytes"]))
    if choice == "near text":
        users_raw, anonymous_raw = _near_json(data, users), _near_json(data, anonymous)
    elif choice == "mutated":
        users_raw = json.dumps(mutated(users, data)).encode()
        anonymous_raw = json.dumps(mutated(anonymous, data)).encode()
    elif choice == "arbitrary json":
        users_raw = json.dumps(data.draw(json_values)).encode()
        anonymous_raw = json.dumps(data.draw(json_values)).encode()
    else:
        users_raw = data.draw(st.binary(max_size=200), label="users bytes")
        anonymous_raw = data.draw(st.binary(max_size=200), label="repositories bytes")
    if data.draw(st.booleans(), label="keep one valid"):
        if data.draw(st.booleans(), label="which"):
            users_raw = json.dumps(users).encode()
        else:
            anonymous_raw = json.dumps(anonymous).encode()
    policy_dir.write(users_raw, anonymous_raw)
    policy_dir.load_or_locate()


@fuzz(100)
@given(seed_users, seed_anonymous)
def test_seed_format_documents_load_as_written(
    policy_dir: PolicyDir, users: dict[str, Any], anonymous: dict[str, Any]
) -> None:
    policy_dir.write(json.dumps(users).encode(), json.dumps(anonymous).encode())
    assert policy_dir.load_or_locate() is None
    policy = load_policy(policy_dir.path).policy
    assert set(policy.users) == set(users)
    wanted = ("pull", "push")
    for user, entry in users.items():
        assert policy.users[user].pass_hash == entry["pass_hash"].encode()
        for name, held in entry.get("repositories", {}).items():
            if name != "*":
                scope = ResourceScope("repository", name, wanted)
                assert policy.grant(user, scope) == tuple(a for a in wanted if a in held)
    blacklist = anonymous.get("blacklist", False)
    for name in anonymous.get("repositories", []):
        granted = policy.grant(None, ResourceScope("repository", name, wanted))
        assert granted == (() if blacklist else ("pull",))
    catalog = policy.grant(None, ResourceScope("registry", "catalog", ("*",)))
    assert catalog == (("*",) if anonymous.get("catalog", False) else ())


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_is_a_located_error(policy_dir: PolicyDir, opening: str) -> None:
    policy_dir.write((opening * 100_000).encode(), b"{}")
    error = policy_dir.load_or_locate()
    assert error is not None
    assert error.file.endswith("users.json")


# --- The web layer ----------------------------------------------------------------------------

SERVICE = "registry.test"
REALM_PATH = "/v2/token"
USERS = {
    "foo": ("foo", {"*": ["pull"]}),
    "bar": ("bar", {"*": ["pull", "push"]}),
}
OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
}


@dataclass
class Response:
    method: str
    path: str
    code: int
    headers: dict[bytes, list[bytes]]
    body: bytes


class Server:
    """A TokenAPI in memory: StubTreq, a Clock, inline bcrypt at cost 4."""

    def __init__(self, directory: Path) -> None:
        config = directory / "config"
        write_policy(config, USERS, {"repositories": ["public/hello"]})
        key_path, cert_path = write_key_pair(directory)
        clock = Clock()
        clock.advance(1_800_000_000)
        api = realm_api(
            config,
            (key_path, cert_path),
            clock=clock,
            issuer="tokend-fuzz",
            services=[SERVICE, "other.test"],
        )
        self.http = StubTreq(api.resource())
        # The daemon's Site makes FormlessRequests (tokend.tap); StubTreq builds its own Site.
        self.http._agent._serverFactory.requestFactory = FormlessRequest

    def request(
        self,
        method: str,
        target: str,
        headers: dict[bytes, list[bytes]] | None = None,
        data: bytes | None = None,
    ) -> Response:
        url = "http://tokend" + target
        sent_path = urlsplit(EncodedURL.from_text(url).to_uri().to_text()).path
        response = settled(
            self.http.request(method, url, headers=headers or {}, data=data, allow_redirects=False)
        )
        body = settled(self.http.content(response))
        raw_headers = dict(response.headers.getAllRawHeaders())
        return Response(method.upper(), sent_path, response.code, raw_headers, body)


def check_response(response: Response) -> None:
    """No 5xx, no redirect, JSON always, and the error shape the spec gives each endpoint."""
    where = (response.method, response.path, response.code, response.body[:300])
    assert response.code == 200 or 400 <= response.code < 500, where
    content_type = response.headers.get(b"Content-Type", [])
    assert len(content_type) == 1, where
    assert content_type[0].split(b";")[0].strip() == b"application/json", where
    if response.method == "HEAD":
        assert response.body == b"", where
        return
    body = json.loads(response.body)
    assert isinstance(body, dict), where
    if response.code == 200:
        if response.path == "/healthz":
            assert body["status"] == "ok", where
        else:
            assert isinstance(body["access_token"], str) and body["access_token"], where
            assert isinstance(body["expires_in"], int), where
        return
    if response.code == 401:
        assert response.headers.get(b"WWW-Authenticate", [b""])[0].startswith(b"Basic "), where
    if response.method == "POST" and response.path == REALM_PATH:
        assert body["error"] in OAUTH_ERRORS, where
        assert isinstance(body["error_description"], str) and body["error_description"], where
    else:
        errors = body["errors"]
        assert isinstance(errors, list) and errors, where
        for error in errors:
            assert isinstance(error["code"], str) and error["code"], where
            assert isinstance(error["message"], str) and error["message"], where


def check_fuzzed(response: Response) -> None:
    """check_response, counting statuses for ``--hypothesis-show-statistics``."""
    event(f"status {response.code}")
    check_response(response)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    return Server(tmp_path_factory.mktemp("fuzz-web"))


_PARAM_NAMES = ["service", "scope", "account", "client_id", "offline_token", "grant_type"]
_known_values = st.sampled_from(
    [
        SERVICE,
        "other.test",
        "repository:public/hello:pull",
        "repository:a/b:pull,push repository:c:*",
        "registry:catalog:*",
        "repository(plugin):x:pull",
        "foo",
        "bar",
        "true",
        "",
    ]
)
_raw_values = (
    _known_values
    | st.text(max_size=40)
    | st.text(_SCOPE_ALPHABET, max_size=60)
    | st.binary(max_size=40)
    | st.integers(1000, 3000).map(lambda n: "x" * n)
    | st.integers(1, 3)
    .flatmap(lambda n: st.lists(resource_scopes.map(str), max_size=n))
    .map(" ".join)
    | st.integers(MAX_SCOPES - 2, MAX_SCOPES + 2).map(
        lambda n: " ".join(f"repository:r{i}:pull" for i in range(n))
    )
)


def _encode(value: str | bytes, raw: bool) -> str:
    """Percent-encoded, or (sometimes) raw characters where the URL keeps them."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if raw and data.isascii():
        return quote_from_bytes(data, safe=":/,()*[]@!$'; ")
    return quote_from_bytes(data, safe="")


_query_pairs = st.lists(
    st.tuples(
        st.sampled_from(_PARAM_NAMES) | st.text(max_size=10) | st.binary(max_size=6),
        _raw_values,
        st.booleans(),
    ),
    max_size=8,
)
_query_junk = st.sampled_from(["", "&", "&&", "=", "==x", "%", "%zz", "%f", ";", "+", "%00"])


def _query(pairs: list[tuple[str | bytes, str | bytes, bool]], junk: str, service: bool) -> str:
    parts = [f"{_encode(k, raw)}={_encode(v, raw)}" for k, v, raw in pairs]
    query = "&".join([f"service={SERVICE}"] * service + parts) + junk
    return query[:12000]  # Twisted drops a request line over 16 KiB; nginx answers 414 first


@fuzz(600)
@given(_query_pairs, _query_junk, st.booleans(), st.sampled_from(["GET", "HEAD"]))
def test_web_any_query_string_gets_json(
    server: Server,
    pairs: list[tuple[str | bytes, str | bytes, bool]],
    junk: str,
    service: bool,
    method: str,
) -> None:
    check_fuzzed(server.request(method, f"{REALM_PATH}?{_query(pairs, junk, service)}"))


def _basic(user: str | bytes, password: str | bytes) -> bytes:
    raw_user = user.encode("utf-8") if isinstance(user, str) else user
    raw_password = password.encode("utf-8") if isinstance(password, str) else password
    return base64.b64encode(raw_user + b":" + raw_password)


def _header_safe(value: bytes) -> bytes:
    """NUL, CR and LF in a header value are refused by twisted.web's HTTP parser itself
    (RFC 9110 section 5.5) with a bare 400 before any resource runs, as nginx does in front."""
    return value.translate(None, b"\x00\r\n")


_authorization_values = (
    st.sampled_from([b"Basic " + _basic("foo", "foo"), b"basic  " + _basic("bar", "bar")])
    | st.builds(
        lambda scheme, sep, payload: scheme + sep + payload,
        st.sampled_from([b"Basic", b"basic", b"BASIC", b"Bearer", b"Digest", b"Negotiate", b""])
        | st.binary(max_size=8),
        st.sampled_from([b" ", b"  ", b"", b"\t"]),
        st.builds(
            _basic,
            st.sampled_from(["foo", "bar", "ghost", ""])
            | st.text(max_size=20)
            | st.binary(max_size=20),
            st.sampled_from(["foo", "bar", "wrong", ""])
            | st.text(max_size=30)
            | st.binary(max_size=90),
        )
        | _header_payloads,
    )
    | st.binary(max_size=100)
    | st.text(max_size=40).map(lambda t: t.encode("utf-8"))
)


_proxy_headers = st.dictionaries(
    st.sampled_from([b"X-Forwarded-For", b"X-Real-IP"]),
    st.lists(
        st.sampled_from([b"203.0.113.9, 10.0.0.1", b"", b",", b"::1"])
        | st.binary(max_size=80).map(_header_safe),
        min_size=1,
        max_size=2,
    ),
    max_size=2,
)


@fuzz(500)
@given(
    _authorization_values.map(_header_safe),
    st.sampled_from(
        [f"service={SERVICE}", f"service={SERVICE}&scope=repository:a/b:pull,push", ""]
    ),
    st.sampled_from(["", "&account=foo", "&account=bar", "&account=%ff"]),
    _proxy_headers,
)
def test_web_any_authorization_header_gets_json(
    server: Server,
    authorization: bytes,
    query: str,
    account: str,
    proxy_headers: dict[bytes, list[bytes]],
) -> None:
    headers = {b"Authorization": [authorization], **proxy_headers}
    check_fuzzed(server.request("GET", f"{REALM_PATH}?{query}{account}", headers=headers))


_path_segments = st.lists(
    st.sampled_from(["v2", "token", "healthz", "", ".", "..", "%2F", "%ff", "%00", "é"])
    | st.binary(max_size=6).map(lambda b: quote_from_bytes(b, safe=""))
    | st.text(max_size=8).map(lambda t: quote(t, safe="")),
    max_size=5,
).map(lambda segments: "/" + "/".join(segments))
_paths = st.sampled_from([REALM_PATH, "/healthz", "/", "/v2/token/", "/v2/"]) | _path_segments

_methods = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]
) | st.from_regex(r"[A-Z]{1,10}", fullmatch=True)


@fuzz(400)
@given(
    _methods,
    _paths,
    _query_pairs,
)
def test_web_any_method_and_path_gets_json(
    server: Server, method: str, path: str, pairs: list[tuple[str | bytes, str | bytes, bool]]
) -> None:
    query = _query(pairs, "", service=True)
    data = b"grant_type=password" if method in {"PUT", "PATCH", "DELETE"} else None
    check_fuzzed(server.request(method, f"{path}?{query}" if query else path, data=data))


_FORM_NAMES = [
    "grant_type",
    "username",
    "password",
    "service",
    "client_id",
    "scope",
    "access_type",
    "refresh_token",
]
_form_values = (
    st.sampled_from(["password", "refresh_token", "foo", "bar", "wrong", SERVICE, "docker"])
    | _raw_values
)
_forms = st.lists(
    st.tuples(st.sampled_from(_FORM_NAMES) | st.text(max_size=10), _form_values),
    max_size=10,
)
_valid_grant = st.builds(
    lambda login, rest: [*login, *rest.items()],
    st.sampled_from(
        [("foo", "foo"), ("bar", "bar"), ("ghost", "foo"), ("foo", "wrong"), ("bar", "x" * 80)]
    ).map(lambda login: [("username", login[0]), ("password", login[1])]),
    st.fixed_dictionaries(
        {
            "grant_type": st.just("password"),
            "service": st.sampled_from([SERVICE, "other.test"]),
            "client_id": st.sampled_from(["containerd-client", "docker"]),
        },
        optional={
            "scope": st.one_of(_known_values, _known_values, _raw_values),
            "access_type": st.just("offline"),
        },
    ),
)
_form_types = st.sampled_from(
    [
        b"application/x-www-form-urlencoded",
        b"application/x-www-form-urlencoded; charset=utf-8",
        b"Application/X-WWW-Form-Urlencoded",
    ]
)
_content_types = st.sampled_from(
    [
        b"application/json",
        b"text/plain",
        b"",
        b";",
    ]
) | st.text(
    # treq refuses to send what str.splitlines() breaks at (\v, \f, \x1c-\x1e, \x85); the
    # server never sees it, so only characters a header line can carry are drawn.
    st.characters(codec="latin-1", exclude_characters="\r\n\v\f\x1c\x1d\x1e\x85\x00"),
    max_size=30,
).map(lambda t: t.encode("latin-1"))


def _form_body(form: list[tuple[str, str | bytes]]) -> bytes:
    return urlencode([(k, v.encode("utf-8") if isinstance(v, str) else v) for k, v in form]).encode(
        "ascii"
    )


@fuzz(600)
@given(
    _forms | _valid_grant,
    st.one_of(_form_types, _form_types, st.none(), _content_types),
    st.sampled_from(["form"] * 3 + ["bytes", "huge"]),
    st.sampled_from(["", "", f"?service={SERVICE}", "?grant_type=password&grant_type=password"]),
    st.data(),
)
def test_web_any_post_form_gets_json(
    server: Server,
    form: list[tuple[str, str | bytes]],
    content_type: bytes | None,
    body_kind: str,
    query: str,
    data: st.DataObject,
) -> None:
    if body_kind == "form":
        body = _form_body(form)
    elif body_kind == "bytes":
        body = data.draw(st.binary(max_size=200), label="body")
    else:
        body = b"a=" + b"x" * data.draw(st.integers(16000, 20000), label="size")
    headers = {b"Content-Type": [content_type]} if content_type is not None else {}
    check_fuzzed(server.request("POST", REALM_PATH + query, headers=headers, data=body))


def test_the_fuzzed_server_does_issue_tokens(server: Server) -> None:
    """The properties above are not vacuous: valid requests through the same path succeed."""
    get = server.request(
        "GET",
        f"{REALM_PATH}?service={SERVICE}&scope=repository:a/b:pull,push",
        headers={b"Authorization": [b"Basic " + _basic("bar", "bar")]},
    )
    check_response(get)
    assert get.code == 200
    form = {"grant_type": "password", "username": "foo", "password": "foo"}
    form |= {"service": SERVICE, "client_id": "docker", "scope": "repository:x:pull"}
    post = server.request(
        "POST",
        REALM_PATH,
        headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
        data=urlencode(form).encode(),
    )
    check_response(post)
    assert post.code == 200
    assert json.loads(post.body)["scope"] == "repository:x:pull"
    wrong = server.request(
        "GET",
        f"{REALM_PATH}?service={SERVICE}",
        headers={b"Authorization": [b"Basic " + _basic("foo", "nope")]},
    )
    check_response(wrong)
    assert wrong.code == 401


def test_malformed_multipart_post_gets_json(server: Server) -> None:
    response = server.request(
        "POST",
        REALM_PATH,
        headers={b"Content-Type": [b"multipart/form-data; boundary=x"]},
        data=b"grant_type=password",
    )
    check_response(response)


@pytest.mark.parametrize("path", ["/v2/token%0A", "/healthz%0A", "/a%0Ab"])
def test_encoded_newline_in_path_gets_json(server: Server, path: str) -> None:
    check_response(server.request("GET", path))
