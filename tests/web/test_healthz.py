"""/healthz through the web layer (StubTreq, a Clock, reloads run inline): the token listener
says only ``ok`` or ``degraded``; the metrics listener's /healthz says about the policy serving
and, separately, about the files on disk (pid, generation, times, the error)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from realms import realm_api
from support import settled, write_key_pair, write_policy
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.reload import PolicyReloader
from tokend.threads import InlineRunner
from tokend.web.health import PolicyHealth, WorkersHealth, workers_details

NOW = 1_800_000_000


class Probe:
    """A TokenAPI whose policy reloads from ``config`` when told to, and a /healthz client."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config"
        write_policy(self.config, {"foo": ("foo", {"*": ["pull"]})})
        key_path, cert_path = write_key_pair(tmp_path)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.holder = PolicyHolder(load_policy(self.config).policy, NOW)
        self.reloader = PolicyReloader(self.config, self.holder, self.clock, InlineRunner())
        api = realm_api(self.holder, (key_path, cert_path), clock=self.clock)
        self.http = StubTreq(api.resource())
        self.metrics = StubTreq(PolicyHealth(self.holder))
        self.good = (self.config / "users.json").read_text()

    def edit(self, text: str) -> None:
        self.clock.advance(10)
        (self.config / "users.json").write_text(text)
        settled(self.reloader.reload("test"))

    def health(self, query: str = "") -> tuple[int, Any]:
        """The metrics listener's /healthz, with the details."""
        return answer(self.metrics, "http://metrics/healthz" + query)

    def token_health(self, query: str = "") -> tuple[int, Any]:
        """The token listener's /healthz."""
        return answer(self.http, "http://tokend/healthz" + query)


def answer(http: StubTreq, url: str) -> tuple[int, Any]:
    response = settled(http.get(url))
    return response.code, json.loads(settled(http.content(response)))


@pytest.fixture
def probe(tmp_path: Path) -> Probe:
    return Probe(tmp_path)


def test_a_fresh_start_is_ok(probe: Probe) -> None:
    code, body = probe.health()
    assert code == 200
    assert body == {
        "status": "ok",
        "serving": True,
        "pid": os.getpid(),
        "files_valid": True,
        "policy_generation": 1,
        "policy_loaded_at": "2027-01-15T08:00:00Z",
        "policy_failed_at": None,
        "policy_error": None,
    }
    assert probe.health("?strict=1") == (200, body)


def test_the_token_listener_says_ok_or_degraded_and_nothing_else(probe: Probe) -> None:
    """No pid, no generation, no error text (which quotes the policy files) where anyone who
    reaches the token listener may ask."""
    assert probe.token_health() == (200, {"status": "ok"})
    assert probe.token_health("?strict=1") == (200, {"status": "ok"})
    probe.edit(probe.good[:-5])
    assert probe.token_health() == (200, {"status": "degraded"})
    assert probe.token_health("?strict=1") == (503, {"status": "degraded"})
    assert probe.token_health("?strict=false") == (200, {"status": "degraded"})
    code, body = probe.token_health("?strict=maybe")
    assert code == 400 and "strict" in body["errors"][0]["message"]


def test_a_bad_edit_degrades_but_the_old_policy_still_serves(probe: Probe) -> None:
    probe.edit(probe.good[:-5])
    code, body = probe.health()
    assert code == 200
    assert body["status"] == "degraded"
    assert body["serving"] is True
    assert body["files_valid"] is False
    assert body["policy_generation"] == 1
    assert body["policy_loaded_at"] == "2027-01-15T08:00:00Z"
    assert body["policy_failed_at"] == "2027-01-15T08:00:10Z"
    assert "users.json" in body["policy_error"]

    strict_code, strict_body = probe.health("?strict=1")
    assert (strict_code, strict_body) == (503, body)
    assert probe.health("?strict=true")[0] == 503
    assert probe.health("?strict=0") == (200, body)


def test_a_good_edit_after_a_bad_one_clears_the_error(probe: Probe) -> None:
    probe.edit(probe.good[:-5])
    probe.edit(probe.good)
    code, body = probe.health("?strict=1")
    assert code == 200
    assert body["status"] == "ok"
    assert body["files_valid"] is True
    assert body["policy_error"] is None
    assert body["policy_failed_at"] is None
    assert body["policy_generation"] == 2
    assert body["policy_loaded_at"] == "2027-01-15T08:00:20Z"
    assert (probe.holder.reloads_ok, probe.holder.reloads_failed) == (1, 1)
    assert probe.holder.files_valid
    assert probe.holder.last_success_at == NOW + 20


def test_a_second_bad_edit_reports_the_latest_failure(probe: Probe) -> None:
    probe.edit(probe.good[:-5])
    probe.edit("{}{")
    _, body = probe.health()
    assert body["policy_failed_at"] == "2027-01-15T08:00:20Z"
    assert body["policy_generation"] == 1
    assert probe.holder.reloads_failed == 2


def test_strict_takes_only_yes_or_no(probe: Probe) -> None:
    for query in ("?strict=maybe", "?strict="):
        code, body = probe.health(query)
        assert code == 400, query
        assert body["errors"][0]["code"] == "BAD_REQUEST"
        assert "strict" in body["errors"][0]["message"]


class Workers:
    """The parent of --workers 2 as WorkersHealth sees it: what each worker answered."""

    count = 2

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.answers = answers

    def health(self) -> Deferred[list[tuple[int, bytes]]]:
        return succeed(self.answers)


def worker_body(probe: Probe, pid: int) -> bytes:
    return json.dumps({**probe.health()[1], "pid": pid}).encode()


def test_with_workers_every_workers_details_and_the_worst_status(probe: Probe) -> None:
    ok = worker_body(probe, 101)
    probe.edit(probe.good[:-5])
    degraded = worker_body(probe, 102)
    http = StubTreq(WorkersHealth(Workers([(1, degraded), (0, ok)])))
    code, body = answer(http, "http://metrics/healthz")
    assert code == 200
    assert (body["status"], body["pid"], body["serving"]) == ("degraded", os.getpid(), True)
    assert [(w["worker"], w["pid"], w["status"]) for w in body["workers"]] == [
        (0, 101, "ok"),
        (1, 102, "degraded"),
    ]
    assert "users.json" in body["workers"][1]["policy_error"]
    assert answer(http, "http://metrics/healthz?strict=1")[0] == 503
    assert (
        answer(StubTreq(WorkersHealth(Workers([(0, ok), (1, ok)]))), "http://m/healthz?strict=1")[0]
        == 200
    )


def test_with_workers_one_that_does_not_answer_is_degraded() -> None:
    ok = json.dumps({"status": "ok", "pid": 7}).encode()
    body = workers_details(2, [(0, ok)])
    assert (body["status"], body["workers_answering"], body["workers_configured"]) == (
        "degraded",
        1,
        2,
    )
    assert workers_details(2, [(0, ok), (1, b"not json")])["status"] == "degraded"
    assert workers_details(2, [])["serving"] is False
