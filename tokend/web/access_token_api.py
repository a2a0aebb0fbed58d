"""The access token API (#26): ``/api/v1/tokens`` in JSON, under the realm's listener, for
automation and the coming web page. An owner lists, creates, shows and revokes their own
tokens; members of a groups.json group with ``"admin": true`` everyone's.

Callers log in with their password (HTTP Basic) through the realm's own door, throttle
included, never with an access token or a platform's JWT: a token must not mint tokens. Every
query runs on the store's threads; a database that does not answer is a 503 with Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from weakref import WeakKeyDictionary

import werkzeug.exceptions
from klein import Klein
from twisted.internet.address import UNIXAddress
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from tokend.access_tokens.lifetimes import DEFAULT_MAX_TTL
from tokend.access_tokens.new_token import NewTokenError, from_json
from tokend.access_tokens.record import AccessToken
from tokend.client_address import TrustedProxies
from tokend.login.credentials import UsernamePassword
from tokend.login.identity import (
    FEDERATED_SOURCE,
    BackendUnavailable,
    Identity,
    Login,
    LoginError,
)
from tokend.login.logins import Logins
from tokend.logs.escaping import printable
from tokend.logs.namespaces import NamedLogger
from tokend.metrics.instruments import NO_TOKEN_METRICS, AccessTokenMetrics
from tokend.policy.holder import PolicyHolder
from tokend.store.database import DatabaseUnavailable
from tokend.store.runner import Store
from tokend.unique_json import DuplicateKey, unique_keys
from tokend.web.basic_auth import MalformedCredentials, UnsupportedScheme, parse_authorization
from tokend.web.errors import (
    AuthenticationFailed,
    ContentTooLarge,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RequestError,
    ServiceUnavailable,
    UnsupportedMediaType,
    error_body,
    http_error,
    set_error_headers,
)

MAX_BODY_BYTES = 16384
"""A token's name, lifetime and cap; below the transport's own cap, so the API answers 413
itself."""
MAX_ID_CHARS = 64
"""Longer ids are no token's: not found, without a query."""
BASIC_ONLY = "manage access tokens with your name and password (HTTP Basic)"
NOT_FOUND = "no such token"
ADMINS_ONLY = (
    'only an admin (a groups.json group with "admin": true) manages another account\'s tokens'
)


class Owners(Protocol):
    """Accounts users.json does not hold, which may own tokens (the directory's
    :class:`tokend.login.ldap.accounts.DirectoryAccounts`)."""

    async def lookup(self, account: str) -> Identity | None:
        """The account, or None; may raise :class:`tokend.login.identity.BackendUnavailable`."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who logged in to the API, and whether they manage everyone's tokens."""

    account: str
    admin: bool


@dataclass(slots=True)
class _Seen:
    """What one request said of itself, for the refusal's log line."""

    client: str | None = None
    account: str | None = None


class AccessTokenAPI:
    app = Klein()
    log = NamedLogger("tokend.web.AccessTokenAPI")

    def __init__(
        self,
        *,
        policy: PolicyHolder,
        logins: Logins,
        store: Store,
        clock: Callable[[], float],
        realm: str = "tokend",
        max_ttl: int = DEFAULT_MAX_TTL,
        revoked: Callable[[str], object] = lambda token_id: None,
        owners: Owners | None = None,
        trusted_proxies: TrustedProxies | None = None,
        metrics: AccessTokenMetrics = NO_TOKEN_METRICS,
    ) -> None:
        """``logins`` is the realm's door (its throttle counts here too); ``revoked`` is told
        the id of each token revoked here (the door forgets it at once); ``owners`` knows the
        directory's accounts an admin may make tokens for (without it, users.json's only);
        ``realm`` names the Basic challenge."""
        self._policy = policy
        self._logins = logins
        self._store = store
        self._now = clock
        self._challenge = f'Basic realm="{realm}"'.encode()
        self._max_ttl = max_ttl
        self._revoked = revoked
        self._owners = owners
        self._proxies = TrustedProxies() if trusted_proxies is None else trusted_proxies
        self._metrics = metrics
        self._seen: WeakKeyDictionary[Request, _Seen] = WeakKeyDictionary()

    def resource(self) -> Resource:
        return self.app.resource()

    @app.route("/api/v1/tokens", methods=["GET"])
    async def list_tokens(self, request: Request) -> bytes:
        """An owner's tokens (``?owner=`` may name only themselves); an admin's: everyone's,
        or ``owner``'s."""
        caller = await self._caller(request)
        owner = _owner_asked(request)
        if owner is None and not caller.admin:
            owner = caller.account
        elif owner is not None and owner != caller.account and not caller.admin:
            raise Forbidden(ADMINS_ONLY)
        tokens = await self._store.list(owner)
        now = self._now()
        return _json(request, 200, {"tokens": [token.as_json(now) for token in tokens]})

    @app.route("/api/v1/tokens", methods=["POST"])
    async def create_token(self, request: Request) -> bytes:
        """A new token (``name``, ``expires_in``, ``cap`` or ``scopes``; ``owner`` for an
        admin), its secret in this answer and never again."""
        caller = await self._caller(request)
        document = _document(request)
        asked = document.get("owner") if isinstance(document, dict) else None
        try:
            new = from_json(caller.account if asked is None else asked, document, self._max_ttl)
        except NewTokenError as e:
            raise RequestError(str(e)) from None
        owner = new.owner
        if owner != caller.account:
            if not caller.admin:
                raise Forbidden(ADMINS_ONLY)
            owner = await self._known_owner(owner)
        now = int(self._now())
        token = await self._store.create(
            owner, new.name, new.hashed, new.stored_cap(), now, now + new.lifetime
        )
        self._metrics.token_created()
        self.log.info(
            "created access token {token_id} '{name}' of '{owner}' by '{actor}' from {client}: "
            "expires {expires_at}, cap {cap}",
            action="create",
            token_id=token.id,
            name=printable(token.name),
            owner=printable(token.owner),
            actor=printable(caller.account),
            client=self._client(request),
            expires_at=token.as_json(now)["expires_at"],
            cap=token.scopes(),
        )
        request.setHeader(b"Location", b"/api/v1/tokens/" + token.id.encode("ascii"))
        return _json(request, 201, {**token.as_json(now), "secret": new.secret})

    @app.route("/api/v1/tokens/<token_id>", methods=["GET"])
    async def show_token(self, request: Request, token_id: str) -> bytes:
        caller = await self._caller(request)
        token = await self._visible(caller, token_id)
        return _json(request, 200, token.as_json(self._now()))

    @app.route("/api/v1/tokens/<token_id>", methods=["DELETE"])
    async def revoke_token(self, request: Request, token_id: str) -> bytes:
        """Revoked at once here (the door is told) and, through the database, in every other
        process within its cache's lifetime; revoking again keeps the first time."""
        caller = await self._caller(request)
        token = await self._visible(caller, token_id)
        now = int(self._now())
        revoked = await self._store.revoke(token.id, now)
        if revoked is None:
            raise NotFound(NOT_FOUND)
        self._revoked(token.id)
        text = "revoked access token {token_id} '{name}' of '{owner}' by '{actor}' from {client}"
        if token.revoked_at is None:
            self._metrics.token_revoked()
        else:
            text += " (already revoked)"
        self.log.info(
            text,
            action="revoke",
            token_id=token.id,
            name=printable(token.name),
            owner=printable(token.owner),
            actor=printable(caller.account),
            client=self._client(request),
        )
        return _json(request, 200, revoked.as_json(now))

    async def _caller(self, request: Request) -> Caller:
        """The account whose password the request's Basic credentials carry, through the
        realm's door; refused when it logged in with an access token or a platform's JWT."""
        seen = self._request_seen(request)
        try:
            credentials = parse_authorization(request.getHeader(b"authorization"))
        except UnsupportedScheme:
            raise AuthenticationFailed(BASIC_ONLY) from None
        except MalformedCredentials as e:
            raise RequestError(str(e)) from None
        if credentials is None:
            raise AuthenticationFailed(BASIC_ONLY)
        seen.account = credentials.username
        typed = UsernamePassword(credentials.username, credentials.password)
        try:
            login = self._logins.login(typed, self._client(request))
            if not isinstance(login, Login):
                login = await login
        except LoginError as e:
            raise http_error(e, grant="password") from None
        identity = login.identity
        seen.account = identity.account
        if identity.access_token is not None:
            raise Forbidden("manage tokens with your password, not a token")
        if identity.source == FEDERATED_SOURCE:
            raise Forbidden("manage tokens with your password, not a platform's token")
        return Caller(identity.account, login.policy.is_admin(identity))

    async def _visible(self, caller: Caller, token_id: str) -> AccessToken:
        """The token ``token_id`` if the caller may see it; another owner's is not found, as
        one that does not exist, so ids tell nothing."""
        if len(token_id) > MAX_ID_CHARS:
            raise NotFound(NOT_FOUND)
        token = await self._store.get(token_id)
        if token is None or (token.owner != caller.account and not caller.admin):
            raise NotFound(NOT_FOUND)
        return token

    async def _known_owner(self, owner: str) -> str:
        """``owner`` as the account it names (the directory's spelling), or a 400."""
        if owner in self._policy.current.users:
            return owner
        if self._owners is not None:
            try:
                found = await self._owners.lookup(owner)
            except BackendUnavailable as e:
                raise ServiceUnavailable(e.message, retry_after=e.retry_after) from None
            if found is not None:
                return found.account
        raise RequestError(
            f"no account {owner[:100]!r}: a token's owner is an account of users.json or the "
            "directory"
        )

    def _request_seen(self, request: Request) -> _Seen:
        seen = self._seen.get(request)
        if seen is None:
            seen = self._seen[request] = _Seen()
        return seen

    def _client(self, request: Request) -> str:
        """The proxy's view of the client when the peer is a trusted proxy, else the peer, as
        the realm reads it (the throttle counts by it)."""
        seen = self._request_seen(request)
        if seen.client is None:
            peer = request.getClientAddress()
            host = None if isinstance(peer, UNIXAddress) else str(getattr(peer, "host", "unknown"))
            header = self._proxies.header.encode("ascii")
            lines = request.requestHeaders.getRawHeaders(header, [])
            seen.client = self._proxies.client(host, [v.decode("latin-1") for v in lines]).address
        return seen.client

    @app.handle_errors(werkzeug.exceptions.HTTPException)
    def routing_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        mapped: RequestError
        if isinstance(error, werkzeug.exceptions.MethodNotAllowed):
            allowed = sorted(error.valid_methods or ())
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            mapped = MethodNotAllowed(f"this path answers {', '.join(allowed)}")
        else:
            mapped = NotFound("no such path; the API answers /api/v1/tokens and /api/v1/tokens/ID")
        answer: bytes = self.request_error(request, Failure(mapped))
        return answer

    @app.handle_errors(DatabaseUnavailable)
    def database_unavailable(self, request: Request, failure: Failure) -> bytes:
        """Where the database is and what it said go to the log, not to the client."""
        error = failure.value
        assert isinstance(error, DatabaseUnavailable)
        self.log.warn("access token API: {reason}", reason=error.message)
        mapped = ServiceUnavailable(
            "the access token database is unavailable; try again shortly",
            retry_after=error.retry_after,
        )
        answer: bytes = self.request_error(request, Failure(mapped))
        return answer

    @app.handle_errors(RequestError)
    def request_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, RequestError)
        set_error_headers(request, error, self._challenge)
        seen = self._request_seen(request)
        account = error.account if error.account is not None else seen.account
        self.log.info(
            "{outcome} {method} {path} from {client}: {status} {reason} (account '{account}')",
            method=printable(request.method.decode("latin-1")),
            path=printable(request.path.decode("utf-8", "replace")[:200]),
            client=self._client(request),
            account=printable(account or ""),
            status=error.status,
            reason=printable(error.message),
            outcome=error.outcome,
        )
        return _json(request, error.status, error_body(error, oauth=False))


def _constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _document(request: Request) -> object:
    """The request's JSON body. Only ``application/json``: a browser sends no such body to
    another site without asking first (CORS), so a page elsewhere cannot make tokens with the
    credentials a browser remembers."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise UnsupportedMediaType("send the body as JSON, with Content-Type: application/json")
    too_large = f"body longer than {MAX_BODY_BYTES} bytes"
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ContentTooLarge(too_large)
    body = b""
    if request.content is not None:
        request.content.seek(0)
        body = request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise ContentTooLarge(too_large)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the body is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys, parse_constant=_constant)
    except DuplicateKey as e:
        raise RequestError(f"field {e.key[:40]!r} given more than once") from None
    except RecursionError:
        raise RequestError("the body is nested too deeply") from None
    except ValueError as e:
        raise RequestError(f"the body is not JSON: {e}") from None


def _owner_asked(request: Request) -> str | None:
    """``?owner=NAME``, the one query parameter the list takes."""
    args: dict[bytes, list[bytes]] = request.args or {}
    for key in args:
        if key != b"owner":
            name = key.decode("utf-8", "replace")[:40]
            raise RequestError(f"unknown query parameter {name!r}; the list takes owner")
    values = args.get(b"owner")
    if not values:
        return None
    if len(values) > 1:
        raise RequestError("owner given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("owner is not UTF-8") from None


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
