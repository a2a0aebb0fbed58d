"""The README's "Moving from docker_auth" section, run as written: its users.json (with
docker_auth's $2y$ hashes), groups.json and options start the real twistd with a program in
corp-auth's place, and every row of its table is asked over the socket with the client address
the trusted proxy (the UNIX socket peer) names."""

from __future__ import annotations

import json
import re
import shlex
import signal
from base64 import b64encode
from pathlib import Path

from support import (
    accepts,
    doc_section,
    get_json_over_unix,
    hash_password,
    load_certificate,
    start_twistd,
    stop_process,
    verify_jwt,
    wait_for,
    write_key_pair,
    write_script,
)

SECTION = doc_section("Moving from docker_auth")
ELIDED_HASH = "$2y$05$…"
CORP_AUTH = """
import json, sys
assert sys.argv[1:] == ["--realm", "corp"], sys.argv
user, _, password = sys.stdin.read().partition(" ")
if (user, password) == ("dana", "dana"):
    print(json.dumps({"labels": {"group": ["dev"]}}))
    sys.exit(0)
sys.exit(2)
"""


def block(name: str) -> str:
    found = re.search(rf"<!-- migration {re.escape(name)} -->\n```\w*\n(.*?)```", SECTION, re.S)
    assert found, f"no {name} block in the README's migration section"
    return found[1]


def table() -> list[tuple[str, str, str, list[str]]]:
    found = re.search(r"<!-- migration table -->\n((?:\|.*\|\n)+)", SECTION)
    assert found
    rows = []
    for line in found[1].splitlines()[2:]:
        user, address, scope, granted = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((user, address, scope.strip("`"), [a for a in granted.split(",") if a]))
    return rows


def with_hashes(text: str) -> str:
    """Each elided hash becomes its user's name, hashed as docker_auth's htpasswd writes it."""
    document = json.loads(text)
    for name, entry in document.items():
        if entry.get("pass_hash") == ELIDED_HASH:
            entry["pass_hash"] = "$2y$" + hash_password(name)[4:]
    return json.dumps(document)


def test_the_docker_auth_example_decides_as_its_table_says(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "users.json").write_text(with_hashes(block("users.json")))
    (config / "groups.json").write_text(block("groups.json"))
    (config / "repositories.json").write_text('{"repositories": []}')
    program = write_script(tmp_path, "corp-auth", CORP_AUTH)
    options = shlex.split(block("options").replace("/usr/local/bin/corp-auth", program))
    key_path, cert_path = write_key_pair(tmp_path)
    sock, log = tmp_path / "tokend.sock", tmp_path / "tokend.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--service", "svc", *options,
        log=log,
    )  # fmt: skip
    rows = table()
    assert len(rows) >= 4
    try:
        wait_for("the socket", lambda: accepts(sock), process=process, log=log)
        for user, address, scope, granted in rows:
            auth = b64encode(f"{user}:{user}".encode()).decode()
            headers = {"Authorization": f"Basic {auth}", "X-Real-IP": address}
            status, body = get_json_over_unix(sock, f"/v2/token?service=svc&scope={scope}", headers)
            assert status == 200, (user, address, body)
            _, claims = verify_jwt(body["token"], load_certificate(cert_path))
            actions = [a for entry in claims["access"] for a in entry["actions"]]
            assert sorted(actions) == sorted(granted), (user, address, scope, claims["access"])
    finally:
        assert stop_process(process) == -signal.SIGTERM
