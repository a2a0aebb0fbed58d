"""The realm's refusals: the RequestError family (status, registry code, OAuth2 error, log
outcome), how a login that ended without an identity maps to one, and the spec's JSON error body.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from tokend.login.federated import FederatedLoginRefused
from tokend.login.identity import (
    BackendUnavailable,
    LoginError,
    LoginOverloaded,
    LoginRefused,
    LoginThrottled,
)
from tokend.login.logins import ShareExceeded

OVERLOAD_RETRY_AFTER = 1
"""Seconds a client is asked to wait when the bcrypt queue (or its share) is full: it drains
quickly."""


class RequestError(Exception):
    """Answered with ``status`` and the registry error body; ``oauth`` picks RFC 6749's.

    ``outcome`` names the refusal in the log; ``account`` is logged when known, ``token`` (a
    refresh token's fingerprint, never the token) when one was refused, and ``trust`` and
    ``jwt`` (the trust's name and the platform JWT's fingerprint) for a federated login.
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
        trust: str | None = None,
        jwt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.account = account
        self.retry_after = retry_after
        self.token = token
        self.trust = trust
        self.jwt = jwt


class AuthenticationFailed(RequestError):
    status = 401
    code = "UNAUTHORIZED"
    oauth_error = "invalid_grant"


class Forbidden(RequestError):
    """Who asks is known, and may not do this (another account's tokens without being an
    admin; managing tokens with a token)."""

    status = 403
    code = "DENIED"
    oauth_error = "access_denied"


class ContentTooLarge(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415
    code = "UNSUPPORTED"


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


class InvalidSubjectToken(RequestError):
    """RFC 8693 §2.2.2: a subject token that is invalid or unacceptable by policy is answered
    ``invalid_request`` (400); counted as a failed login, like a refused refresh token."""


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


def http_error(error: LoginError, *, grant: str) -> RequestError:
    """The HTTP answer to a login that ended without an identity, asked by ``grant``
    (:attr:`tokend.web.requests.TokenRequest.grant`)."""
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
    if isinstance(error, FederatedLoginRefused):
        mapped = InvalidSubjectToken if grant == "token_exchange" else AuthenticationFailed
        return mapped(error.message, account=error.account, trust=error.trust, jwt=error.jwt)
    token = error.token if isinstance(error, LoginRefused) else None
    if grant == "refresh_token":
        return InvalidGrant(error.message, account=error.account, token=token)
    if grant == "token_exchange":
        return InvalidSubjectToken(error.message, account=error.account, token=token)
    return AuthenticationFailed(error.message, account=error.account, token=token)


def set_error_headers(request: Request, error: RequestError, challenge: bytes) -> None:
    """What an error answer says besides its body, on every listener path: the Basic
    ``challenge`` after credentials failed, ``Retry-After`` when the client may come back."""
    if isinstance(error, AuthenticationFailed):
        request.setHeader(b"WWW-Authenticate", challenge)
    if error.retry_after is not None:
        request.setHeader(b"Retry-After", str(error.retry_after).encode("ascii"))


def error_body(error: RequestError, *, oauth: bool) -> dict[str, Any]:
    """The spec's JSON error body: RFC 6749's on the POST endpoint, the registry's elsewhere."""
    if oauth:
        return {"error": error.oauth_error, "error_description": error.message}
    return {"errors": [{"code": error.code, "message": error.message, "detail": None}]}
