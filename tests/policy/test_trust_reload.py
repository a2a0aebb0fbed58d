"""issuers.json follows live edits with the real watchdog observer and reloader: a trust added,
edited or removed takes effect at once, as one generation with the other files, and a broken
issuers.json keeps the last good policy and says where it is wrong."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import write_policy
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, capturedLogs

from tokend.login.identity import FEDERATED_SOURCE, Identity
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import FEDERATED
from tokend.policy.reload import PolicyReloader
from tokend.policy.watcher import PolicyWatchService
from tokend.scope import parse_scope
from tokend.threads import ThreadPoolService

GITHUB = "https://token.actions.githubusercontent.com"
CLAIMS = {
    "iss": GITHUB,
    "aud": "https://registry.example.com",
    "repository": "acme/app",
    "repository_owner": "acme",
    "ref": "refs/heads/main",
    "exp": 2000000000,
}


def trust(**rules: list[str]) -> dict[str, Any]:
    return {
        "issuer": GITHUB,
        "audience": "https://registry.example.com",
        "conditions": {"repository_owner": "acme"},
        "account": "github:${claim.repository}",
        "groups": ["ci"],
        "rules": rules or {"${claim.repository}": ["pull", "push"]},
    }


class Watched:
    """The policy in force for a config directory, following its edits."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.holder = PolicyHolder(load_policy(config).policy, reactor.seconds())
        self.pool = ThreadPoolService(reactor, 1, "test-reload")
        self.reloader = PolicyReloader(config, self.holder, reactor, self.pool)
        self.watcher = PolicyWatchService(config, self.reloader.reload, reactor)

    def grants(self, trust_name: str, scope: str) -> Any:
        """What a token of ``trust_name`` with :data:`CLAIMS` gets now (None: no such trust)."""
        policy = self.holder.current
        found = policy.trusts.get(trust_name)
        if found is None or not found.admits(CLAIMS):
            return None
        account = found.account_for(CLAIMS)
        assert account is not None
        who = Identity(
            account,
            FEDERATED_SOURCE,
            rights_from=FEDERATED,
            trust=trust_name,
            claim_values=found.claim_values(CLAIMS),
        )
        return policy.grant(account, parse_scope(scope), policy.rights(who))

    async def reloaded_past(self, generation: int) -> None:
        deadline = time.monotonic() + 10
        while self.holder.generation <= generation:
            assert time.monotonic() < deadline, "no reload happened"
            await deferLater(reactor, 0.02)

    async def failed_since(self, moment: float) -> None:
        deadline = time.monotonic() + 10
        while (self.holder.failed_at or 0) < moment:
            assert time.monotonic() < deadline, "no failed reload was recorded"
            await deferLater(reactor, 0.02)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    config = tmp_path / "config"
    write_policy(config, {"alice": ("pw", {"*": ["pull"]})}, {"repositories": []})
    (config / "groups.json").write_text(json.dumps({"ci": {"repositories": {"base/*": ["pull"]}}}))
    live = Watched(config)
    live.pool.startService()
    live.watcher.startService()
    yield live
    live.watcher.stopService()
    live.pool.stopService()


def reload_lines(events: list[LogEvent]) -> list[str]:
    return [e["summary"] for e in events if "summary" in e and "generation" in e]


@pytest_twisted.ensureDeferred
async def test_a_trust_added_edited_and_removed_live_takes_effect_at_once(
    watched: Watched,
) -> None:
    issuers = watched.config / "issuers.json"
    assert watched.grants("gh", "repository:acme/app:pull,push") is None
    with capturedLogs() as events:
        generation = watched.holder.generation
        issuers.write_text(json.dumps({"trusts": {"gh": trust()}}))
        await watched.reloaded_past(generation)
        assert watched.grants("gh", "repository:acme/app:pull,push") == ("pull", "push")
        assert watched.grants("gh", "repository:base/python:pull") == ("pull",)

        generation = watched.holder.generation
        issuers.write_text(
            json.dumps({"trusts": {"gh": trust(**{"${claim.repository}": ["pull"]})}})
        )
        await watched.reloaded_past(generation)
        assert watched.grants("gh", "repository:acme/app:pull,push") == ("pull",)

        generation = watched.holder.generation
        groups = watched.config / "groups.json"
        groups.write_text(json.dumps({"ci": {"repositories": {"base/*": []}}}))
        await watched.reloaded_past(generation)
        assert watched.grants("gh", "repository:base/python:pull") == ()

        generation = watched.holder.generation
        issuers.unlink()
        await watched.reloaded_past(generation)
        assert watched.grants("gh", "repository:acme/app:pull") is None
    lines = reload_lines(events)
    assert len(lines) == 4, lines
    assert "issuers.json: added ['gh']" in lines[0]
    assert "issuers.json: changed ['gh']" in lines[1]
    assert "groups.json: changed ['ci']" in lines[2]
    assert "issuers.json: trusts whose groups changed ['gh']" in lines[2]
    assert "issuers.json: removed ['gh']" in lines[3]


@pytest_twisted.ensureDeferred
async def test_a_broken_issuers_json_keeps_the_last_good_policy_and_says_where(
    watched: Watched,
) -> None:
    issuers = watched.config / "issuers.json"
    generation = watched.holder.generation
    issuers.write_text(json.dumps({"trusts": {"gh": trust()}}, indent=2))
    await watched.reloaded_past(generation)
    good = watched.holder.generation

    started = time.time()
    with capturedLogs() as events:
        issuers.write_text(json.dumps({"trusts": {"gh": trust()}}, indent=2)[:-30])
        await watched.failed_since(started)
    errors = [e for e in events if e["log_level"].name == "error"]
    assert errors, "the failed reload was not logged"
    error = errors[-1]
    assert error["file"] == str(issuers)
    assert isinstance(error["line"], int) and isinstance(error["column"], int)
    assert error["why"]
    assert (
        error["error"]
        == f"{issuers}: line {error['line']} column {error['column']}: {error['why']}"
    )
    assert watched.holder.generation == good
    assert watched.grants("gh", "repository:acme/app:pull,push") == ("pull", "push")
    assert "issuers.json" in (watched.holder.last_error or "")

    started = time.time()
    with capturedLogs() as events:
        broken = trust()
        broken["groups"] = ["cd"]
        issuers.write_text(json.dumps({"trusts": {"gh": broken}}))
        await watched.failed_since(started)
    error = [e for e in events if e["log_level"].name == "error"][-1]
    assert (error["file"], error["path"], error["why"]) == (
        str(issuers),
        "trusts.gh.groups[0]",
        'no group "cd" in groups.json',
    )
    assert watched.holder.generation == good
    assert watched.grants("gh", "repository:acme/app:pull,push") == ("pull", "push")

    generation = watched.holder.generation
    issuers.write_text(json.dumps({"trusts": {"gh": trust(**{"${claim.repository}": ["pull"]})}}))
    await watched.reloaded_past(generation)
    assert watched.holder.files_valid
    assert watched.grants("gh", "repository:acme/app:pull,push") == ("pull",)
