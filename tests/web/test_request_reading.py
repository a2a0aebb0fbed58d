"""Reading a token request into its TokenRequest, and what a refused one leaves in the
request's one RequestState record (who it said it was, which grant it asked for): the refusal's
log line and metric read it there."""

from __future__ import annotations

from io import BytesIO

import pytest
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from tokend.web.errors import RequestError
from tokend.web.requests import RequestState, read_get, read_post

SERVICES = ("registry.test",)


def request(method: bytes, uri: bytes, body: bytes = b"", **headers: bytes) -> Request:
    made = Request(DummyChannel())
    made.method, made.uri, made.path = method, uri, uri.partition(b"?")[0]
    made.args = {}
    made.content = BytesIO(body)
    made.requestHeaders.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])
    for name, value in headers.items():
        made.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value])
    return made


def test_a_refused_refresh_grant_still_says_who_and_which_grant() -> None:
    state = RequestState()
    form = b"grant_type=refresh_token&username=bar&client_id=docker"
    with pytest.raises(RequestError, match="needs refresh_token"):
        read_post(request(b"POST", b"/v2/token", form), state, SERVICES)
    assert (state.grant, state.account, state.client_id) == ("refresh_token", "bar", "docker")


def test_a_get_notes_the_authenticated_name_over_the_account_parameter() -> None:
    state = RequestState()
    get = request(
        b"GET", b"/v2/token?account=other&client_id=cli", authorization=b"Basic YmFyOmJhcg=="
    )
    get.args = {b"account": [b"other"], b"client_id": [b"cli"]}
    with pytest.raises(RequestError, match="account does not match"):
        read_get(get, state, SERVICES)
    assert (state.grant, state.account, state.client_id) == (None, "bar", "cli")


def test_an_anonymous_get_is_read_whole() -> None:
    state = RequestState()
    get = request(b"GET", b"/v2/token?scope=repository:a/b:pull")
    get.args = {b"scope": [b"repository:a/b:pull"]}
    asked = read_get(get, state, SERVICES)
    assert (asked.flow, asked.service, asked.grant) == ("GET", "registry.test", "anonymous")
    assert [str(scope) for scope in asked.scopes] == ["repository:a/b:pull"]
    assert (state.account, state.client_id, state.started) == (None, None, None)
