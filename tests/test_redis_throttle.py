"""``--redis``: two daemons sharing one real ``redis-server`` hold the login limits together.

One daemon runs two workers (its parent talks to Redis), the other one process. Ten failures
for one account spread over both get the next attempt 429 on either; with Redis stopped logins
still work (per-process limits, said once); with Redis back the limits are shared again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer
from support import stop_process
from test_workers import ACCOUNT_LIMIT, Daemon, start, wait_for

from tokend.login.shared_failures import (
    RedisAddress,
    key_of,
    news_from_wire,
    news_to_wire,
    parse_redis_url,
)
from tokend.login.throttle import Failed, Seen, Succeeded


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def daemon(tmp_path: Path, name: str, redis: RedisServer, workers: str) -> Daemon:
    directory = tmp_path / name
    directory.mkdir()
    return start(directory, "--redis", redis.url, workers=workers)


@pytest.fixture
def pair(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[Daemon, Daemon]]:
    started: list[Daemon] = []
    try:
        started.append(daemon(tmp_path, "a", redis, "2"))
        started.append(daemon(tmp_path, "b", redis, "1"))
        for each in started:
            wait_for("subscribed", lambda each=each: "login throttle shared through Redis" in
                     each.log_text())  # fmt: skip
        yield started[0], started[1]
    finally:
        for each in started:
            stop_process(each.process)


def spread_failures(a: Daemon, b: Daemon, account: str) -> None:
    for attempt in range(ACCOUNT_LIMIT):
        assert (a if attempt % 2 else b).login(account, "wrong") == 401


def in_flight() -> None:
    """News travels within milliseconds (worker -> parent -> Redis -> every daemon); a right
    password tried before it lands would succeed and clear the account, so let it land."""
    time.sleep(0.3)


def test_two_daemons_share_limits_and_survive_a_redis_outage(
    pair: tuple[Daemon, Daemon], redis: RedisServer
) -> None:
    a, b = pair
    spread_failures(a, b, "alice")
    in_flight()
    assert b.login("alice", "alice-pw") == 429
    assert {a.login("alice", "alice-pw") for _ in range(6)} == {429}, "every worker of a"
    keys = redis.command("KEYS", "tokend:throttle:*")
    assert key_of("account", "alice").encode() in keys
    ttl = int(redis.command("PTTL", key_of("account", "alice"))[1:].split(b"\r\n")[0])
    assert 0 < ttl <= 300_000, "every key expires with the window"

    redis.stop()
    assert a.login("bob", "bob-pw") == 200 and b.login("bob", "bob-pw") == 200
    for each in (a, b):
        wait_for("outage logged", lambda each=each: "redis unavailable" in each.log_text())
    assert b.login("bob", "wrong") == 401, "failures still count, locally"
    assert b.log_text().count("redis unavailable") == 1, "once per outage"

    redis.start()
    for each in (a, b):
        wait_for("reconnected", lambda each=each: "redis reachable again" in each.log_text())
    spread_failures(a, b, "carol")
    in_flight()
    assert a.login("carol", "carol-pw") == 429 and b.login("carol", "carol-pw") == 429


def test_news_travels_as_exact_json() -> None:
    for news in (
        Failed("alice", "192.0.2.1", 1_790_000_000.123456),
        Failed(None, "2001:db8::/64", 1.5),
        Succeeded("alice", "192.0.2.1", 2.25),
        Seen("address", "192.0.2.1", (1.0, 1_790_000_000.987654)),
    ):
        assert news_from_wire(news_to_wire(news)) == news
    with pytest.raises(ValueError):
        news_from_wire({"seen": ["users", "x", []]})
    with pytest.raises(ValueError):
        news_from_wire({"failed": [1, "x", 0]})


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://cache:6380/2", RedisAddress("redis://cache:6380/2", host="cache", port=6380,
                                              db=2)),
        ("rediss://:s3cret@cache", RedisAddress("rediss://:s3cret@cache", host="cache", tls=True,
                                                password="s3cret")),
        ("unix:///run/redis/redis.sock?db=3", RedisAddress("unix:///run/redis/redis.sock?db=3",
                                                          path="/run/redis/redis.sock", db=3)),
    ],
)  # fmt: skip
def test_redis_urls(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address
    assert "s3cret" not in address.shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache", "must start with redis://"),
        ("unix://relative.sock", "absolute socket path"),
        ("redis://cache/x", "bad database number"),
        ("redis:///0", "names no host"),
    ],
)
def test_bad_redis_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_a_bad_redis_url_stops_start_up_with_one_sentence(tmp_path: Path) -> None:
    from support import start_twistd, write_key_pair, write_policy

    write_policy(tmp_path / "config", {})
    key, cert = write_key_pair(tmp_path)
    process = start_twistd(
        "--config-dir", str(tmp_path / "config"), "--key", str(key), "--cert", str(cert),
        "--listen", f"unix:{tmp_path}/t.sock", "--redis", "http://nowhere",
        log=tmp_path / "log",
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise
    assert process.returncode == 1
    assert output.decode().strip() == (
        "twistd registry-token: --redis must start with redis://, rediss:// or unix://"
    )
