"""The signing keys renew live: a replaced certificate is sent from the next token on, with no
restart, in every worker; a replacement that does not fit keeps the last good key and says why.

The reloader alone (in memory), then the real twistd: a single process, and --workers 2. None
sleeps for a fixed time to make an assertion true.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from daemons import Daemon, start
from support import (
    UnixHTTPConnection,
    answers_from_many,
    get_json_over_unix,
    self_signed,
    start_twistd,
    stop_process,
    wait_for,
    write_key_pair,
    write_policy,
)
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from tokend.signing.holder import KeyHolder
from tokend.signing.key_dir import activate, create_key, retire
from tokend.signing.key_set import single_key_set
from tokend.signing.reload import KeyReloader, expiring
from tokend.threads import InlineRunner

ANONYMOUS = "/v2/token?service=svc&scope=repository:pub/x:pull"


def certificate_for(key_path: Path, days: int = 30, start_days_ago: int = 1) -> x509.Certificate:
    key: Any = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return self_signed(key, days=days, start_days_ago=start_days_ago)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def der64(certificate: x509.Certificate) -> str:
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def replace_atomically(path: Path, data: bytes) -> None:
    """As cert-manager, certbot's deploy hooks and editors do: a new file renamed over it."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_in_place(path: Path, data: bytes) -> None:
    with path.open("r+b") as file:
        file.truncate(0)
        file.write(data)


def x5c_leaf(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["x5c"][0])


def leaves(daemon: Daemon, connections: int = 1) -> set[str]:
    """The x5c leaf of anonymous tokens asked over ``connections`` connections."""
    return {x5c_leaf(answer["token"]) for answer in answers_from_many(
        daemon.sock, ANONYMOUS, connections
    )}  # fmt: skip


def test_a_replacement_that_does_not_fit_keeps_the_last_good_key(tmp_path: Path) -> None:
    """A certificate of another key, then an expired one: refused, the key in force keeps
    signing, and the log and the holder say which file and why; a good one is taken."""
    key_path, cert_path = write_key_pair(tmp_path)
    holder = KeyHolder(single_key_set(key_path, cert_path), 0.0)
    first = holder.current
    clock = Clock()

    def load(now: float) -> Any:
        return single_key_set(key_path, cert_path, "libtrust", now)

    reloader = KeyReloader(load, holder, clock, InlineRunner())
    other_key, _ = write_key_pair(tmp_path, "rsa")
    for bad, why in (
        (certificate_for(other_key), "does not match the key"),
        (certificate_for(key_path, days=-1, start_days_ago=30), "expired on"),
    ):
        cert_path.write_bytes(pem(bad))
        with capturedLogs() as events:
            reloader.reload("modified")
        assert holder.current is first
        assert holder.last_error is not None and why in holder.last_error
        assert str(cert_path) in holder.last_error
        (event,) = [e for e in events if e["log_level"].name == "error"]
        assert f"certificate {cert_path}" in formatEvent(event) and why in formatEvent(event)
        assert str(cert_path) in event["files"]

    renewed = certificate_for(key_path, days=90)
    cert_path.write_bytes(pem(renewed))
    reloader.reload("modified")
    assert holder.current.signing.chain == (renewed,)
    assert holder.files_valid and holder.reloads_failed == 2 and holder.reloads_ok == 1


def test_certificates_near_their_end_are_named(tmp_path: Path) -> None:
    """Two weeks ahead of each certificate's end, with its key, state and days left."""
    key_path, cert_path = write_key_pair(tmp_path)
    soon = certificate_for(key_path, days=3, start_days_ago=0)
    cert_path.write_bytes(pem(soon))
    keys = single_key_set(key_path, cert_path)
    now = soon.not_valid_before_utc.timestamp() + 86400
    (found,) = expiring(keys, now)
    assert found["key"] == str(key_path) and found["state"] == "current"
    assert found["days"] == 2 and found["subject"] == "CN=tokend test"
    assert found["not_after"] == soon.not_valid_after_utc.isoformat()
    cert_path.write_bytes(pem(certificate_for(key_path, days=40, start_days_ago=0)))
    assert expiring(single_key_set(key_path, cert_path), now) == []


RELOADED = re.compile(r"signing keys reloaded \(([^)]*)\) from")
RELOADED_IN = re.compile(r"pid (\d+)\] signing keys reloaded \(([^)]*)\) from")


def test_a_renewed_certificate_is_sent_without_restart(tmp_path: Path) -> None:
    """Renamed over, then written in place: the next token carries it. A certificate of
    another key or an expired one is refused with its file named, the last good one kept. An
    edit no watch can see (through a hard link elsewhere) is picked up on SIGHUP."""
    daemon = start(tmp_path, workers="1")
    try:
        key_path, cert_path = tmp_path / "p256.key", tmp_path / "p256.crt"
        (original,) = leaves(daemon)
        assert original == der64(x509.load_pem_x509_certificate(cert_path.read_bytes()))

        renamed = certificate_for(key_path, days=60)
        replace_atomically(cert_path, pem(renamed))
        wait_for("renamed-over cert", lambda: leaves(daemon) == {der64(renamed)})
        in_place = certificate_for(key_path, days=61)
        write_in_place(cert_path, pem(in_place))
        wait_for("cert written in place", lambda: leaves(daemon) == {der64(in_place)})

        (tmp_path / "others").mkdir()
        other_key, _ = write_key_pair(tmp_path / "others", "ed25519")
        for bad, why in (
            (certificate_for(other_key), "does not match the key"),
            (certificate_for(key_path, days=-1, start_days_ago=30), "expired on"),
        ):
            failures = daemon.log_text().count("signing keys reload (")
            replace_atomically(cert_path, pem(bad))
            wait_for(
                f"refusal: {why}",
                lambda failures=failures: (
                    daemon.log_text().count("signing keys reload (") > failures
                ),
            )
            refused = daemon.log_text().split("signing keys reload (")[-1].splitlines()[0]
            assert f"certificate {cert_path} {why}" in refused, refused
            assert leaves(daemon) == {der64(in_place)}
            health = daemon.health()
            assert health["status"] == "degraded" and not health["signing_keys_valid"]
            assert f"certificate {cert_path} {why}" in health["signing_keys_error"]
            assert health["files_valid"], "the policy files are fine"
            assert get_json_over_unix(daemon.sock, "/healthz?strict=1") == (
                503,
                {"status": "degraded"},
            )

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        reloads = daemon.log_text().count("signing keys reloaded (")
        replace_atomically(cert_path, pem(in_place))
        wait_for("good again", lambda: daemon.log_text().count("signing keys reloaded (") > reloads)
        health = daemon.health()
        assert health["status"] == "ok" and health["signing_keys_valid"], health
        assert health["signing_keys_error"] is None and health["signing_kid"]
        assert get_json_over_unix(daemon.sock, "/healthz?strict=1") == (200, {"status": "ok"})
        os.link(cert_path, elsewhere / "tokend.crt")
        unseen = certificate_for(key_path, days=62)
        write_in_place(elsewhere / "tokend.crt", pem(unseen))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for("SIGHUP reload", lambda: leaves(daemon) == {der64(unseen)})
        assert "SIGHUP" in RELOADED.findall(daemon.log_text())
    finally:
        stop_process(daemon.process)


def test_every_worker_renews_and_hears_sighup(tmp_path: Path) -> None:
    """--workers 2: each worker watches the files itself, and the parent passes SIGHUP on."""
    daemon = start(tmp_path, workers="2")
    try:
        key_path, cert_path = tmp_path / "p256.key", tmp_path / "p256.crt"
        renewed = certificate_for(key_path, days=90)
        replace_atomically(cert_path, pem(renewed))
        wait_for(
            "both workers reloaded",
            lambda: len({pid for pid, _ in RELOADED_IN.findall(daemon.log_text())}) == 2,
        )
        assert leaves(daemon, 24) == {der64(renewed)}
        workers = daemon.health()["workers"]
        assert [(w["signing_keys_valid"], w["signing_keys_error"]) for w in workers] == [
            (True, None)
        ] * 2, workers

        before = daemon.log_text().count("signing keys reloaded (SIGHUP): unchanged")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(
            "SIGHUP in both workers",
            lambda: (
                daemon.log_text().count("signing keys reloaded (SIGHUP): unchanged") == before + 2
            ),
        )
    finally:
        stop_process(daemon.process)


def post_form(sock: Path, form: list[tuple[str, str]]) -> tuple[int, Any]:
    connection = UnixHTTPConnection(sock)
    try:
        body = urlencode(form)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/v2/token", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def refreshed(sock: Path, refresh_token: str) -> tuple[int, Any]:
    form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("service", "svc"),
        ("client_id", "docker"),
        ("scope", "repository:team/app:pull"),
    ]
    return post_form(sock, form)


def kid(token: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"])


def test_a_rotation_in_the_keys_directory_logs_nobody_out_until_the_old_key_retires(
    tmp_path: Path,
) -> None:
    """tokend keys new, activate, retire on the directory of a running daemon: the new key
    signs from the activation on, a refresh token of the old key still works while it is
    previous, and refuses once it is retired. No restart."""
    write_policy(tmp_path / "config", {"alice": ("alice-pw", {"*": ["pull"]})})
    keys = tmp_path / "keys"
    first = create_key(keys)
    sock = tmp_path / "run" / "tokend.sock"
    sock.parent.mkdir()
    log = tmp_path / "tokend.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(tmp_path / "config"),
        "--keys-dir", str(keys), "--issuer", "iss", "--service", "svc", "--bcrypt-threads", "1",
        log=log,
    )  # fmt: skip
    try:
        wait_for(
            "started",
            lambda: log.exists() and "tokend listening on" in log.read_text(),
            process=process,
            log=log,
        )
        auth = base64.b64encode(b"alice:alice-pw").decode()
        status, login = get_json_over_unix(
            sock,
            "/v2/token?service=svc&client_id=docker&offline_token=true",
            {"Authorization": f"Basic {auth}"},
        )
        assert status == 200 and login["refresh_token"], login
        old_kid = kid(login["token"])
        second = create_key(keys, "Ed25519")

        def signing_kid() -> str:
            status, body = refreshed(sock, login["refresh_token"])
            assert status == 200, body
            return kid(body["access_token"])

        assert signing_kid() == old_kid, "a next key is published, not signing"
        assert activate(keys) == (second, first)
        wait_for("the next key signs", lambda: signing_kid() != old_kid)

        retire(keys, first)
        wait_for("retired", lambda: refreshed(sock, login["refresh_token"])[0] == 400)
        status, body = refreshed(sock, login["refresh_token"])
        assert body["error"] == "invalid_grant", body
        assert "signing keys reloaded" in log.read_text()
    finally:
        stop_process(process)
