"""Every worked example of docs/policy.md, loaded from the page itself and checked as a table
through the token endpoint: the documentation cannot drift from what tokend does."""

from __future__ import annotations

import base64
import json
import re
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode

import pytest
from realms import realm_api
from support import REPO, hash_password, load_certificate, settled, verify_jwt, write_key_pair
from treq.testing import StubTreq
from twisted.internet.task import Clock

from tokend.client_address import TrustedProxies, parse_networks

PAGE = (REPO / "docs" / "policy.md").read_text()
ELIDED_HASH = "$2b$12$…"
ANONYMOUS = "(anonymous)"
SERVICE = "registry.test"

_FILE = re.compile(r"<!-- example (\S+) (\S+\.json) -->\n```json\n(.*?)```", re.DOTALL)
_TABLE = re.compile(r"<!-- table (\S+) -->\n((?:\|.*\|\n)+)")


def readme_examples() -> dict[str, dict[str, str]]:
    examples: dict[str, dict[str, str]] = defaultdict(dict)
    for name, file, text in _FILE.findall(PAGE):
        examples[name][file] = text
    return dict(examples)


Row = tuple[str | None, str | None, str, tuple[str, ...]]
"""(account, client address, scope, granted); a table without a "from" column has no address."""


def readme_tables() -> dict[str, list[Row]]:
    tables: dict[str, list[Row]] = {}
    for name, table in _TABLE.findall(PAGE):
        rows: list[Row] = []
        for line in table.splitlines()[2:]:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            user, address, scope, granted = cells if len(cells) == 4 else [cells[0], "", *cells[1:]]
            account = None if user == ANONYMOUS else user
            rows.append(
                (
                    account,
                    address or None,
                    scope.strip("`"),
                    tuple(filter(None, granted.split(","))),
                )
            )
        tables[name] = rows
    return tables


EXAMPLES = readme_examples()
TABLES = readme_tables()


def test_the_policy_page_has_the_five_examples_each_with_a_table() -> None:
    assert set(EXAMPLES) == {"personal", "teams", "robot", "mirror", "ci-network"}
    assert set(TABLES) == set(EXAMPLES)
    assert all(len(rows) >= 4 for rows in TABLES.values())


class ExampleRealm:
    """The token endpoint over one worked example of docs/policy.md; each user's password is
    their name. StubTreq's peer (127.0.0.1) is a trusted proxy: X-Real-IP names the client."""

    def __init__(self, tmp_path: Path, files: dict[str, str]) -> None:
        config = tmp_path / "config"
        config.mkdir()
        documents = {"repositories.json": '{"repositories": []}', **files}
        for file, text in documents.items():
            (config / file).write_text(self._with_hashes(file, text))
        key_path, cert_path = write_key_pair(tmp_path)
        self.certificate = load_certificate(cert_path)
        clock = Clock()
        clock.advance(1_800_000_000)
        self.http = StubTreq(
            realm_api(
                config,
                (key_path, cert_path),
                clock=clock,
                services=[SERVICE],
                trusted_proxies=TrustedProxies(networks=parse_networks(["127.0.0.0/8"])),
            ).resource()
        )

    @staticmethod
    def _with_hashes(file: str, text: str) -> str:
        if file != "users.json":
            return text
        users = json.loads(text)
        for name, entry in users.items():
            assert entry["pass_hash"] == ELIDED_HASH
            entry["pass_hash"] = hash_password(name)
        return json.dumps(users)

    def granted(
        self, account: str | None, scope: str, address: str | None = None
    ) -> tuple[str, ...]:
        headers = {} if address is None else {"X-Real-IP": address}
        if account is not None:
            basic = base64.b64encode(f"{account}:{account}".encode()).decode()
            headers["Authorization"] = "Basic " + basic
        query = urlencode([("service", SERVICE), ("scope", scope)])
        response = settled(self.http.get(f"http://tokend/v2/token?{query}", headers=headers))
        body = json.loads(settled(self.http.content(response)))
        assert response.code == 200, body
        _, claims = verify_jwt(body["token"], self.certificate)
        assert claims["sub"] == (account or "")
        access = claims["access"]
        if not access:
            return ()  # nothing granted: the token carries no entry for the resource
        assert len(access) == 1
        kind, name, _ = scope.split(":")
        assert (access[0]["type"], access[0]["name"]) == (kind, name)
        return tuple(access[0]["actions"])


@pytest.mark.parametrize(
    ("example", "account", "address", "scope", "expected"),
    [(name, *row) for name, rows in TABLES.items() for row in rows],
)
def test_readme_example_table(
    tmp_path: Path,
    example: str,
    account: str | None,
    address: str | None,
    scope: str,
    expected: tuple[str, ...],
) -> None:
    realm = ExampleRealm(tmp_path, EXAMPLES[example])
    granted = realm.granted(account, scope, address)
    if scope == "registry:catalog:*":
        assert granted == ((expected and ("*",)) or ())
    else:
        assert granted == expected
