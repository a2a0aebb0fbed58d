"""A small HTTP/1.1 load generator for the benchmarks: asyncio, keep-alive, UNIX socket or TCP.

wrk cannot speak to a UNIX socket, and that is how nginx talks to tokend, so the socket figures
come from here. It is deliberately minimal: requests are pre-built bytes, responses are parsed
only as far as the status, ``Content-Length`` or chunked body, and ``Connection: close``. Every
request is timed from write to the last body byte. It runs in one process and competes with the
daemon for the CPU; bench/run reports wrk's TCP figures beside these for that reason.

Used by ``bench/suite.py`` (what ``bench/run`` runs) and ``bench/load.py``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

ANONYMOUS_QUERY = "/v2/token?service=registry&scope=repository:public/hello:pull"
AUTHENTICATED_QUERY = "/v2/token?service=registry&scope=repository:bench/app:pull,push"


@dataclass(frozen=True, slots=True)
class Request:
    """One kind of request, serialised once: the load generator only writes these bytes."""

    kind: str
    data: bytes


def get_request(kind: str, path: str, headers: dict[str, str] | None = None) -> Request:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "User-Agent: tokend-bench"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return Request(kind, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))


def basic(username: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {credentials}"}


def anonymous_request(kind: str = "anonymous") -> Request:
    return get_request(kind, ANONYMOUS_QUERY)


def authenticated_request(kind: str, username: str, password: str) -> Request:
    query = f"{AUTHENTICATED_QUERY}&account={quote(username)}"
    return get_request(kind, query, basic(username, password))


def unix_connector(path: Path) -> Connector:
    return lambda: asyncio.open_unix_connection(str(path))


def tcp_connector(host: str, port: int) -> Connector:
    return lambda: asyncio.open_connection(host, port)


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this minimal parser understands it."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response whole; return its status and whether the server closes after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP response: {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    closes = b"\r\nconnection: close" in lower or head.startswith(b"HTTP/1.0")
    start = lower.find(b"\r\ncontent-length:")
    if start >= 0:
        end = lower.index(b"\r\n", start + 2)
        await reader.readexactly(int(lower[start + 17 : end]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not 100 <= status < 200:
        # Neither length nor chunks: the body runs to the end of the connection.
        await reader.read()
        closes = True
    return status, closes


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Result:
    """What one run measured; latencies in seconds, per request kind."""

    elapsed: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, kind: str, status: int, latency: float) -> None:
        self.latencies.setdefault(kind, []).append(latency)
        self.statuses[kind, status] += 1

    def count(self, kind: str | None = None) -> int:
        return sum(n for (k, _), n in self.statuses.items() if kind is None or k == kind)

    def rate(self, kind: str | None = None) -> float:
        return self.count(kind) / self.elapsed if self.elapsed > 0 else math.nan

    def sorted_latencies(self, kind: str | None = None) -> list[float]:
        if kind is not None:
            return sorted(self.latencies.get(kind, []))
        return sorted(value for values in self.latencies.values() for value in values)

    def percentile_ms(self, fraction: float, kind: str | None = None) -> float:
        return percentile(self.sorted_latencies(kind), fraction) * 1000

    def by_class(self, kind: str | None = None) -> Counter[str]:
        """Counts by status class (``2xx``…), with 429 and 503 apart: they are by design."""
        classes: Counter[str] = Counter()
        for (k, status), n in self.statuses.items():
            if kind is None or k == kind:
                classes[str(status) if status in (429, 503) else f"{status // 100}xx"] += n
        return classes


async def drive(
    connect: Connector,
    requests: Sequence[Request],
    *,
    concurrency: int,
    total: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
    on_status: Callable[[int], None] | None = None,
) -> Result:
    """Send ``requests`` round-robin on ``concurrency`` keep-alive connections.

    Stops after ``total`` requests or after ``warmup`` + ``duration`` seconds, whichever comes
    first (only requests that start after the warm-up count then). Request ``n`` is
    ``requests[n % len(requests)]``, so a shuffled list gives a reproducible mix.
    ``on_status`` hears every answer's status, in the order they arrive.
    """
    if total is None and duration is None:
        raise ValueError("give total, duration or both")
    result = Result()
    issued = 0
    started = time.perf_counter()
    measure_from = started + (warmup if duration is not None else 0.0)
    stop_at = measure_from + duration if duration is not None else math.inf

    def next_request() -> Request | None:
        nonlocal issued
        if total is not None and issued >= total:
            return None
        if time.perf_counter() >= stop_at:
            return None
        request = requests[issued % len(requests)]
        issued += 1
        return request

    async def client() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while (request := next_request()) is not None:
                try:
                    if writer is None:
                        reader, writer = await connect()
                    assert reader is not None
                    begun = time.perf_counter()
                    writer.write(request.data)
                    status, closes = await read_response(reader)
                    ended = time.perf_counter()
                except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as e:
                    result.errors[type(e).__name__] += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    await asyncio.sleep(0.01)
                    continue
                if on_status is not None:
                    on_status(status)
                if begun >= measure_from:
                    result.record(request.kind, status, ended - begun)
                if closes:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - measure_from
    return result


def run(
    connect: Connector,
    requests: Sequence[Request],
    *,
    concurrency: int,
    total: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
) -> Result:
    """``drive`` on a fresh event loop."""
    return asyncio.run(
        drive(
            connect,
            requests,
            concurrency=concurrency,
            total=total,
            duration=duration,
            warmup=warmup,
        )
    )
