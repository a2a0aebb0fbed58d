"""``--log-format json`` and ``twistd --logger tokend.json_log.observer``: one JSON object per
line, in memory and from the real twistd."""

from __future__ import annotations

import json
import os
import subprocess
from base64 import b64encode
from datetime import datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from support import (
    REPO,
    TWISTD,
    UnixHTTPConnection,
    accepts,
    start_twistd,
    stop_process,
    wait_for,
    write_key_pair,
    write_policy,
)
from twisted.application.service import Application
from twisted.logger import ILogObserver, LogEvent, Logger, LogPublisher

from tokend.logs.json_lines import LoggingRoot, event_as_json, json_observer_for, json_observer_to


def logged(emit: Any) -> list[dict[str, Any]]:
    """The JSON lines that ``emit(log)`` produces, parsed, after checking each is one line."""
    out = StringIO()
    publisher = LogPublisher(json_observer_to(out))
    emit(Logger(namespace="tokend.test", observer=publisher))
    text = out.getvalue()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == text.count("\n"), "a record contains a line break of its own"
    assert text.isascii()
    return [json.loads(line) for line in lines]


def test_a_request_event_becomes_one_object_with_its_structured_fields() -> None:
    (record,) = logged(
        lambda log: log.info(
            "issued {flow} token to '{account}' from {client}",
            flow="GET",
            grant="password",
            account="alice",
            client="10.0.0.1",
            client_id="docker",
            asked=["repository:a:pull"],
            granted=["repository:a:pull"],
            outcome="issued",
            refresh_token=None,
            password_hint="not copied",
        )
    )
    assert record.pop("time").endswith("Z")
    assert record == {
        "level": "info",
        "text": "issued GET token to 'alice' from 10.0.0.1",
        "namespace": "tokend.test",
        "outcome": "issued",
        "grant": "password",
        "flow": "GET",
        "account": "alice",
        "client": "10.0.0.1",
        "client_id": "docker",
        "asked": ["repository:a:pull"],
        "granted": ["repository:a:pull"],
    }


def test_time_is_rfc3339_utc() -> None:
    event: LogEvent = {"log_time": 1_800_000_000.25, "log_format": "x"}
    record = json.loads(event_as_json(event))
    assert record["time"] == "2027-01-15T08:00:00.250Z"
    assert datetime.fromisoformat(record["time"]).timestamp() == 1_800_000_000.25


def test_line_breaks_and_separators_from_clients_cannot_split_a_line() -> None:
    (record,) = logged(
        lambda log: log.warn(
            "refused {account}", account='eve\n{"forged": 1}\u2028x', status=401, reason="r"
        )
    )
    assert record["account"] == 'eve\n{"forged": 1}\u2028x'
    assert record["level"] == "warn"
    assert (record["status"], record["reason"]) == (401, "r")


def test_a_failure_keeps_its_traceback() -> None:
    def emit(log: Logger) -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("reload went wrong")

    (record,) = logged(emit)
    assert record["level"] == "critical"
    assert record["text"] == "reload went wrong"
    assert "ZeroDivisionError" in record["traceback"]


def test_observer_for_writes_where_twistd_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "tokend.log"
    observer = json_observer_for({"logfile": str(log_file), "nodaemon": True})
    Logger(namespace="n", observer=observer).info("hello {x}", x=1)
    assert json.loads(log_file.read_text())["text"] == "hello 1"
    for config in ({"logfile": "-", "nodaemon": True}, {"logfile": None, "nodaemon": True}):
        Logger(namespace="n", observer=json_observer_for(config)).info("to stdout")
        assert json.loads(capsys.readouterr().out)["text"] == "to stdout"


def test_the_root_hands_twistds_application_its_observer() -> None:
    def observer(event: LogEvent) -> None:
        pass

    application = Application("registry-token")
    LoggingRoot(observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    plain = Application("registry-token")
    LoggingRoot(None).setServiceParent(plain)
    assert plain.getComponent(ILogObserver) is None


@pytest.fixture
def deployment(tmp_path: Path) -> list[str]:
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull"]})}, {"repositories": ["pub/x"]})
    key_path, cert_path = write_key_pair(tmp_path)
    (tmp_path / "run").mkdir()
    return [
        "--listen", f"unix:{tmp_path}/run/tokend.sock", "--config-dir", str(config),
        "--key", str(key_path), "--cert", str(cert_path), "--service", "svc",
    ]  # fmt: skip


def ask_tokens(sock: Path, process: subprocess.Popen[bytes]) -> None:
    wait_for("the socket", lambda: accepts(sock), process=process)
    for password in ("bar", "wrong\n"):
        connection = UnixHTTPConnection(sock)
        auth = b64encode(f"bar:{password}".encode()).decode()
        connection.request(
            "GET",
            "/v2/token?service=svc&scope=repository:pub/x:pull",
            headers={"Authorization": f"Basic {auth}"},
        )
        connection.getresponse().read()
        connection.close()


def lines_of(text: str) -> list[dict[str, Any]]:
    assert text.strip(), "nothing was logged"
    return [json.loads(line) for line in text.splitlines()]


def test_twistd_with_log_format_json_writes_json_lines_to_its_logfile(
    tmp_path: Path, deployment: list[str]
) -> None:
    log = tmp_path / "tokend.log"
    process = start_twistd(*deployment, "--log-format", "json", log=log)
    try:
        ask_tokens(tmp_path / "run" / "tokend.sock", process)
    finally:
        stop_process(process)
    records = lines_of(log.read_text())
    assert records[0]["text"].startswith("twistd ")
    issued = [r for r in records if r.get("outcome") == "issued"]
    refused = [r for r in records if r.get("status") == 401]
    assert [(r["account"], r["grant"], r.get("client_id")) for r in issued] == [
        ("bar", "password", None)
    ]
    assert issued[0]["namespace"] == "tokend.web.TokenAPI"
    assert len(refused) == 1 and refused[0]["level"] == "info"
    assert "wrong" not in log.read_text(), "no password in the log"


def test_twistd_logger_option_takes_the_observer_factory(
    tmp_path: Path, deployment: list[str]
) -> None:
    output = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env["PYTHONPATH"] = str(REPO)
    command = [
        TWISTD, "-n", "--pidfile=", "--logger", "tokend.json_log.observer",
        "registry-token", *deployment,
    ]  # fmt: skip
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            ask_tokens(tmp_path / "run" / "tokend.sock", process)
        finally:
            stop_process(process)
    records = lines_of(output.read_text())
    assert any(r.get("outcome") == "issued" and r["account"] == "bar" for r in records)
    assert records[-1]["text"] == "Server Shut Down."


def test_a_workers_line_names_its_pid_and_index() -> None:
    """As ``--workers`` marks a worker's event (the text line's ``pid N``); others name none."""
    from tokend.daemon.worker_logs import marked

    event: LogEvent = {"log_time": 1_800_000_000, "log_format": "hello", "log_namespace": "n"}
    record = json.loads(event_as_json(marked(event, 4242, 1)))
    assert (record["pid"], record["worker"]) == (4242, 1)
    assert list(record)[:6] == ["time", "level", "text", "namespace", "pid", "worker"]
    assert "pid" not in json.loads(event_as_json(event))
