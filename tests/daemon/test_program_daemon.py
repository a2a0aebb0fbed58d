"""The external authentication and authorization programs through the real ``twistd
registry-token`` on a UNIX socket: labels to group rights in the signed token, a refusal, not
mine, an error, a hung program killed at its timeout while anonymous tokens keep being answered,
and the password in no log line and no program's command line."""

from __future__ import annotations

import json
import signal
import sys
from base64 import b64encode
from pathlib import Path
from typing import Any

from support import (
    UnixHTTPConnection,
    accepts,
    get_json_over_unix,
    load_certificate,
    start_twistd,
    stop_process,
    verify_jwt,
    wait_for,
    write_key_pair,
    write_policy,
    write_script,
)

AUTH = """
import os, sys, time
user, _, password = sys.stdin.read().partition(" ")
if user == "robot" and password == "right":
    print('{"labels": {"group": ["ci"], "team": ["x"]}}')
    sys.exit(0)
if user == "slow":
    open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()}\\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
if user == "broken":
    sys.stderr.write("cannot check " + password)
    sys.exit(5)
sys.exit(2 if user == "carol" else 1)
"""
AUTHZ = """
import json, sys
question = json.load(sys.stdin)
sys.exit({"builds/locked": 1, "builds/broken": 3}.get(question["Name"], 0))
"""
PASSWORD = "hunter2-secret"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def test_programs_decide_logins_and_narrow_rights_through_twistd(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull"]})}, {"repositories": ["pub/x"]})
    (config / "groups.json").write_text(
        json.dumps(
            {
                "ci": {
                    "program_labels": {"group": ["ci"]},
                    "repositories": {"builds/*": ["pull", "push"]},
                }
            }
        )
    )
    key_path, cert_path = write_key_pair(tmp_path)
    pid_file = tmp_path / "slow.pid"
    auth = write_script(tmp_path, "auth.py", AUTH)
    authz = write_script(tmp_path, "authz.py", AUTHZ)
    sock = tmp_path / "run" / "tokend.sock"
    sock.parent.mkdir()
    log = tmp_path / "tokend.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--issuer", "iss", "--service", "svc",
        "--auth-program", auth, "--auth-program-arg", str(pid_file),
        "--auth-program-timeout", "3", "--authz-program", authz,
        log=log,
    )  # fmt: skip
    token = "/v2/token?service=svc&scope="

    def ask(scope: str, user: str | None = None, password: str = "") -> tuple[int, Any]:
        headers = basic(user, password) if user is not None else {}
        status, body = get_json_over_unix(sock, token + scope, headers)
        return int(status), body

    def access(body: Any) -> Any:
        return verify_jwt(body["token"], load_certificate(cert_path))[1]["access"]

    try:
        wait_for("the socket", lambda: accepts(sock), process=process, log=log)
        status, body = ask("repository:builds/app:pull,push", "robot", "right")
        assert status == 200, body
        assert access(body) == [
            {"type": "repository", "name": "builds/app", "actions": ["pull", "push"]}
        ]
        status, body = ask("repository:builds/locked:pull,push", "robot", "right")
        assert (status, access(body)) == (200, []), "the authorization program took it away"
        status, body = ask("repository:builds/broken:pull", "robot", "right")
        assert status == 503 and "authorization program" in body["errors"][0]["message"]
        assert ask("repository:builds/app:pull", "robot", "wrong")[0] == 401
        assert ask("repository:builds/app:pull", "carol", "c")[0] == 401, "not mine, no one's"
        status, body = ask("repository:builds/app:pull", "broken", PASSWORD)
        assert status == 503, body

        slow = UnixHTTPConnection(sock, timeout=30)
        slow.request("GET", token + "repository:builds/app:pull", headers=basic("slow", PASSWORD))
        wait_for("the slow program", pid_file.exists, process=process, log=log)
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:3] == [sys.executable.encode(), auth.encode(), str(pid_file).encode()]
        assert PASSWORD.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        status, body = ask("repository:pub/x:pull")
        assert status == 200 and access(body)[0]["actions"] == ["pull"]
        assert Path(f"/proc/{pid}").exists(), "answered while the program still ran"
        response = slow.getresponse()
        assert response.status == 503, response.read()
        assert response.getheader("Retry-After") == "3"
        slow.close()
        wait_for("the program reaped", lambda: not Path(f"/proc/{pid}").exists())
    finally:
        assert stop_process(process) == -signal.SIGTERM
    text = log.read_text()
    assert "ran past 3 s" in text and "exit status 5" in text and "cannot check <password>" in text
    assert "the authorization program" in text and "exit status 3" in text
    assert PASSWORD not in text
