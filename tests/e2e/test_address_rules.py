"""Rules by client address through real nginx and the real daemon: push only from the CI network.

The session's nginx sets ``X-Real-IP $remote_addr`` (127.0.0.1 here: outside the CI network) and
overwrites whatever a client wrote. A second nginx stands for an edge behind a load balancer: it
trusts 127.0.0.1 (the test, playing the balancer) to name the client in ``X-Forwarded-For``
(``set_real_ip_from``, ``real_ip_header``) and hands tokend the result as ``X-Real-IP``, as an
operator's nginx would. The tokens are then used against the real registry.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from e2e.stack import BCRYPT_COST, SERVICE, Stack, wait_until
from support import (
    free_port,
    hash_password,
    load_certificate,
    port_open,
    stop_process,
    verify_jwt,
)

pytestmark = pytest.mark.e2e

USER, PASSWORD = "builder", "builder-secret-pw"
CI_CLIENT, OFFICE_CLIENT = "10.20.3.4", "192.0.2.10"
SCOPE = "repository:apps/web:pull,push"


@pytest.fixture(scope="module")
def builder(stack: Stack) -> Iterator[None]:
    """users.json with ``builder``: push to apps/** only from the CI network; restored after."""
    original = stack.read("users.json")
    users = json.loads(json.dumps(original))
    users[USER] = {
        "pass_hash": hash_password(PASSWORD, BCRYPT_COST),
        "repositories": {
            "apps/**": {"actions": ["pull", "push"], "from": ["10.20.0.0/16", "fd00:20::/48"]},
            "*": ["pull"],
        },
    }
    stack.rewrite("users.json", users)
    try:
        yield
    finally:
        stack.rewrite("users.json", original)


@pytest.fixture(scope="module")
def edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An nginx in front of tokend's socket that takes the client from a trusted balancer."""
    root = tmp_path_factory.mktemp("edge-nginx")
    port = free_port()
    config = root / "nginx.conf"
    config.write_text(
        f"""daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Forwarded-For;
        location = /v2/token {{
            proxy_pass http://unix:{stack.tokend_socket}:;
            proxy_set_header X-Real-IP $remote_addr;
        }}
    }}
}}
"""
    )
    with (root / "nginx.out").open("ab") as output:
        process = subprocess.Popen(
            ["nginx", "-c", str(config), "-p", str(root)], stdout=output, stderr=output
        )
    try:
        wait_until(
            lambda: process.poll() is None and (root / "nginx.pid").exists() and port_open(port),
            f"the edge nginx on {port}",
        )
        yield port
    finally:
        stop_process(process)


def token_through_edge(port: int, balancer_says: str) -> str:
    query = urlencode({"service": SERVICE, "scope": SCOPE, "account": USER})
    basic = b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/token?{query}",
        headers={"Authorization": f"Basic {basic}", "X-Forwarded-For": balancer_says},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["token"])


def granted(stack: Stack, token: str) -> list[str]:
    _, claims = verify_jwt(token, load_certificate(stack.certs / "RootCA.crt"))
    return [action for entry in claims["access"] for action in entry["actions"]]


def may_upload(stack: Stack, token: str) -> int:
    """The registry's answer to starting a blob upload to apps/web with ``token``."""
    status, _, _ = stack.request(
        "/v2/apps/web/blobs/uploads/", {"Authorization": f"Bearer {token}"}, "POST", b""
    )
    return status


def test_push_only_from_the_ci_network(stack: Stack, builder: None, edge: int) -> None:
    offset = stack.tokend_log_offset()
    from_ci = token_through_edge(edge, CI_CLIENT)
    from_office = token_through_edge(edge, OFFICE_CLIENT)
    assert granted(stack, from_ci) == ["pull", "push"]
    assert granted(stack, from_office) == ["pull"]
    log = stack.tokend_log_since(offset)
    assert f"to '{USER}' from {CI_CLIENT} " in log and f"to '{USER}' from {OFFICE_CLIENT} " in log
    assert may_upload(stack, from_ci) == 202
    assert may_upload(stack, from_office) == 401


def test_a_spoofed_header_through_nginx_unlocks_nothing(stack: Stack, builder: None) -> None:
    """The session's nginx writes X-Real-IP itself: a client's own X-Real-IP or
    X-Forwarded-For claiming the CI network changes nothing, for a raw request or skopeo."""
    query = urlencode({"service": SERVICE, "scope": SCOPE, "account": USER})
    basic = b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    status, body = stack.https(
        f"/v2/token?{query}",
        {
            "Authorization": f"Basic {basic}",
            "X-Real-IP": CI_CLIENT,
            "X-Forwarded-For": CI_CLIENT,
        },
    )
    assert status == 200, body
    assert granted(stack, body["token"]) == ["pull"]
    pushed = stack.push(stack.new_image(), "apps/web", f"{USER}:{PASSWORD}")
    assert not pushed.ok, pushed.stdout
    assert stack.stored_tag("apps/web") is None
