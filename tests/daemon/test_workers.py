"""``--workers 2`` with the real twistd: one socket served by two worker processes.

Both workers answer (two pids in the issued lines), a SIGKILLed worker is replaced, a policy edit
and a SIGHUP reach every worker (each worker's generation on the metrics listener's /healthz),
login limits hold in total across them, and SIGTERM stops them all and removes the socket. A
worker that cannot start stops start-up with one sentence.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import ACCOUNT_LIMIT, Daemon, start, worker_pids
from support import (
    UnixHTTPConnection,
    stop_process,
    wait_for,
    write_policy,
)
from twisted.logger import Logger

from tokend.daemon.supervisor import Supervisor


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = start(tmp_path)
    try:
        yield running
    finally:
        stop_process(running.process)


def scraped_workers(metrics: Path) -> set[str]:
    """The worker indexes whose series the parent's /metrics holds: those that answered it."""
    connection = UnixHTTPConnection(metrics)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return set(re.findall(r'^tokend_policy_generation\{worker="(\d+)"\}', text, re.MULTILINE))


def test_two_workers_serve_one_socket_and_share_the_login_limits(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.sock"
    daemon = start(tmp_path, "--metrics", f"unix:{metrics}")
    try:
        share_the_login_limits(daemon, metrics)
    finally:
        stop_process(daemon.process)


def share_the_login_limits(daemon: Daemon, metrics: Path) -> None:
    """Ten wrong passwords for alice, five answered by each worker (the other one is stopped
    meanwhile, so which worker accepts is not left to the kernel): the workers share them,
    so the eleventh attempt is refused by either worker, with the right password too.

    Nothing here waits on time. A worker counts a failure and sends its news to the parent
    before the log line of the answer, on the same stream, so a refusal in the log means the
    parent has its news and has passed it on. The parent sends each worker the news and its
    scrape requests on one stream too, so a scrape both workers answered means both have taken
    in every failure before it."""
    workers = worker_pids(daemon.process.pid)
    assert len(workers) == 2
    wait_for("both workers to answer on the one socket", lambda: daemon.pids_seen() == workers)
    first, second = sorted(workers)
    answered: dict[str, int] = {}

    def refusals() -> dict[str, int]:
        """pid -> wrong passwords for alice it answered, as the log says."""
        return dict(Counter(re.findall(r"pid (\d+)\].*401 .*'alice'", daemon.log_text())))

    def both_caught_up() -> None:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        wait_for("a scrape both workers answer", lambda: scraped_workers(metrics) == {"0", "1"})

    try:
        for serving, stopped in ((first, second), (second, first)):
            os.kill(stopped, signal.SIGSTOP)  # pending when kill returns: it accepts no more
            for _ in range(ACCOUNT_LIMIT // 2):
                assert daemon.login("alice", "wrong") == 401
            answered[str(serving)] = ACCOUNT_LIMIT // 2
            wait_for(f"worker {serving}'s refusals in the log", lambda: refusals() == answered)
            both_caught_up()
        for serving, stopped in ((first, second), (second, first)):
            os.kill(stopped, signal.SIGSTOP)
            assert daemon.login("alice", "alice-pw") == 429, f"worker {serving}"
            os.kill(stopped, signal.SIGCONT)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert daemon.login("bob", "bob-pw") == 200, "another account is not limited"


def test_a_killed_worker_is_replaced_edits_and_sighup_reach_every_worker(
    tmp_path: Path, daemon: Daemon
) -> None:
    parent = daemon.process.pid
    before = worker_pids(parent)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for("a replacement", lambda: len(worker_pids(parent) - {victim}) == 2)
    after = worker_pids(parent)
    assert victim not in after and len(after) == 2
    wait_for("the new worker serves", lambda: daemon.pids_seen(20) == after)
    text = daemon.log_text()
    assert f"(pid {victim}) ended after" in text and "starting another in" in text

    config = tmp_path / "config"
    write_policy(
        config,
        {"carol": ("carol-pw", {"*": ["pull"]})},
        {"repositories": ["pub/x"]},
    )

    def both_reloaded() -> bool:
        return daemon.generations() == dict.fromkeys(after, 2)

    wait_for("the edit in every worker", both_reloaded)
    assert {daemon.login("carol", "carol-pw") for _ in range(6)} == {200}

    os.kill(parent, signal.SIGHUP)
    wait_for(
        "SIGHUP passed on",
        lambda: "SIGHUP: reloading the policy and signing keys in 2 workers" in daemon.log_text()
        and all(f"pid {pid}]" in daemon.log_text().split("SIGHUP: reloading")[-1]
                for pid in after),
    )  # fmt: skip


def test_sigterm_stops_every_worker_and_removes_the_socket(daemon: Daemon) -> None:
    workers = worker_pids(daemon.process.pid)
    assert stop_process(daemon.process) == -signal.SIGTERM
    assert not daemon.sock.exists()
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_auto_is_one_worker_per_cpu(tmp_path: Path) -> None:
    running = start(tmp_path, workers="auto")
    try:
        assert len(worker_pids(running.process.pid)) == (os.cpu_count() or 1)
    finally:
        stop_process(running.process)


def test_a_worker_that_cannot_start_stops_start_up_with_one_sentence(tmp_path: Path) -> None:
    """The parent validated the options already; here the worker gets options that fail (as a
    key unreadable after twistd --uid would): start-up ends with the worker's sentence."""
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "s.sock"))
    listening.listen()
    sentences: list[str] = []

    class Port:
        socket = listening

        def stopReading(self) -> None:
            pass

        def fileno(self) -> int:
            return listening.fileno()

    def failed(log: Logger, sentence: str, **fields: Any) -> Any:
        sentences.append(sentence.format(**fields))
        raise SystemExit(1)

    from twisted.internet import reactor

    supervisor = Supervisor(
        count=2, argv=["--token-ttl", "5"], port=Port, reactor=reactor, failed=failed
    )
    with pytest.raises(SystemExit):
        supervisor.startService()
    listening.close()
    assert sentences == ["worker 0 could not start: --token-ttl must be between 60 and 3600"]


def test_a_workers_line_is_the_line_the_parent_wrote_from_its_event() -> None:
    """Workers format their lines themselves now; before, the parent got the event (as JSON)
    and formatted it with twistd's text observer or --log-format json. Same lines."""
    from twisted.logger import LogLevel, eventAsJSON, eventFromJSON

    from tokend.daemon.worker_logs import marked
    from tokend.logs.json_lines import event_as_json
    from tokend.logs.text_lines import format_text_line

    event = {
        "log_format": "issued {flow} token to {account!r} from {client}: granted {granted}",
        "flow": "GET",
        "account": "bar\\x1b",
        "client": "127.0.0.1",
        "granted": ["repository:pub/x:pull"],
        "outcome": "issued",
        "log_level": LogLevel.info,
        "log_namespace": "tokend.web.TokenAPI",
        "log_time": 1795694187.123,
        "log_source": None,
    }
    relayed = eventFromJSON(eventAsJSON(event))  # what the parent read before
    assert format_text_line(marked(event, 4242)) == format_text_line(marked(relayed, 4242))
    assert format_text_line(marked(event, 4242)).endswith(  # type: ignore[union-attr]
        " [tokend.web.TokenAPI#info pid 4242] issued GET token to 'bar\\\\x1b' from 127.0.0.1: "
        "granted ['repository:pub/x:pull']\n"
    )
    assert event_as_json(event) == event_as_json(relayed)


def test_json_lines_from_two_workers(tmp_path: Path) -> None:
    """Each worker's line names its pid and its index, as a text line says ``pid N``; the
    first process's own lines name neither."""
    running = start(tmp_path, "--log-format", "json")
    try:
        workers = worker_pids(running.process.pid)
        for _ in range(10):
            assert running.request("/v2/token?service=svc")[0] == 200
        wait_for("the lines", lambda: running.log_text().count('"outcome":"issued"') == 10)
        records = [json.loads(line) for line in running.log_text().splitlines()]
    finally:
        stop_process(running.process)
    issued = [r for r in records if r.get("outcome") == "issued"]
    assert {r["namespace"] for r in issued} == {"tokend.web.TokenAPI"}
    assert all(r["level"] == "info" and r["time"].endswith("Z") for r in issued)
    assert {r["pid"] for r in issued} <= workers
    assert {r["worker"] for r in issued} <= {0, 1}
    ready = {r["pid"]: r["worker"] for r in records if r.get("pid") in workers}
    assert sorted(ready.values()) == [0, 1], "each worker has its own index"
    assert all(ready[r["pid"]] == r["worker"] for r in issued)
    (serving,) = [r for r in records if r["text"].startswith("2 workers serving")]
    assert "pid" not in serving and "worker" not in serving
