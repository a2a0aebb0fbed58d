"""An issuer's keys over real HTTPS (Twisted's TLS listener with a test CA, Twisted's Agent):
discovery, Cache-Control, rotation, the unknown-kid refetch limit, outages and what is logged,
the size limit and certificate verification. Time as IssuerKeys sees it is a task.Clock; the
network is real."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from issuer_server import Issuer
from minting import IssuerKey, jwks
from minting import trust as github_trust
from prometheus_client import CollectorRegistry
from support import free_port
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from tokend.login.federation.fetch import FetchFailed, fetchable, max_age
from tokend.login.federation.issuer_keys import (
    MAX_MAX_AGE,
    MIN_MAX_AGE,
    IssuerKeys,
    IssuerUnavailable,
    kids,
)
from tokend.metrics.instruments import Metrics
from tokend.policy.trusts import Trust
from tokend.web.issuer_fetch import AgentFetch

reactor: Any = global_reactor
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
FIRST = IssuerKey.generate("RS256", "k1")
SECOND = IssuerKey.generate("ES256", "k2")


@pytest.fixture
def issuer(tmp_path: Path) -> Any:
    running = Issuer(reactor, tmp_path / "issuer", jwks(FIRST))
    yield running
    pytest_twisted.blockon(running.stop())


def trust_of(issuer: Issuer, **changes: Any) -> Trust:
    return replace(github_trust(issuer=issuer.url, ca_file=issuer.ca_file), **changes)


class Keys:
    """IssuerKeys on the real reactor and network, with its own clock and metrics."""

    def __init__(self, refetch_interval: float = 30.0) -> None:
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.registry = CollectorRegistry()
        self.keys = IssuerKeys(
            reactor,
            AgentFetch(reactor),
            self.clock.seconds,
            Metrics(self.registry),
            refetch_interval,
        )

    def fetches(self, trust: str, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "tokend_federation_key_fetches_total", {"trust": trust, "outcome": outcome}
        )
        return value or 0.0


def ours(events: list[Any]) -> list[str]:
    """What tokend logged (not the test issuer's access log)."""
    return [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("tokend.")]


def warnings(events: list[Any]) -> list[str]:
    return ours([e for e in events if e["log_level"] >= LogLevel.warn])


@pytest_twisted.ensureDeferred
async def test_discovery_then_the_key_set_it_names(issuer: Issuer) -> None:
    keys = Keys()
    trust = trust_of(issuer)
    found = await keys.keys.keys(trust, "k1")
    assert kids(found) == ["k1"]
    assert issuer.state.asked == ["discovery", "jwks"]
    assert keys.fetches("github-actions", "fetched") == 1
    again = await keys.keys.keys(trust, "k1")
    assert again is found
    assert issuer.state.asked == ["discovery", "jwks"]


@pytest_twisted.ensureDeferred
async def test_an_explicit_jwks_uri_skips_discovery(issuer: Issuer) -> None:
    keys = Keys()
    found = await keys.keys.keys(trust_of(issuer, jwks_uri=f"{issuer.url}/jwks"), None)
    assert kids(found) == ["k1"]
    assert issuer.state.asked == ["jwks"]


@pytest_twisted.ensureDeferred
async def test_the_key_set_is_kept_for_its_max_age(issuer: Issuer) -> None:
    issuer.state.cache_control = "public, max-age=120"
    keys = Keys()
    trust = trust_of(issuer, jwks_uri=f"{issuer.url}/jwks")
    await keys.keys.keys(trust, "k1")
    keys.clock.advance(119)
    await keys.keys.keys(trust, "k1")
    assert issuer.state.count("jwks") == 1
    issuer.state.jwks = jwks(FIRST, SECOND)
    keys.clock.advance(1)
    stale = await keys.keys.keys(trust, "k1")
    assert kids(stale) == ["k1"]  # answered at once; the refetch runs behind it
    # A token of the new key waits for that refetch rather than starting another.
    assert kids(await keys.keys.keys(trust, "k2")) == ["k1", "k2"]
    assert issuer.state.asked == ["jwks", "jwks"]


@pytest.mark.parametrize(
    ("header", "kept"),
    [("max-age=5", MIN_MAX_AGE), ("max-age=9999999", MAX_MAX_AGE), ("no-store", MIN_MAX_AGE)],
)
@pytest_twisted.ensureDeferred
async def test_max_age_is_held_within_bounds(issuer: Issuer, header: str, kept: int) -> None:
    issuer.state.cache_control = header
    keys = Keys()
    found = await keys.keys.find(trust_of(issuer))
    assert found.max_age == kept
    assert found.jwks_uri == f"{issuer.url}/jwks"


@pytest_twisted.ensureDeferred
async def test_a_new_kid_is_fetched_at_once(issuer: Issuer) -> None:
    keys = Keys()
    trust = trust_of(issuer)
    await keys.keys.keys(trust, "k1")
    issuer.state.jwks = jwks(FIRST, SECOND)
    with capturedLogs() as events:
        found = await keys.keys.keys(trust, "k2")
    assert kids(found) == ["k1", "k2"]
    assert ours(events) == [f"issuer keys of github-actions: ['k1', 'k2'] from {issuer.url}/jwks"]


@pytest_twisted.ensureDeferred
async def test_unknown_kids_refetch_at_most_once_per_interval(issuer: Issuer) -> None:
    keys = Keys()
    trust = trust_of(issuer)
    await keys.keys.keys(trust, "k1")
    assert issuer.state.count("jwks") == 1
    for made_up in ("forged-1", "forged-2", "forged-3"):
        assert kids(await keys.keys.keys(trust, made_up)) == ["k1"]
    assert issuer.state.count("jwks") == 2
    keys.clock.advance(29)
    await keys.keys.keys(trust, "forged-4")
    assert issuer.state.count("jwks") == 2
    keys.clock.advance(1)
    await keys.keys.keys(trust, "forged-5")
    assert issuer.state.count("jwks") == 3


@pytest_twisted.ensureDeferred
async def test_requests_arriving_together_share_one_fetch(issuer: Issuer) -> None:
    keys = Keys()
    trust = trust_of(issuer)
    answers = await gatherResults(
        [Deferred.fromCoroutine(keys.keys.keys(trust, "k1")) for _ in range(5)]
    )
    assert [kids(answer) for answer in answers] == [["k1"]] * 5
    assert issuer.state.asked == ["discovery", "jwks"]


@pytest_twisted.ensureDeferred
async def test_an_issuer_outage_keeps_the_keys_and_is_logged_once(issuer: Issuer) -> None:
    keys = Keys()
    trust = trust_of(issuer)
    await keys.keys.keys(trust, "k1")
    await issuer.stop()
    with capturedLogs() as events:
        for _ in range(3):
            keys.clock.advance(30)
            assert kids(await keys.keys.keys(trust, "rotated")) == ["k1"]
    [warning] = warnings(events)
    assert warning.startswith(
        f"issuer keys of github-actions cannot be fetched ({issuer.url}/.well-known/"
        "openid-configuration: cannot connect"
    )
    assert warning.endswith("; the keys fetched before are kept")
    assert keys.fetches("github-actions", "failed") == 3
    issuer.state.jwks = jwks(FIRST, SECOND)
    issuer.start()
    keys.clock.advance(30)
    with capturedLogs() as events:
        assert kids(await keys.keys.keys(trust, "k2")) == ["k1", "k2"]
    assert ours(events)[0].startswith(
        f"issuer keys of github-actions: fetched again from {issuer.url}/jwks after failing"
    )


@pytest_twisted.ensureDeferred
async def test_an_issuer_never_reached_is_unavailable() -> None:
    keys = Keys()
    trust = github_trust(issuer=f"https://localhost:{free_port()}")
    with capturedLogs() as events, pytest.raises(IssuerUnavailable) as unavailable:
        await keys.keys.keys(trust, "k1")
    assert unavailable.value.retry_after == 30
    assert "cannot connect" in unavailable.value.reason
    keys.clock.advance(10)
    with pytest.raises(IssuerUnavailable) as again:
        await keys.keys.keys(trust, "k1")
    assert again.value.retry_after == 20
    assert keys.fetches("github-actions", "failed") == 1
    [warning] = warnings(events)
    assert warning.endswith("; its tokens are refused with 503 until they are")


@pytest_twisted.ensureDeferred
async def test_a_key_set_over_the_size_limit_is_refused(issuer: Issuer) -> None:
    keys = Keys()
    issuer.state.padding = 2 * 1024 * 1024
    with pytest.raises(FetchFailed, match=r"/jwks: an answer over 1048576 bytes$"):
        await keys.keys.find(trust_of(issuer))
    issuer.state.chunked = True
    with pytest.raises(FetchFailed, match=r"/jwks: an answer over 1048576 bytes$"):
        await keys.keys.find(trust_of(issuer))


@pytest_twisted.ensureDeferred
async def test_a_server_the_trust_does_not_vouch_for_is_refused(issuer: Issuer) -> None:
    keys = Keys()
    with pytest.raises(FetchFailed, match="certificate is not trusted"):
        await keys.keys.find(trust_of(issuer, ca_file=None))
    with pytest.raises(FetchFailed, match="certificate is not trusted"):
        await keys.keys.find(trust_of(issuer, ca_file=issuer.other_ca.path))
    assert issuer.state.asked == []


@pytest_twisted.ensureDeferred
async def test_a_discovery_document_naming_another_issuer_is_refused(issuer: Issuer) -> None:
    issuer.state.discovery_issuer = "https://attacker.example"
    with pytest.raises(FetchFailed, match="openid-configuration names another issuer"):
        await Keys().keys.find(trust_of(issuer))
    assert issuer.state.asked == ["discovery"]


@pytest_twisted.ensureDeferred
async def test_a_jwks_file_is_read_and_reread_for_a_new_kid(tmp_path: Path) -> None:
    path = tmp_path / "cluster-jwks.json"
    path.write_text(json.dumps(jwks(FIRST)))
    keys = Keys()
    trust = github_trust(issuer="https://kubernetes.default.svc", jwks_file=path)
    assert kids(await keys.keys.keys(trust, "k1")) == ["k1"]
    path.write_text(json.dumps(jwks(FIRST, SECOND)))
    assert kids(await keys.keys.keys(trust, "k2")) == ["k1", "k2"]
    missing = replace(trust, jwks_file=tmp_path / "absent.json")
    with pytest.raises(IssuerUnavailable, match=r"absent\.json: No such file"):
        await keys.keys.keys(missing, "k1")


def test_only_https_or_the_loopback_is_fetched() -> None:
    assert fetchable("https://token.actions.githubusercontent.com/.well-known/jwks") is None
    assert fetchable("http://127.0.0.1:8080/jwks") is None
    assert fetchable("http://localhost/jwks") is None
    assert fetchable("http://issuer.example.com/jwks") == "not an https:// URL"
    assert fetchable("file:///etc/passwd") == "not an https:// URL"
    assert fetchable("https://") == "not an https:// URL"
    assert fetchable("http://[::1") == "not a URL"


def test_cache_control_max_age() -> None:
    assert max_age(None) is None
    assert max_age("public") is None
    assert max_age("public, max-age=3600, must-revalidate") == 3600
    assert max_age('max-age="60"') == 60
    assert max_age("s-maxage=10") is None
    assert max_age("no-cache") == 0
    assert max_age("private, no-store") == 0
