"""The HTTP edge: the realm (GET and OAuth2 POST) and /healthz, as a Klein app.

Thin on purpose: parsing, policy, signing, throttling and the credential cache live in pure
modules; this maps them to HTTP and turns every domain error into the spec's JSON error body
(never a 500 for bad input).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import werkzeug.exceptions
from klein import Klein
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.http import parse_qs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tokend.client_address import ClientAddress, TrustedProxies
from tokend.login.assembly import logins_for
from tokend.login.credential_cache import CredentialCache
from tokend.login.identity import (
    BackendUnavailable,
    Login,
    LoginError,
    LoginOverloaded,
    LoginRefused,
    LoginThrottled,
)
from tokend.login.in_flight import InFlight
from tokend.login.logins import AccountDirectory, ShareExceeded
from tokend.login.passwords import PasswordChecker
from tokend.login.refresh_tokens import MAX_TOKEN_CHARS, RefreshTokens, fingerprint
from tokend.login.throttle import LoginThrottle
from tokend.logs.escaping import printable
from tokend.logs.namespaces import NamedLogger
from tokend.metrics.instruments import NO_METRICS, RequestMetrics
from tokend.policy.holder import PolicyHolder
from tokend.scope import ResourceScope, ScopeError, parse_scopes
from tokend.signing.tokens import IssuedToken, TokenIssuer
from tokend.web.basic_auth import (
    Credentials,
    MalformedCredentials,
    UnsupportedScheme,
    parse_authorization,
)
from tokend.web.health import StrictError, status_word, strict_asked

MAX_QUERY_BYTES = 8192
MAX_VALUE_CHARS = 1024
MAX_BODY_BYTES = 16384
OVERLOAD_RETRY_AFTER = 1
"""Seconds a client is asked to wait when the bcrypt queue (or its share) is full: it drains
quickly."""
REASONS = {429: b"Too Many Requests"}
"""Status lines Twisted's table lacks (it would write "Unknown Status")."""
CREDENTIAL_FIELDS = (b"username", b"password", b"refresh_token")
"""Never read from a POST's query string: URLs end up in proxies' access logs."""


class Clock(Protocol):
    def seconds(self) -> float: ...


class RequestError(Exception):
    """Answered with ``status`` and the registry error body; ``oauth`` picks RFC 6749's.

    ``outcome`` names the refusal in the log; ``account`` is logged when known, and ``token``
    (a refresh token's fingerprint, never the token) when one was refused.
    """

    status = 400
    code = "BAD_REQUEST"
    oauth_error = "invalid_request"
    outcome = "refused"

    def __init__(
        self,
        message: str,
        *,
        account: str | None = None,
        retry_after: int | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.account = account
        self.retry_after = retry_after
        self.token = token


class AuthenticationFailed(RequestError):
    status = 401
    code = "UNAUTHORIZED"
    oauth_error = "invalid_grant"


class MethodNotAllowed(RequestError):
    status = 405
    code = "UNSUPPORTED"


class NotFound(RequestError):
    status = 404
    code = "NOT_FOUND"


class UnsupportedGrant(RequestError):
    oauth_error = "unsupported_grant_type"


class InvalidGrant(RequestError):
    """RFC 6749 §5.2: the refresh token is invalid, expired or revoked."""

    oauth_error = "invalid_grant"


class TooManyRequests(RequestError):
    """Too many failed logins for the account or from the address (no bcrypt until later), or
    too many of the client's logins being checked at once."""

    status = 429
    code = "TOOMANYREQUESTS"
    oauth_error = "temporarily_unavailable"
    outcome = "throttled"


class ServiceOverloaded(RequestError):
    """The bcrypt queue is full: refusing now beats answering after the client gave up."""

    status = 503
    code = "UNAVAILABLE"
    oauth_error = "temporarily_unavailable"
    outcome = "overloaded"


class ServiceUnavailable(RequestError):
    """A backend that must answer (the directory) cannot now: a 401 would send the user
    looking for a password mistake they did not make."""

    status = 503
    code = "UNAVAILABLE"
    oauth_error = "temporarily_unavailable"
    outcome = "unavailable"


def http_error(error: LoginError, *, refresh: bool) -> RequestError:
    """The HTTP answer to a login that ended without an identity."""
    if isinstance(error, LoginThrottled):
        return TooManyRequests(error.message, account=error.account, retry_after=error.retry_after)
    if isinstance(error, ShareExceeded):  # the client's own doing: a 429 pages nobody
        return TooManyRequests(
            error.message, account=error.account, retry_after=OVERLOAD_RETRY_AFTER
        )
    if isinstance(error, LoginOverloaded):
        return ServiceOverloaded(
            error.message, account=error.account, retry_after=OVERLOAD_RETRY_AFTER
        )
    if isinstance(error, BackendUnavailable):
        return ServiceUnavailable(
            error.message, account=error.account, retry_after=error.retry_after
        )
    token = error.token if isinstance(error, LoginRefused) else None
    if refresh:
        return InvalidGrant(error.message, account=error.account, token=token)
    return AuthenticationFailed(error.message, account=error.account, token=token)


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


class TokenAPI:
    app = Klein()
    log = NamedLogger("tokend.web.TokenAPI")

    def __init__(
        self,
        *,
        policy: PolicyHolder,
        passwords: PasswordChecker,
        tokens: TokenIssuer,
        services: Sequence[str],
        clock: Clock,
        realm_path: str = "/v2/token",
        throttle: LoginThrottle | None = None,
        credential_cache: CredentialCache | None = None,
        trusted_proxies: TrustedProxies | None = None,
        in_flight: InFlight | None = None,
        refresh_tokens: RefreshTokens | None = None,
        directory: AccountDirectory | None = None,
        metrics: RequestMetrics = NO_METRICS,
    ) -> None:
        """Without ``throttle``, ``credential_cache`` or ``in_flight`` there is no throttling,
        caching or per-address share of the bcrypt queue; without ``directory``, names not
        in users.json are unknown; without ``metrics``, nothing is counted."""
        self._policy = policy
        self._metrics = metrics
        self._tokens = tokens
        self._services = tuple(services)
        self._clock = clock
        self._realm_path = realm_path.encode("utf-8")
        self._challenge = f'Basic realm="{tokens.issuer}"'.encode()
        self._proxies = TrustedProxies() if trusted_proxies is None else trusted_proxies
        self._logins = logins_for(
            policy=policy,
            passwords=passwords,
            clock=clock.seconds,
            throttle=throttle,
            credential_cache=credential_cache,
            in_flight=in_flight,
            directory=directory,
            refresh_tokens=refresh_tokens,
            metrics=metrics,
        )

    def resource(self) -> Resource:
        return _Edge(self.app.resource(), self._realm_path, self.serve_realm)

    def serve_realm(self, request: Request) -> bytes | int:
        """The realm route, dispatched without Klein's per-request URL mapping (a third of an
        anonymous request's CPU: werkzeug binds a map adapter, matches, and Klein chains three
        Deferreds) but with Klein's semantics: refusals through :meth:`request_error`, a
        Deferred answer written when it fires and cancelled when the client goes away, anything
        unexpected a logged 500. Every other path goes through Klein.

        A client that goes away stops only the waiting for its answer (the login check runs
        on, see :class:`tokend.login.logins.Logins`); that is logged at info, never as an
        error: it is the client's doing."""
        try:
            result = self.realm(request)
        except RequestError:
            body: bytes = self.request_error(request, Failure())
            return body
        except Exception:
            request.processingFailed(Failure())  # which logs it
            return NOT_DONE_YET
        if isinstance(result, bytes):
            return result
        gone: list[bool] = []

        def left(reason: Failure) -> None:
            gone.append(True)
            result.cancel()

        request.notifyFinish().addErrback(left)

        def answer(body: bytes) -> None:
            if not gone:
                request.setHeader(b"Content-Length", b"%d" % len(body))
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if gone and failure.check(CancelledError):
                self._left_early(request)
            elif gone:
                self.log.failure("error after the client left", failure)
            elif failure.check(RequestError):
                answer(self.request_error(request, failure))
            else:
                request.processingFailed(failure)  # which logs it

        result.addCallbacks(answer, failed)
        return NOT_DONE_YET

    def _left_early(self, request: Request) -> None:
        who = getattr(request, "_tokend_who", _Who())
        self.log.info(
            "{method} {path} from {client}: the client left before its answer "
            "(account '{account}', client_id {client_id})",
            method=printable(request.method.decode("latin-1")),
            path=printable(request.path.decode("utf-8", "replace")[:200]),
            client=self._client_address(request),
            account=printable(who.account or ""),
            client_id=printable(who.client_id),
        )

    def _client_address(self, request: Request) -> str:
        """The proxy's view of the client when the peer is a trusted proxy, else the peer.

        Worked out once per request: the error handler asks again.
        """
        known = getattr(request, "_tokend_client", None)
        if isinstance(known, ClientAddress):
            return known.address
        peer = request.getClientAddress()
        host = None if isinstance(peer, UNIXAddress) else str(getattr(peer, "host", "unknown"))
        lines = request.requestHeaders.getRawHeaders(self._proxies.header.encode("ascii"), [])
        client = self._proxies.client(host, [line.decode("latin-1") for line in lines])
        request._tokend_client = client  # type: ignore[attr-defined]
        if client.ignored is not None:
            self.log.warn(
                "ignored the client address header from {peer}: {reason}",
                peer=client.address,
                reason=client.ignored,
            )
        return client.address

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Request) -> bytes:
        """200 while a good policy serves (liveness), even when the files on disk are broken;
        ``?strict=1`` answers 503 then, for probes that must notice a bad edit. Only ``ok`` or
        ``degraded``: the details (pid, generation, the error) are the metrics listener's."""
        try:
            strict = strict_asked(request.args)
        except StrictError as e:
            raise RequestError(str(e)) from None
        status = self._policy.status()
        return _json(
            request,
            503 if strict and not status.files_valid else 200,
            {"status": status_word(status)},
        )

    @app.route("/", branch=True)
    def realm(self, request: Request) -> bytes | Deferred[bytes]:
        """Anonymous requests are answered synchronously: no coroutine, no Deferred chain.

        Only a password check waits (on the bcrypt pool), and only it goes through a Deferred.
        Every answer is counted once, by grant and outcome (in ``_issue`` or ``request_error``).
        """
        request._tokend_started = self._metrics.now()  # type: ignore[attr-defined]
        if request.path != self._realm_path:
            raise NotFound(f"no such path; the token endpoint is {self._realm_path.decode()}")
        if request.method in (b"GET", b"HEAD"):
            asked = self._read_get(request)
        elif request.method == b"POST":
            asked = self._read_post(request)
        else:
            request.setHeader(b"Allow", b"GET, HEAD, POST")
            raise MethodNotAllowed("the token endpoint answers GET and POST")
        client = self._client_address(request)
        if asked.credentials is None and asked.refresh_token is None:
            return self._issue(request, asked, client, None)
        refresh = asked.refresh_token is not None
        try:
            if asked.refresh_token is not None:
                if self._logins.refresh_tokens is None:
                    raise UnsupportedGrant("this realm issues no refresh tokens; use password")
                login = self._logins.refresh(asked.refresh_token, client)
            else:
                assert asked.credentials is not None
                credentials = asked.credentials
                login = self._logins.password(credentials.username, credentials.password, client)
        except LoginError as e:
            if isinstance(e, LoginThrottled):
                self._metrics.throttled(e.by)
            raise http_error(e, refresh=refresh) from None
        if isinstance(login, Login):
            return self._issue(request, asked, client, login)

        def refused(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, LoginThrottled):
                self._metrics.throttled(error.by)  # refused after asking Redis first
            if isinstance(error, LoginError):
                return Failure(http_error(error, refresh=refresh))
            return failure

        return login.addCallbacks(lambda login: self._issue(request, asked, client, login), refused)

    def _read_get(self, request: Request) -> TokenRequest:
        if len(request.uri) > MAX_QUERY_BYTES:
            raise RequestError(f"query longer than {MAX_QUERY_BYTES} bytes")
        args = _decoded_args(request.args)
        _note(request, _Who(_first(args, "account"), _first(args, "client_id")))
        try:
            credentials = parse_authorization(request.getHeader(b"authorization"))
        except UnsupportedScheme as e:
            raise AuthenticationFailed(str(e)) from None
        except MalformedCredentials as e:
            raise RequestError(str(e)) from None
        if credentials is not None:
            _note(request, _Who(credentials.username, _first(args, "client_id")))
        account = _single(args, "account")
        if credentials is not None and account is not None and account != credentials.username:
            raise RequestError("account does not match the authenticated user")
        return TokenRequest(
            flow="GET",
            service=self._service(_single(args, "service")),
            scopes=_scopes(args.get("scope", [])),
            credentials=credentials,
            client_id=_single(args, "client_id"),
            offline=(_single(args, "offline_token") or "").lower() == "true",
        )

    def _read_post(self, request: Request) -> TokenRequest:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/x-www-form-urlencoded":
            raise RequestError("expected an application/x-www-form-urlencoded form")
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise RequestError(f"form longer than {MAX_BODY_BYTES} bytes")
        args = _decoded_args(_form_arguments(request))
        _note(request, _Who(_first(args, "username"), _first(args, "client_id")))
        grant_type = _single(args, "grant_type")
        if grant_type == "refresh_token":
            request._tokend_grant = grant_type  # type: ignore[attr-defined]
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
            service=self._service(_single(args, "service")),
            # Repeated fields as well as one space-separated value: containers/image repeats
            # scope for a cross-repository mount.
            scopes=_scopes(args.get("scope", [])),
            credentials=credentials,
            client_id=client_id,
            offline=_single(args, "access_type") == "offline",
            refresh_token=refresh_token,
        )

    def _service(self, service: str | None) -> str:
        if service is None and len(self._services) == 1:
            return self._services[0]
        if service not in self._services:
            accepted = ", ".join(self._services)
            if service is None:
                raise RequestError(f"the service parameter is required: one of {accepted}")
            raise RequestError(f"unknown service {service!r}; accepted: {accepted}")
        return service

    def _issue(
        self,
        request: Request,
        asked: TokenRequest,
        client: str,
        login: Login | None,
    ) -> bytes:
        """The token for ``login`` (None: anonymous): asked ∩ allowed by its policy."""
        policy = self._policy.current if login is None else login.policy
        account = None if login is None else login.identity.account
        member = None if login is None else login.identity.member(policy)
        granted = tuple(
            ResourceScope(scope.type, scope.name, policy.grant(account, scope, member))
            for scope in asked.scopes
        )
        now = self._clock.seconds()
        issued = self._tokens.issue(account or "", asked.service, granted, now)
        refresh_token = asked.refresh_token
        if refresh_token is None and asked.offline and login is not None:
            refresh_token = self._logins.refresh_token_for(login, now)
        text = (
            "issued {flow} token to '{account}' from {client} (client_id {client_id}) by "
            "{grant}: asked {asked}, granted {granted}"
        )
        if refresh_token is not None:
            text += "; refresh token {refresh_token}"
        self.log.info(
            text,
            flow=asked.flow,
            grant=asked.grant,
            account=printable(account or ""),
            client=client,
            client_id=printable(asked.client_id),
            asked=[str(s) for s in asked.scopes],
            granted=[str(s) for s in granted if s.actions],
            refresh_token=fingerprint(refresh_token) if refresh_token is not None else None,
            outcome="issued",
        )
        request.setHeader(b"Cache-Control", b"no-store")
        started: float = request._tokend_started  # type: ignore[attr-defined]
        self._metrics.answered(asked.grant, "issued", started)
        return _json(request, 200, _token_body(asked.flow, issued, granted, refresh_token))

    @app.handle_errors(werkzeug.exceptions.HTTPException)
    def routing_error(self, request: Request, failure: Failure) -> bytes:
        """What Klein's router refuses (a path no route matches, e.g. one with an encoded
        newline, or a method /healthz does not take) gets the same JSON body as the rest."""
        error = failure.value
        mapped: RequestError
        if isinstance(error, werkzeug.exceptions.MethodNotAllowed):
            request.setHeader(b"Allow", b"GET, HEAD")
            mapped = MethodNotAllowed("this path answers GET and HEAD")
        else:
            mapped = NotFound(f"no such path; the token endpoint is {self._realm_path.decode()}")
        answer: bytes = self.request_error(request, Failure(mapped))
        return answer

    @app.handle_errors(RequestError)
    def request_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, RequestError)
        if isinstance(error, AuthenticationFailed):
            request.setHeader(b"WWW-Authenticate", self._challenge)
        if error.retry_after is not None:
            request.setHeader(b"Retry-After", str(error.retry_after).encode("ascii"))
        who = getattr(request, "_tokend_who", _Who())
        account = error.account if error.account is not None else who.account
        text = (
            "{outcome} {method} {path} from {client}: {status} {reason} "
            "(account '{account}', client_id {client_id})"
        )
        if error.token is not None:
            text += "; refresh token {refresh_token}"
        self.log.info(
            text,
            refresh_token=error.token,
            method=printable(request.method.decode("latin-1")),
            path=printable(request.path.decode("utf-8", "replace")[:200]),
            client=self._client_address(request),
            account=printable(account or ""),
            client_id=printable(who.client_id),
            status=error.status,
            reason=printable(error.message),
            outcome=error.outcome,
        )
        started = getattr(request, "_tokend_started", None)
        if started is not None:
            self._metrics.answered(_asked_grant(request), _metric_outcome(error), started)
        oauth = request.method == b"POST" and request.path == self._realm_path
        return _json(request, error.status, error_body(error, oauth=oauth))


def _asked_grant(request: Request) -> str:
    """The grant a refused request asked for, as far as it was read: a POST is the password
    grant unless it named the refresh_token grant; a GET with credentials is a password login.
    Only a request that sent no credentials is anonymous."""
    noted: str | None = getattr(request, "_tokend_grant", None)
    if noted is not None:
        return noted
    if request.method == b"POST" or request.getHeader(b"authorization") is not None:
        return "password"
    return "anonymous"


def _metric_outcome(error: RequestError) -> str:
    """A refusal's ``outcome`` label: a refused refresh token is a failed login too."""
    if error.outcome in ("throttled", "overloaded", "unavailable"):
        return error.outcome
    if isinstance(error, AuthenticationFailed | InvalidGrant):
        return "unauthorized"
    return "bad_request"


def error_body(error: RequestError, *, oauth: bool) -> dict[str, Any]:
    """The spec's JSON error body: RFC 6749's on the POST endpoint, the registry's elsewhere."""
    if oauth:
        return {"error": error.oauth_error, "error_description": error.message}
    return {"errors": [{"code": error.code, "message": error.message, "detail": None}]}


def _token_body(
    flow: str, issued: IssuedToken, granted: Sequence[ResourceScope], refresh_token: str | None
) -> object:
    body: dict[str, object] = {
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if flow == "GET":
        body["token"] = issued.token
    else:
        body["token_type"] = "Bearer"  # noqa: S105 - the OAuth2 token type, not a secret
        body["scope"] = " ".join(str(s) for s in granted if s.actions)
    return body


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status, REASONS.get(status))
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


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


@dataclass(frozen=True, slots=True)
class _Who:
    """Who a request said it was, as far as it was read: for the refusal's log line."""

    account: str | None = None
    client_id: str | None = None


def _note(request: Request, who: _Who) -> None:
    request._tokend_who = who  # type: ignore[attr-defined]


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


class _Edge(Resource):
    """Answers a path that is not UTF-8 with a JSON 400 before Klein's plain-text one, hands
    the realm to :meth:`TokenAPI.serve_realm`, and every other path to Klein."""

    isLeaf = True

    def __init__(
        self, wrapped: Resource, realm_path: bytes, realm: Callable[[Request], bytes | int]
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._realm_path = realm_path
        self._realm = realm

    def render(self, request: Request) -> Any:
        if request.path == self._realm_path:
            return self._realm(request)
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return _json(request, 400, error_body(RequestError("path is not UTF-8"), oauth=False))
        return self._wrapped.render(request)
