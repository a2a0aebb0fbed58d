"""``tokend explain --from ADDRESS``: the decision for a client at that address, and without
--from, which rules were passed over because they hold only from some networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import run_tool, write_policy

IDENTITY_TOKENS = "identity tokens: "


def write_ci_policy(directory: Path) -> None:
    write_policy(directory, {"ci": ("pw", {"*": ["pull"]})}, {"repositories": ["public/**"]})
    users = json.loads((directory / "users.json").read_text())
    users["ci"]["repositories"]["team/**"] = {
        "actions": ["pull", "push"],
        "from": ["10.0.0.0/8", "2001:db8::/32"],
    }
    (directory / "users.json").write_text(json.dumps(users))


def explained(*argv: str) -> list[str]:
    code, out, err = run_tool("explain", *argv)
    assert code == 0, err
    return [line for line in out.splitlines() if not line.startswith(IDENTITY_TOKENS)]


def test_from_inside_the_network_the_rule_decides(tmp_path: Path) -> None:
    write_ci_policy(tmp_path)
    lines = explained(
        "--config-dir", str(tmp_path), "--from", "10.1.2.3", "ci", "repository:team/app:pull,push"
    )
    assert lines == [
        "client address: 10.1.2.3",
        "repository:team/app:pull,push  ->  'ci' gets pull,push (holds pull,push)",
        "    user ci: 'team/**' allows pull,push from 10.0.0.0/8, 2001:db8::/32",
        "    the union of every source's most specific rule",
    ]


def test_from_outside_the_network_the_next_rule_decides(tmp_path: Path) -> None:
    write_ci_policy(tmp_path)
    lines = explained(
        "--config-dir", str(tmp_path), "--from", "2001:db9::1", "ci", "repository:team/app:push"
    )
    assert lines == [
        "client address: 2001:db9::1",
        "repository:team/app:push  ->  'ci' gets nothing (holds pull)",
        "    user ci: 'team/**' (allows pull,push from 10.0.0.0/8, 2001:db8::/32) passed over: "
        "2001:db9::1 is outside its networks",
        "    user ci: '*' allows pull",
        "    the union of every source's most specific rule",
    ]


def test_without_from_the_rules_that_need_an_address_are_named(tmp_path: Path) -> None:
    write_ci_policy(tmp_path)
    lines = explained("--config-dir", str(tmp_path), "ci", "repository:team/app:pull,push")
    assert lines == [
        "repository:team/app:pull,push  ->  'ci' gets pull (holds pull)",
        "    user ci: 'team/**' (allows pull,push from 10.0.0.0/8, 2001:db8::/32) passed over: "
        "it needs a client address; give --from ADDRESS",
        "    user ci: '*' allows pull",
        "    the union of every source's most specific rule",
    ]


def test_anonymous_rules_hold_from_every_address(tmp_path: Path) -> None:
    write_ci_policy(tmp_path)
    lines = explained(
        "--config-dir",
        str(tmp_path),
        "--from",
        "10.1.2.3",
        "--anonymous",
        "repository:public/a:pull",
    )
    assert lines[0] == "client address: 10.1.2.3 (repositories.json rules hold from every address)"
    assert lines[1] == "repository:public/a:pull  ->  anonymous gets pull (holds pull)"


@pytest.mark.parametrize("address", ["10.0.0.0/8", "unix", "ci.example"])
def test_from_takes_one_address(tmp_path: Path, address: str) -> None:
    write_ci_policy(tmp_path)
    code, _, err = run_tool(
        "explain", "--config-dir", str(tmp_path), "--from", address, "ci", "repository:a:pull"
    )
    assert code == 2
    assert f"--from: {address!r} is not an IP address" in err
