"""``--redis``: daemons sharing one real ``redis-server`` hold the login limits together, and what
travels through Redis names no account and cannot be forged.

One daemon runs two workers (its parent talks to Redis), the other one process; both hold the
same signing key (the shared HMAC key is derived from it). Ten failures for one account spread
over both get the next attempt 429 on either; with Redis stopped logins still work (per-process
limits, said once, and the metric says so); with Redis back the limits are shared again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import ACCOUNT_LIMIT, Daemon, start, worker_pids
from redis_server import RedisServer
from support import (
    REPO,
    free_port,
    start_twistd,
    stop_process,
    wait_for,
    write_key_pair,
    write_policy,
)

from tokend.login.shared_limits.news import (
    Failed,
    Seen,
    Succeeded,
    Unlocked,
    news_from_wire,
    news_to_wire,
)
from tokend.login.shared_limits.redis_address import RedisAddress, parse_redis_url
from tokend.login.shared_limits.redis_scripts import CHANNEL

SHARED = "login throttle shared through Redis"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def daemon(tmp_path: Path, name: str, redis: str, workers: str, *extra: str) -> Daemon:
    """A daemon on ``redis`` holding the signing key every daemon of this test holds."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    key, cert = keys / "p256.key", keys / "p256.crt"
    if not key.exists():
        write_key_pair(keys)
    directory = tmp_path / name
    directory.mkdir()
    return start(
        directory, "--redis", redis, "--key", str(key), "--cert", str(cert), *extra,
        workers=workers,
    )  # fmt: skip


def shared(each: Daemon) -> None:
    wait_for("limits shared through Redis", lambda: SHARED in each.log_text())


@pytest.fixture
def pair(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[Daemon, Daemon, int]]:
    """a: two workers and --metrics (its parent's Redis state); b: one process."""
    started: list[Daemon] = []
    port = free_port()
    try:
        metrics = ("--metrics", f"tcp:{port}:interface=127.0.0.1")
        started.append(daemon(tmp_path, "a", redis.url, "2", *metrics))
        started.append(daemon(tmp_path, "b", redis.url, "1"))
        for each in started:
            shared(each)
        yield started[0], started[1], port
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


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_two_daemons_share_limits_and_survive_a_redis_outage(
    pair: tuple[Daemon, Daemon, int], redis: RedisServer
) -> None:
    a, b, port = pair
    assert metric(port, "tokend_redis_shared_limits") == 1
    spread_failures(a, b, "alice")
    in_flight()
    assert b.login("alice", "alice-pw") == 429
    assert {a.login("alice", "alice-pw") for _ in range(6)} == {429}, "every worker of a"
    keys = [k for k in redis.call("KEYS", "tokend:throttle:*") if b":account:" in k]
    assert len(keys) == 1
    ttl = redis.call("PTTL", keys[0])
    assert 0 < ttl <= 300_000, "every key expires with the window"

    redis.stop()
    assert a.login("bob", "bob-pw") == 200 and b.login("bob", "bob-pw") == 200
    for each in (a, b):
        wait_for("outage logged", lambda each=each: "redis unavailable" in each.log_text())
    wait_for("the metric says so", lambda: metric(port, "tokend_redis_shared_limits") == 0)
    assert b.login("bob", "wrong") == 401, "failures still count, locally"
    assert b.log_text().count("redis unavailable") == 1, "once per outage"

    redis.start()
    for each in (a, b):
        wait_for("reconnected", lambda each=each: "redis reachable again" in each.log_text())
    assert metric(port, "tokend_redis_shared_limits") == 1
    spread_failures(a, b, "carol")
    in_flight()
    assert a.login("carol", "carol-pw") == 429 and b.login("carol", "carol-pw") == 429


def test_nothing_in_redis_or_on_its_channel_names_an_account_or_an_address(
    pair: tuple[Daemon, Daemon, int], redis: RedisServer
) -> None:
    a, b, _ = pair
    typed_as_name = "Tr0ub4dor.3-typed-as-a-name"
    with redis.subscribe(CHANNEL) as channel:
        assert a.login("alice", "wrong", client="203.0.113.77") == 401
        assert b.login(typed_as_name, "x", client="203.0.113.77") == 401
        assert b.login("alice", "alice-pw", client="203.0.113.77") == 200
        messages = [channel.read()[2] for _ in range(3)]
    stored = redis.everything()
    keys = [k for k in stored if k.startswith(b"tokend:throttle:")]
    assert len(keys) == 2, "the name typed and the address (alice's success cleared hers)"
    plain = ("alice", typed_as_name, "203.0.113.77")
    unkeyed = [hashlib.sha256(name.encode()).hexdigest() for name in plain]
    for seen in [*stored, *messages]:
        for name in [*plain, *unkeyed]:
            assert name.encode() not in seen, (name, seen)
    assert all(m.startswith(b"v1:") for m in messages), "sealed messages only"


def test_forged_news_does_not_unlock_a_locked_account(
    pair: tuple[Daemon, Daemon, int], redis: RedisServer
) -> None:
    a, b, port = pair
    spread_failures(a, b, "alice")
    in_flight()
    (account_key,) = [k for k in redis.call("KEYS", "tokend:throttle:account:*")]
    hashed = account_key.decode().rsplit(":", 1)[1]
    now = time.time()
    forged = [
        # What unlocked an account before: a plain success that anyone could PUBLISH.
        json.dumps({"origin": "x", "succeeded": ["alice", "192.0.2.1", now]}),
        # The sealed form with the hashed name a KEYS shows, but no key to compute its MAC.
        "v1:" + "0" * 32 + ":" + json.dumps({"o": "x", "t": now, "n": {"succeeded": [
            hashed, hashed, now]}}, separators=(",", ":")),
        "v1:" + "0" * 32 + ":" + json.dumps({"o": "x", "t": now, "n": {"unlocked": [
            "account", hashed, now]}}, separators=(",", ":")),
    ]  # fmt: skip
    for message in forged:
        assert redis.call("PUBLISH", CHANNEL, message) == 2, "both daemons hear it"
    for each in (a, b):
        wait_for("the drops logged", lambda each=each: "dropped news from Redis" in
                 each.log_text())  # fmt: skip
    assert b.login("alice", "alice-pw") == 429
    assert {a.login("alice", "alice-pw") for _ in range(4)} == {429}
    rejected = metric(port, "tokend_redis_news_rejected_total", reason="unauthenticated")
    assert rejected == 2
    assert metric(port, "tokend_redis_news_rejected_total", reason="unreadable") == 1
    assert a.log_text().count("dropped news from Redis") == 1, "not once per message"


def test_a_daemon_that_joins_later_asks_redis_before_its_first_check_and_unlock_reaches_it(
    tmp_path: Path, redis: RedisServer
) -> None:
    """b starts after alice was locked through a: its first attempt, with the right password,
    is refused (and so does not unlock alice on a). ``tokend unlock`` on a then ends the
    lockout in both."""
    a = daemon(tmp_path, "a", redis.url, "1")
    started = [a]
    try:
        shared(a)
        for _ in range(ACCOUNT_LIMIT):
            assert a.login("alice", "wrong") == 401
        b = daemon(tmp_path, "b", redis.url, "2")
        started.append(b)
        assert b.login("alice", "alice-pw") == 429
        assert {b.login("alice", "alice-pw") for _ in range(4)} == {429}, "either worker"
        in_flight()
        assert a.login("alice", "alice-pw") == 429, "a still holds alice's lockout"
        assert b.login("bob", "bob-pw") == 200

        done = subprocess.run(
            [sys.executable, "-m", "tokend", "unlock", "alice", "--listen", f"unix:{a.sock}"],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        assert done.stdout == (
            "unlocked account alice: 10 failures cleared (1 process); Redis: 10 failures "
            "cleared, 1 other daemon told\n"
        ), done.stderr
        wait_for("b heard of it", lambda: b.login("alice", "wrong") == 401)
        assert b.login("alice", "alice-pw") == 200 and a.login("alice", "alice-pw") == 200
    finally:
        for each in started:
            stop_process(each.process)


def test_the_password_file_keeps_the_password_off_every_command_line(tmp_path: Path) -> None:
    password = "redis-s3cret-" + os.urandom(4).hex()
    server = RedisServer(tmp_path / "redis", password=password)
    server.directory.mkdir()
    server.start()
    secret = tmp_path / "redis-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    running = None
    try:
        running = daemon(tmp_path, "a", server.url, "2", "--redis-password-file", str(secret))
        shared(running)
        assert running.login("alice", "wrong") == 401
        wait_for("the failure in Redis", lambda: len(server.call("KEYS", "tokend:*")) == 2)
        processes = {running.process.pid, *worker_pids(running.process.pid)}
        assert len(processes) == 3
        for pid in processes:
            assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert "password is part of" not in running.log_text()
    finally:
        if running is not None:
            stop_process(running.process)
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_start_up_names_a_redis_and_a_directory_that_do_not_answer_and_serves(
    tmp_path: Path, workers: str
) -> None:
    write_policy(tmp_path / "config", {"alice": ("alice-pw", {"*": ["pull"]})})
    key, cert = write_key_pair(tmp_path)
    sock = tmp_path / "t.sock"
    port, ldap_port = free_port(), free_port()
    log = tmp_path / "tokend.log"
    process = start_twistd(
        "--config-dir", str(tmp_path / "config"), "--key", str(key), "--cert", str(cert),
        "--listen", f"unix:{sock}", "--service", "svc",
        "--redis", f"unix://:pw-in-the-url@{tmp_path}/nobody-listens.sock",
        "--ldap-url", f"ldap://127.0.0.1:{ldap_port}", "--ldap-base", "dc=example,dc=org",
        "--metrics", f"tcp:{port}:interface=127.0.0.1", "--workers", workers,
        log=log,
    )  # fmt: skip
    running = Daemon(process, sock, log)
    try:
        wait_for("listening", lambda: "tokend listening on" in running.log_text())
        wait_for("the Redis warning", lambda: "(--redis) does not answer" in running.log_text())
        wait_for("the directory warning", lambda: "directory (--ldap-url) does not answer"
                 in running.log_text())  # fmt: skip
        text = running.log_text()
        assert text.count("the Redis password is part of --redis") == 1
        assert text.count("does not answer") == 2, "once each, whatever the number of workers"
        assert "pw-in-the-url" not in text
        assert running.login("alice", "alice-pw") == 200, "it serves all the same"
        assert metric(port, "tokend_redis_shared_limits") == 0
    finally:
        stop_process(process)


def test_news_travels_as_exact_json() -> None:
    for news in (
        Failed("a" * 32, "b" * 32, 1_790_000_000.123456),
        Failed(None, "2001:db8::/64", 1.5),
        Succeeded("alice", "192.0.2.1", 2.25),
        Seen("address", "192.0.2.1", (1.0, 1_790_000_000.987654)),
        Unlocked("account", "c" * 32, 3.5),
    ):
        assert news_from_wire(news_to_wire(news)) == news
    with pytest.raises(ValueError):
        news_from_wire({"seen": ["users", "x", []]})
    with pytest.raises(ValueError):
        news_from_wire({"failed": [1, "x", 0]})
    with pytest.raises(ValueError):
        news_from_wire({"unlocked": ["account", 7, 0]})


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://cache:6380/2", RedisAddress("redis://cache:6380/2", host="cache", port=6380,
                                              db=2)),
        ("rediss://:s3cret@cache", RedisAddress("rediss://:s3cret@cache", host="cache", tls=True,
                                                password="s3cret", password_in_url=True)),
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


def test_the_password_file_is_checked_like_the_key(tmp_path: Path) -> None:
    from support import parsed_options, parsed_settings
    from twisted.python.usage import UsageError

    secret = tmp_path / "redis-password"
    secret.write_text("from-the-file\n")
    secret.chmod(0o640)
    url = "redis://:from-the-url@cache"
    with pytest.raises(UsageError, match=r"readable by others \(mode 0640\); run chmod 600"):
        parsed_options(tmp_path, "--redis", url, "--redis-password-file", str(secret))
    loose = parsed_settings(
        tmp_path, "--redis", url, "--redis-password-file", str(secret),
        "--allow-loose-key-permissions",
    )  # fmt: skip
    assert loose.redis.password == "from-the-file" and not loose.redis.password_in_url
    secret.chmod(0o600)
    environ = {"TOKEND_REDIS_PASSWORD_FILE": str(secret)}
    settings = parsed_settings(tmp_path, "--redis", "redis://cache", environ=environ)
    assert settings.redis.password == "from-the-file"
    assert parsed_settings(tmp_path, "--redis", url).redis.password_in_url
    with pytest.raises(UsageError, match="--redis-password-file needs --redis"):
        parsed_options(tmp_path, "--redis-password-file", str(secret))
    secret.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        parsed_options(tmp_path, "--redis", "redis://cache", "--redis-password-file", str(secret))
