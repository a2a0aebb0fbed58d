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
CREDENTIAL_FIELDS = (b"username", b"password", b"refresh_token")
"""Never read from a POST's query string: URLs end up in proxies' access logs."""


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

    @property
    def grant(self) -> str:
        if self.refresh_token is not None:
            return "refresh_token"
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
    client_id = _single(args, "client_id")
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
    else:
        raise UnsupportedGrant(
            f"grant_type {grant_type!r} is not supported; use password or refresh_token"
        )
    if not client_id:
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
    )


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
        limit = MAX_TOKEN_CHARS if name == "refresh_token" else MAX_VALUE_CHARS
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
