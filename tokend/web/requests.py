"""What a token request asks for, read from a GET's query or a POST's urlencoded form (with
the size limits on both) into one :class:`TokenRequest`; malformed input is a RequestError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.web.http import parse_qs
from twisted.web.server import Request

from tokend.client_address import ClientAddress
from tokend.login.refresh_tokens import MAX_TOKEN_CHARS
from tokend.scope import ResourceScope, ScopeError, parse_scopes
from tokend.web.basic_auth import (
    Credentials,
    MalformedCredentials,
    UnsupportedScheme,
    parse_authorization,
)
from tokend.web.errors import AuthenticationFailed, RequestError, UnsupportedGrant

MAX_QUERY_BYTES = 8192
MAX_VALUE_CHARS = 1024
MAX_BODY_BYTES = 16384
CREDENTIAL_FIELDS = (b"username", b"password", b"refresh_token", b"subject_token")
"""Never read from a POST's query string: URLs end up in proxies' access logs."""
LONG_FIELDS = {
    "refresh_token": MAX_TOKEN_CHARS,
    "password": MAX_BODY_BYTES,
    "subject_token": MAX_BODY_BYTES,
}
"""Values longer than :data:`MAX_VALUE_CHARS`: a refresh token, and a platform's JWT (the
token-exchange grant's ``subject_token``, or the password of containerd's password grant
with a trust's name), bounded only by the form."""
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a grant name
"""RFC 8693's grant: a CI job's or a pod's platform JWT exchanged for an access token."""
SUBJECT_TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a type name
"""The ``issued_token_type`` of a token-exchange answer."""


@dataclass(slots=True)
class RequestState:
    """What the realm learned about one request as it went, for the answer's log line and
    metric: kept in one record per request (see :meth:`tokend.web.realm.TokenAPI.state`),
    never as attributes on the request."""

    started: float | None = None
    """When the realm began on it (the latency metric); None when it never reached the realm."""
    client: ClientAddress | None = None
    """Worked out once: the error handler asks again."""
    grant: str | None = None
    """Set when a POST named the refresh_token grant, before anything else was read."""
    account: str | None = None
    """Who the request said it was, as far as it was read."""
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What a client asked for, whichever flow it used."""

    flow: str
    service: str
    scopes: tuple[ResourceScope, ...]
    credentials: Credentials | None
    client_id: str | None
    offline: bool = False
    """A refresh token is asked for too (``offline_token=true``, ``access_type=offline``)."""
    refresh_token: str | None = None
    """The refresh_token grant: who is asking is this token's account."""
    subject_token: str | None = None
    """The token-exchange grant: a platform's JWT, the trust chosen by its ``iss`` and
    ``aud``."""

    @property
    def secret(self) -> str:
        """What proves who asks, for its fingerprint in the log (a federated login's platform
        JWT: the subject token, or the password sent with the trust's name)."""
        if self.subject_token is not None:
            return self.subject_token
        if self.refresh_token is not None:
            return self.refresh_token
        return (
            "" if self.credentials is None else self.credentials.password.decode("ascii", "replace")
        )

    @property
    def grant(self) -> str:
        if self.refresh_token is not None:
            return "refresh_token"
        if self.subject_token is not None:
            return "token_exchange"
        return "anonymous" if self.credentials is None else "password"


def read_get(request: Request, state: RequestState, services: tuple[str, ...]) -> TokenRequest:
    if len(request.uri) > MAX_QUERY_BYTES:
        raise RequestError(f"query longer than {MAX_QUERY_BYTES} bytes")
    args = _decoded_args(request.args)
    state.account, state.client_id = _first(args, "account"), _first(args, "client_id")
    try:
        credentials = parse_authorization(request.getHeader(b"authorization"))
    except UnsupportedScheme as e:
        raise AuthenticationFailed(str(e)) from None
    except MalformedCredentials as e:
        raise RequestError(str(e)) from None
    if credentials is not None:
        state.account = credentials.username
    account = _single(args, "account")
    if credentials is not None and account is not None and account != credentials.username:
        raise RequestError("account does not match the authenticated user")
    return TokenRequest(
        flow="GET",
        service=_service(services, _single(args, "service")),
        scopes=_scopes(args.get("scope", [])),
        credentials=credentials,
        client_id=_single(args, "client_id"),
        offline=(_single(args, "offline_token") or "").lower() == "true",
    )


def read_post(request: Request, state: RequestState, services: tuple[str, ...]) -> TokenRequest:
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
    if content_type.lower() != b"application/x-www-form-urlencoded":
        raise RequestError("expected an application/x-www-form-urlencoded form")
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise RequestError(f"form longer than {MAX_BODY_BYTES} bytes")
    args = _decoded_args(_form_arguments(request))
    state.account, state.client_id = _first(args, "username"), _first(args, "client_id")
    grant_type = _single(args, "grant_type")
    if grant_type == "refresh_token":
        state.grant = grant_type
    elif grant_type == TOKEN_EXCHANGE:
        state.grant = "token_exchange"
    client_id = _single(args, "client_id")
    subject_token = None
    if grant_type == "password":
        username = _single(args, "username")
        password = _single(args, "password")
        if not username or password is None:
            raise RequestError("the password grant needs username and password")
        credentials: Credentials | None = Credentials(username, password.encode("utf-8"))
        refresh_token = None
    elif grant_type == "refresh_token":
        refresh_token = _single(args, "refresh_token")
        if not refresh_token:
            raise RequestError("the refresh_token grant needs refresh_token")
        credentials = None
    elif grant_type == TOKEN_EXCHANGE:
        subject_token = _subject_token(args)
        credentials = refresh_token = None
    else:
        raise UnsupportedGrant(
            f"grant_type {grant_type!r} is not supported; use password, refresh_token or "
            f"{TOKEN_EXCHANGE}"
        )
    if not client_id and subject_token is None:  # RFC 8693 makes the client optional
        raise RequestError("client_id is required")
    return TokenRequest(
        flow="POST",
        service=_service(services, _single(args, "service")),
        # Repeated fields as well as one space-separated value: containers/image repeats
        # scope for a cross-repository mount.
        scopes=_scopes(args.get("scope", [])),
        credentials=credentials,
        client_id=client_id,
        offline=_single(args, "access_type") == "offline",
        refresh_token=refresh_token,
        subject_token=subject_token,
    )


def _subject_token(args: dict[str, list[str]]) -> str:
    """The JWT of a token-exchange grant: of a type this realm reads, with no actor (this
    realm issues no delegated tokens)."""
    token = _single(args, "subject_token")
    kind = _single(args, "subject_token_type")
    if not token or kind is None:
        raise RequestError("the token-exchange grant needs subject_token and subject_token_type")
    if kind not in SUBJECT_TOKEN_TYPES:
        accepted = " or ".join(SUBJECT_TOKEN_TYPES)
        raise RequestError(f"subject_token_type {kind[:80]!r} is not accepted; use {accepted}")
    if "actor_token" in args:
        raise RequestError("actor_token is not accepted: this realm issues no delegated tokens")
    requested = _single(args, "requested_token_type")
    if requested is not None and requested != ACCESS_TOKEN_TYPE:
        raise RequestError(f"requested_token_type must be {ACCESS_TOKEN_TYPE} when given")
    return token


def _service(services: tuple[str, ...], service: str | None) -> str:
    if service is None and len(services) == 1:
        return services[0]
    if service not in services:
        accepted = ", ".join(services)
        if service is None:
            raise RequestError(f"the service parameter is required: one of {accepted}")
        raise RequestError(f"unknown service {service!r}; accepted: {accepted}")
    return service


def _decoded_args(raw: dict[bytes, list[bytes]] | None) -> dict[str, list[str]]:
    args: dict[str, list[str]] = {}
    for key, values in (raw or {}).items():
        try:
            name = key.decode("utf-8")
            decoded = [value.decode("utf-8") for value in values]
        except UnicodeDecodeError:
            raise RequestError("parameters must be UTF-8") from None
        limit = LONG_FIELDS.get(name, MAX_VALUE_CHARS)
        if any(len(value) > limit for value in decoded):
            raise RequestError(f"parameter {name[:40]!r} longer than {limit}")
        args[name] = decoded
    return args


def _form_arguments(request: Request) -> dict[bytes, list[bytes]]:
    """The query's and the urlencoded body's parameters, read here rather than by Twisted.

    With :class:`FormlessRequest` Twisted leaves the body alone; with a plain Request it has
    already parsed it into ``request.args``, which must not be counted twice.
    """
    _, _, query = request.uri.partition(b"?")
    arguments: dict[bytes, list[bytes]] = parse_qs(query, 1)
    if any(field in arguments for field in CREDENTIAL_FIELDS):
        raise RequestError(
            "credentials belong in the form body, never in the URL: "
            "change the password if this one was real"
        )
    content = request.content
    body = b""
    if content is not None:
        content.seek(0)
        body = content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"form longer than {MAX_BODY_BYTES} bytes")
    for key, values in parse_qs(body, 1).items():
        arguments.setdefault(key, []).extend(values)
    return arguments


class FormlessRequest(Request):
    """A Request that leaves POST bodies to the realm.

    Twisted parses form bodies itself and answers a malformed multipart body with a bare 400
    of its own, before any resource runs; the realm reads only urlencoded forms and answers
    everything else with the JSON error.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)


def _first(args: dict[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    return values[0] if values else None


def _single(args: dict[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise RequestError(f"parameter {name!r} given more than once")
    return values[0]


def _scopes(values: list[str]) -> tuple[ResourceScope, ...]:
    try:
        return parse_scopes(values)
    except ScopeError as e:
        raise RequestError(str(e)) from None
