"""A real ``redis-server`` (Debian's) on a UNIX socket in a temp dir, for the shared-throttle tests.

No persistence, no TCP port; with ``password`` it demands AUTH (``requirepass``, written to its
config file). Stopped by its own PID; :meth:`RedisServer.start` again brings it back on the same
socket (empty, as a restarted Redis without persistence is), for outage and recovery tests.
:meth:`RedisServer.call` speaks RESP (binary-safe, one whole reply parsed), so tests can read
keys, look at members and PUBLISH forged messages; :meth:`RedisServer.subscribe` listens on a
channel as any other client of the server could.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def require_redis() -> str:
    """The redis-server binary; skip (fail under CI, which installs it) when it is missing."""
    found = shutil.which("redis-server")
    if found is None:
        message = "needs redis-server (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def encode(*words: str | bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode() if isinstance(word, str) else word
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Replies:
    """RESP replies read off a socket, one whole reply at a time."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self._conn.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size + 2:
            chunk = self._conn.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise ValueError(f"not a RESP reply: {line!r}")


@dataclass
class RedisServer:
    directory: Path
    password: str | None = None
    binary: str = field(default_factory=require_redis)
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        config = self.directory / "redis.conf"
        lines = [
            "port 0", f"unixsocket {self.socket_path}", "unixsocketperm 700", 'save ""',
            "appendonly no", f"dir {self.directory}",
        ]  # fmt: skip
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        config.write_text("\n".join(lines) + "\n")
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while not self.ping():
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not answer in 15 s"
            time.sleep(0.02)

    @contextmanager
    def _connection(self) -> Iterator[tuple[socket.socket, Replies]]:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(self.socket_path))
            replies = Replies(conn)
            if self.password is not None:
                conn.sendall(encode("AUTH", self.password))
                replies.read()
            yield conn, replies

    def ping(self) -> bool:
        try:
            return self.call("PING") == "PONG"
        except (OSError, RuntimeError, ValueError):
            return False

    def call(self, *words: str | bytes) -> Any:
        """One command's parsed reply (bulk strings as bytes)."""
        with self._connection() as (conn, replies):
            conn.sendall(encode(*words))
            return replies.read()

    def everything(self) -> list[bytes]:
        """Every key and every member or value it holds, for "nothing in Redis names it"."""
        found: list[bytes] = []
        for key in self.call("KEYS", "*"):
            found.append(key)
            kind = self.call("TYPE", key)
            if kind == "zset":
                found += self.call("ZRANGE", key, "0", "-1", "WITHSCORES")
            elif kind == "string":
                found.append(self.call("GET", key))
        return found

    @contextmanager
    def subscribe(self, channel: str) -> Iterator[Replies]:
        """A subscriber on ``channel``: read ``[b"message", channel, payload]`` replies."""
        with self._connection() as (conn, replies):
            conn.sendall(encode("SUBSCRIBE", channel))
            assert replies.read()[0] == b"subscribe"
            yield replies

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
