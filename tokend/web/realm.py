"""The HTTP edge: the realm (GET and OAuth2 POST) and /healthz, as a Klein app.

Thin on purpose: it reads the request (web.requests), asks the ready logins who it is and
issuing what it gets, and maps answers and refusals (web.errors) to HTTP: the spec's JSON
error body for every domain error, never a 500 for bad input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes
from weakref import WeakKeyDictionary

import werkzeug.exceptions
from klein import Klein
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tokend.client_address import TrustedProxies
from tokend.issuing import Issued, Issuing
from tokend.login.credentials import FederatedToken, RefreshToken, UsernamePassword
from tokend.login.federation.verify import jwt_fingerprint
from tokend.login.identity import FEDERATED_SOURCE, Login, LoginError, LoginThrottled
from tokend.login.logins import Logins
from tokend.login.refresh_tokens import fingerprint
from tokend.logs.escaping import printable
from tokend.logs.namespaces import NamedLogger
from tokend.metrics.instruments import NO_METRICS, RequestMetrics
from tokend.policy.holder import PolicyHolder
from tokend.programs.authorization import AuthorizationUnavailable
from tokend.scope import ResourceScope
from tokend.signing.tokens import IssuedToken
from tokend.web.errors import (
    AuthenticationFailed,
    InvalidGrant,
    InvalidSubjectToken,
    MethodNotAllowed,
    NotFound,
    RequestError,
    ServiceUnavailable,
    UnsupportedGrant,
    error_body,
    http_error,
    set_error_headers,
)
from tokend.web.health import KeyFiles, StrictError, status_word, strict_asked
from tokend.web.requests import (
    ACCESS_TOKEN_TYPE,
    RequestState,
    TokenRequest,
    read_get,
    read_post,
)

API_PATH = b"/api/v1"
"""Every path under it is the access token API's (:mod:`tokend.web.access_token_api`)."""
REASONS = {429: b"Too Many Requests"}
"""Status lines Twisted's table lacks (it would write "Unknown Status")."""


class TokenAPI:
    app = Klein()
    log = NamedLogger("tokend.web.TokenAPI")

    def __init__(
        self,
        *,
        policy: PolicyHolder,
        logins: Logins,
        issuing: Issuing,
        services: Sequence[str],
        realm_path: str = "/v2/token",
        trusted_proxies: TrustedProxies | None = None,
        metrics: RequestMetrics = NO_METRICS,
        keys: KeyFiles | None = None,
        api: Resource | None = None,
    ) -> None:
        """Everything arrives ready: ``logins`` says who a request is, ``issuing`` what it gets,
        ``policy`` and ``keys`` answer /healthz; without ``metrics``, nothing is counted.
        ``api`` answers every path under /api/v1 (the access token API); without it, they are
        not found."""
        self._policy = policy
        self._keys = keys
        self._logins = logins
        self._issuing = issuing
        self._metrics = metrics
        self._services = tuple(services)
        self._realm_path = realm_path.encode("utf-8")
        self._challenge = f'Basic realm="{issuing.issuer}"'.encode()
        self._proxies = TrustedProxies() if trusted_proxies is None else trusted_proxies
        self._states: WeakKeyDictionary[Request, RequestState] = WeakKeyDictionary()
        self._api = api

    def state(self, request: Request) -> RequestState:
        """The request's one record, made the first time it is asked for. Kept here, by the
        request, in a weak map: nothing is pasted on the request, and the record goes when the
        request does."""
        state = self._states.get(request)
        if state is None:
            state = self._states[request] = RequestState()
        return state

    def resource(self) -> Resource:
        return _Edge(self.app.resource(), self._realm_path, self.serve_realm, self._api)

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
        state = self.state(request)
        self.log.info(
            "{method} {path} from {client}: the client left before its answer "
            "(account '{account}', client_id {client_id})",
            method=printable(request.method.decode("latin-1")),
            path=printable(request.path.decode("utf-8", "replace")[:200]),
            client=self._client_address(request, state),
            account=printable(state.account or ""),
            client_id=printable(state.client_id),
        )

    def _client_address(self, request: Request, state: RequestState) -> str:
        """The proxy's view of the client when the peer is a trusted proxy, else the peer.

        Worked out once per request: the error handler asks again.
        """
        if state.client is not None:
            return state.client.address
        peer = request.getClientAddress()
        host = None if isinstance(peer, UNIXAddress) else str(getattr(peer, "host", "unknown"))
        lines = request.requestHeaders.getRawHeaders(self._proxies.header.encode("ascii"), [])
        client = self._proxies.client(host, [line.decode("latin-1") for line in lines])
        state.client = client
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
        word = status_word(self._policy.status(), self._keys)
        return _json(request, 503 if strict and word != "ok" else 200, {"status": word})

    @app.route("/", branch=True)
    def realm(self, request: Request) -> bytes | Deferred[bytes]:
        """Anonymous requests are answered synchronously: no coroutine, no Deferred chain.

        Only a password check waits (on the bcrypt pool), and only it goes through a Deferred.
        Every answer is counted once, by grant and outcome (in ``_issue`` or ``request_error``).
        """
        state = self.state(request)
        state.started = started = self._metrics.now()
        if request.path != self._realm_path:
            raise NotFound(f"no such path; the token endpoint is {self._realm_path.decode()}")
        if request.method in (b"GET", b"HEAD"):
            asked = read_get(request, state, self._services)
        elif request.method == b"POST":
            asked = read_post(request, state, self._services)
        else:
            request.setHeader(b"Allow", b"GET, HEAD, POST")
            raise MethodNotAllowed("the token endpoint answers GET and POST")
        client = self._client_address(request, state)
        if asked.grant == "anonymous":
            return self._issue(request, started, asked, client, None)
        grant = asked.grant
        try:
            if asked.refresh_token is not None:
                if not self._logins.accepts(RefreshToken):
                    raise UnsupportedGrant("this realm issues no refresh tokens; use password")
                login = self._logins.login(RefreshToken(asked.refresh_token), client)
            elif asked.subject_token is not None:
                if not self._logins.accepts(FederatedToken):
                    raise UnsupportedGrant("this realm trusts no token issuers; use password")
                login = self._logins.login(FederatedToken(asked.subject_token), client)
            else:
                assert asked.credentials is not None
                credentials = asked.credentials
                login = self._logins.login(
                    UsernamePassword(credentials.username, credentials.password), client
                )
        except LoginError as e:
            if isinstance(e, LoginThrottled):
                self._metrics.throttled(e.by)
            raise http_error(e, grant=grant) from None
        if isinstance(login, Login):
            return self._issue(request, started, asked, client, login)

        def refused(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, LoginThrottled):
                self._metrics.throttled(error.by)  # refused after asking Redis first
            if isinstance(error, LoginError):
                return Failure(http_error(error, grant=grant))
            return failure

        return login.addCallbacks(
            lambda login: self._issue(request, started, asked, client, login), refused
        )

    def _issue(
        self,
        request: Request,
        started: float,
        asked: TokenRequest,
        client: str,
        login: Login | None,
    ) -> bytes | Deferred[bytes]:
        """The token for ``login`` (None: anonymous), written and logged: at once, unless an
        authorization program must be asked first."""
        issued = self._issuing.issue(
            login,
            asked.service,
            asked.scopes,
            offline=asked.offline,
            presented=asked.refresh_token,
            client=self.state(request).client,
        )
        if isinstance(issued, Issued):
            return self._answer(request, started, asked, client, login, issued)

        def unavailable(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, AuthorizationUnavailable):
                return Failure(
                    ServiceUnavailable(
                        error.message, account=error.account, retry_after=error.retry_after
                    )
                )
            return failure

        return issued.addCallbacks(
            lambda issued: self._answer(request, started, asked, client, login, issued),
            unavailable,
        )

    def _answer(
        self,
        request: Request,
        started: float,
        asked: TokenRequest,
        client: str,
        login: Login | None,
        issued: Issued,
    ) -> bytes:
        account = None if login is None else login.identity.account
        granted, refresh_token = issued.granted, issued.refresh_token
        text = (
            "issued {flow} token to '{account}' from {client} (client_id {client_id}) by "
            "{grant}: asked {asked}, granted {granted}"
        )
        if refresh_token is not None:
            text += "; refresh token {refresh_token}"
        trust = jwt = None
        if login is not None and login.identity.source == FEDERATED_SOURCE:
            trust, jwt = login.identity.trust, jwt_fingerprint(asked.secret)
            text += "; trust '{trust}', JWT {jwt}"
            if asked.offline:
                text += "; no refresh token: a federated client asks its platform for a new JWT"
        use = None if login is None else login.identity.access_token
        if use is not None:
            text += "; access token {token_id} ({token_name})"
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
            trust=trust,
            jwt=jwt,
            token_id=None if use is None else use.id,
            token_name=None if use is None else printable(use.name),
            outcome="issued",
        )
        request.setHeader(b"Cache-Control", b"no-store")
        self._metrics.answered(asked.grant, "issued", started)
        return _json(request, 200, _token_body(asked, issued.token, granted, refresh_token))

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
        set_error_headers(request, error, self._challenge)
        state = self.state(request)
        account = error.account if error.account is not None else state.account
        text = (
            "{outcome} {method} {path} from {client}: {status} {reason} "
            "(account '{account}', client_id {client_id})"
        )
        if error.token is not None:
            text += "; refresh token {refresh_token}"
        if error.jwt is not None:
            text += "; trust '{trust}', JWT {jwt}"
        self.log.info(
            text,
            refresh_token=error.token,
            trust=None if error.trust is None else printable(error.trust),
            jwt=error.jwt,
            method=printable(request.method.decode("latin-1")),
            path=printable(request.path.decode("utf-8", "replace")[:200]),
            client=self._client_address(request, state),
            account=printable(account or ""),
            client_id=printable(state.client_id),
            status=error.status,
            reason=printable(error.message),
            outcome=error.outcome,
        )
        if state.started is not None:
            self._metrics.answered(
                _asked_grant(request, state), _metric_outcome(error), state.started
            )
        oauth = request.method == b"POST" and request.path == self._realm_path
        return _json(request, error.status, error_body(error, oauth=oauth))


def _asked_grant(request: Request, state: RequestState) -> str:
    """The grant a refused request asked for, as far as it was read: a POST is the password
    grant unless it named the refresh_token grant; a GET with credentials is a password login.
    Only a request that sent no credentials is anonymous."""
    if state.grant is not None:
        return state.grant
    if request.method == b"POST" or request.getHeader(b"authorization") is not None:
        return "password"
    return "anonymous"


def _metric_outcome(error: RequestError) -> str:
    """A refusal's ``outcome`` label: a refused refresh token or subject token is a failed
    login too."""
    if error.outcome in ("throttled", "overloaded", "unavailable"):
        return error.outcome
    if isinstance(error, AuthenticationFailed | InvalidGrant | InvalidSubjectToken):
        return "unauthorized"
    return "bad_request"


def _token_body(
    asked: TokenRequest,
    issued: IssuedToken,
    granted: Sequence[ResourceScope],
    refresh_token: str | None,
) -> object:
    body: dict[str, object] = {
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if asked.flow == "GET":
        body["token"] = issued.token
    else:
        body["token_type"] = "Bearer"  # noqa: S105 - the OAuth2 token type, not a secret
        body["scope"] = " ".join(str(s) for s in granted if s.actions)
    if asked.subject_token is not None:
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
    return body


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status, REASONS.get(status))
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


class _Edge(Resource):
    """Answers a path that is not UTF-8 with a JSON 400 before Klein's plain-text one, hands
    the realm to :meth:`TokenAPI.serve_realm`, paths under /api/v1 to the access token API
    (when there is one), and every other path to Klein."""

    isLeaf = True

    def __init__(
        self,
        wrapped: Resource,
        realm_path: bytes,
        realm: Callable[[Request], bytes | int],
        api: Resource | None = None,
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._realm_path = realm_path
        self._realm = realm
        self._api = api

    def render(self, request: Request) -> Any:
        if request.path == self._realm_path:
            return self._realm(request)
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return _json(request, 400, error_body(RequestError("path is not UTF-8"), oauth=False))
        if self._api is not None and (
            request.path == API_PATH or request.path.startswith(API_PATH + b"/")
        ):
            return self._api.render(request)
        return self._wrapped.render(request)
