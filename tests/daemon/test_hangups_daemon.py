"""Hang-ups against the real ``twistd registry-token`` (Hardening III, items 2 and 15).

Clients that send Basic credentials and close at once, over the UNIX socket as nginx's peers
would (X-Real-IP names them). They used to let their bcrypt checks pile up in the thread pool:
~850 of them made a correct login wait 79 s and SIGTERM take 83 s. Users are hashed at the real
cost: the point is what a flood does to everybody else's wait.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    UnixHTTPConnection,
    free_port,
    load_certificate,
    start_twistd,
    stop_process,
    verify_jwt,
    wait_for,
    write_key_pair,
    write_policy,
)

REAL_COST = 12
FLOODER = "203.0.113.66"
PER_ADDRESS_FAILURES = 10
DEADLINE = 20.0
"""Generous: the answer comes after a few bcrypts; the old code made it wait for all of them."""


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hang_up(sock_path: Path, client: str, password: str, user: str = "bar") -> None:
    """A credentialed request, and the connection closed at once (its answer, if any, not
    waited for). Done when tokend closed its end too, so that it saw the hang-up before the
    next request arrives: one hang-up after another, as a client in a loop would."""
    request = (
        "GET /v2/token?service=svc&scope=repository:pub/x:pull HTTP/1.1\r\nHost: tokend\r\n"
        f"Authorization: {basic(user, password)}\r\nX-Real-IP: {client}\r\n\r\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(DEADLINE)
        raw.connect(str(sock_path))
        raw.sendall(request.encode())
        raw.shutdown(socket.SHUT_WR)  # to tokend as to any peer: the client is gone
        while raw.recv(65536):
            pass


def ask(
    sock_path: Path, user: str, password: str, client: str
) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    connection = UnixHTTPConnection(sock_path, timeout=DEADLINE)
    try:
        connection.request(
            "GET",
            "/v2/token?service=svc&scope=repository:pub/x:pull",
            headers={"Authorization": basic(user, password), "X-Real-IP": client},
        )
        response = connection.getresponse()
        return response, json.loads(response.read())
    finally:
        connection.close()


def scrape(port: int) -> tuple[http.client.HTTPResponse, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response, text


def sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in the metrics"
    return float(found.group(1))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int, Path, Path]]:
    config = tmp_path / "config"
    write_policy(
        config,
        {"bar": ("bar", {"*": ["pull"]}), "alice": ("alice-pw", {"*": ["pull"]})},
        {"repositories": []},
        cost=REAL_COST,
    )
    key, cert = write_key_pair(tmp_path)
    sock = tmp_path / "run" / "tokend.sock"
    sock.parent.mkdir()
    log = tmp_path / "tokend.log"
    metrics = free_port()
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key),
        "--cert", str(cert), "--issuer", "iss", "--service", "svc",
        "--bcrypt-threads", "2", "--bcrypt-per-address", "4",
        "--max-failures-per-address", str(PER_ADDRESS_FAILURES),
        "--credential-cache-ttl", "0",
        "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
        log=log,
    )  # fmt: skip
    try:
        wait_for(
            "listening",
            lambda: (
                process.poll() is not None
                or (log.exists() and "tokend listening on" in log.read_text())
            ),
            timeout=60,
        )
        assert process.poll() is None, log.read_text()
        yield process, sock, metrics, log, cert
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_hang_ups_hold_their_places_count_and_leave_sigterm_prompt(
    daemon: tuple[subprocess.Popen[bytes], Path, int, Path, Path],
) -> None:
    process, sock, metrics, log, cert = daemon
    for n in range(300):
        hang_up(sock, FLOODER, f"guess{n}")

    started = time.monotonic()
    response, body = ask(sock, "alice", "alice-pw", "192.0.2.7")
    assert response.status == 200, body
    assert time.monotonic() - started < DEADLINE
    _, claims = verify_jwt(body["token"], load_certificate(cert))
    assert claims["sub"] == "alice"

    refused, body = ask(sock, "bar", "bar", FLOODER)
    assert (refused.status, refused.reason) == (429, "Too Many Requests"), body
    assert int(refused.getheader("Retry-After", "0")) >= 1
    assert refused.getheader("Server") == "tokend"

    def settled() -> bool:
        _, text = scrape(metrics)
        running = sample(text, "tokend_password_checks_running")
        return running + sample(text, "tokend_password_check_queue_depth") == 0

    wait_for("the flood's checks ended", settled, timeout=60)
    scraped, text = scrape(metrics)
    assert scraped.getheader("Server") == "tokend"
    rejected = sample(text, 'tokend_password_checks_total{result="rejected"}')
    assert 1 <= rejected <= PER_ADDRESS_FAILURES, "each hang-up was counted, as an attempt"
    assert sample(text, 'tokend_password_checks_total{result="accepted"}') == 1
    # Its own limit, not the server's: nothing for the alert on "overloaded" (503) to page on.
    assert sample(text, 'tokend_token_requests_total{grant="password",outcome="overloaded"}') == 0
    assert sample(text, 'tokend_token_requests_total{grant="password",outcome="throttled"}') > 0

    # A flood from many addresses keeps the queue full; SIGTERM must not work it off.
    for n in range(150):
        hang_up(sock, f"10.{n % 50}.0.1", "guess", user=f"user{n}")
    wait_for(
        "a full queue",
        lambda: sample(scrape(metrics)[1], "tokend_password_check_queue_depth") >= 20,
        timeout=60,
    )
    started = time.monotonic()
    assert stop_process(process, timeout=15) == -signal.SIGTERM
    stopping = time.monotonic() - started
    text = log.read_text()
    assert f"from {FLOODER}: 429 too many logins from this address are being checked" in text
    assert f"from {FLOODER}: 503" not in text, "its own share is a 429, not a 503"
    assert "Traceback" not in text and "#critical]" not in text and "#error]" not in text
    assert stopping < 15
