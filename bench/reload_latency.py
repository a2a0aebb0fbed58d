"""Reload latency of the real daemon: from ``os.replace`` of users.json to the first token that
reflects the change, over many edits. Prints median, p90, p99 and max.

    python3 bench/reload_latency.py [--edits 50] [--poll]

Talks only to a UNIX socket in a temporary directory; the daemon is stopped by its PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import (
    UnixHTTPConnection,
    start_twistd,
    stop_process,
    write_key_pair,
    write_policy,
)

QUERY = "/v2/token?service=registry&scope=repository:bench/app:pull,push"


def granted(socket: Path, authorization: str) -> list[str]:
    connection = UnixHTTPConnection(socket)
    try:
        connection.request("GET", QUERY, headers={"Authorization": authorization})
        body = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    payload = body["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return list(claims["access"][0]["actions"]) if claims["access"] else []


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--cost", type=int, default=4, help="bcrypt cost of the bench user")
    parser.add_argument("--poll", action="store_true", help="run the daemon with --poll")
    args = parser.parse_args()
    if args.edits < 1:
        parser.error("--edits must be at least 1")

    with tempfile.TemporaryDirectory(prefix="tokend-bench-") as temp:
        root = Path(temp)
        config = root / "config"
        write_policy(config, {"bench": ("bench", {"*": ["pull"]})}, cost=args.cost)
        key_path, cert_path = write_key_pair(root)
        socket = root / "tokend.sock"
        process = start_twistd(
            "--listen", f"unix:{socket}", "--config-dir", str(config),
            "--key", str(key_path), "--cert", str(cert_path), *(["--poll"] if args.poll else []),
            log=root / "tokend.log", output=root / "tokend.out",
        )  # fmt: skip
        authorization = "Basic " + base64.b64encode(b"bench:bench").decode()
        users = json.loads((config / "users.json").read_text())
        latencies: list[float] = []
        try:
            deadline = time.monotonic() + 30
            while not socket.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.stderr.write((root / "tokend.log").read_text())
                    return 1
                time.sleep(0.05)
            expected = ["pull"]
            for _ in range(args.edits):
                expected = ["pull", "push"] if expected == ["pull"] else ["pull"]
                users["bench"]["repositories"] = {"*": expected}
                temporary = config / ".users.json.tmp"
                temporary.write_text(json.dumps(users))
                started = time.perf_counter()
                os.replace(temporary, config / "users.json")
                while granted(socket, authorization) != expected:
                    if time.perf_counter() - started > 10:
                        sys.stderr.write("an edit was not picked up within 10 s\n")
                        return 1
                latencies.append(time.perf_counter() - started)
        finally:
            stop_process(process)

    ms = [value * 1000 for value in latencies]
    how = "polling observer" if args.poll else "inotify"
    print(f"reload latency over {len(ms)} edits ({how}, 100 ms debounce included), milliseconds:")
    print(f"  min    {min(ms):7.1f}")
    print(f"  median {statistics.median(ms):7.1f}")
    print(f"  p90    {percentile(ms, 0.90):7.1f}")
    print(f"  p99    {percentile(ms, 0.99):7.1f}")
    print(f"  max    {max(ms):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
