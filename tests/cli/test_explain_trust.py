"""``tokend explain --trust NAME --claims FILE``: the account a platform's token with those claims
becomes, whether the trust's conditions hold, and what each scope gets and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import run_tool, write_policy

GITHUB = "https://token.actions.githubusercontent.com"
REGISTRY = "https://registry.example.com"
CLAIMS = {
    "iss": GITHUB,
    "aud": REGISTRY,
    "sub": "repo:acme/app:ref:refs/heads/main",
    "repository": "acme/app",
    "repository_owner": "acme",
    "ref": "refs/heads/main",
    "exp": 1700000300,
}


def write_trusts(directory: Path) -> None:
    write_policy(directory, {"alice": ("pw", {"*": ["pull"]})}, {"repositories": []})
    (directory / "groups.json").write_text(
        json.dumps({"ci": {"repositories": {"base/*": ["pull"]}}})
    )
    trust = {
        "issuer": GITHUB,
        "audience": REGISTRY,
        "conditions": {"repository_owner": "acme", "ref": ["refs/heads/main", "refs/tags/*"]},
        "account": "github:${claim.repository}",
        "groups": ["ci"],
        "rules": {"${claim.repository}": ["pull", "push"]},
        "token_ttl": 120,
    }
    (directory / "issuers.json").write_text(json.dumps({"trusts": {"gh": trust}}))


def explain(tmp_path: Path, claims: dict[str, Any], *argv: str) -> tuple[int, list[str], str]:
    write_trusts(tmp_path)
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps(claims))
    code, out, err = run_tool(
        "explain",
        "--config-dir",
        str(tmp_path),
        "--trust",
        "gh",
        "--claims",
        str(claims_file),
        *argv,
    )
    return code, out.splitlines(), err


def test_a_job_token_is_explained_with_its_account_conditions_and_rights(tmp_path: Path) -> None:
    code, lines, err = explain(
        tmp_path, CLAIMS, "repository:acme/app:pull,push", "repository:base/python:pull,push"
    )
    assert code == 0, err
    assert lines == [
        f"trust gh: iss {GITHUB}, aud {REGISTRY}",
        "condition repository_owner: 'acme' holds ('acme')",
        "condition ref: 'refs/heads/main' holds ('refs/heads/main' or 'refs/tags/*')",
        "account: 'github:acme/app' (github:${claim.repository})",
        "claim repository: 'acme/app'",
        "repository:acme/app:pull,push  ->  'github:acme/app' gets pull,push (holds pull,push)",
        "    trust gh: 'acme/app' allows pull,push",
        "    group ci: no rule matches",
        "    the union of every source's most specific rule",
        "repository:base/python:pull,push  ->  'github:acme/app' gets pull (holds pull)",
        "    trust gh: no rule matches",
        "    group ci: 'base/*' allows pull",
        "    the union of every source's most specific rule",
        "identity tokens: a token of trust gh gets no refresh token (the platform gives the job "
        "a fresh one each time); an access token lasts at most 120 s (token_ttl), --token-ttl "
        "and until the platform's token expires",
    ]


def test_a_claim_value_that_is_no_repository_path_is_pointed_out(tmp_path: Path) -> None:
    claims = {**CLAIMS, "repository": "Acme/App"}
    code, lines, err = explain(tmp_path, claims, "repository:acme/app:pull")
    assert code == 0, err
    assert (
        "claim repository: 'Acme/App' is no repository path: the rules naming it match nothing"
        in lines
    )
    assert "repository:acme/app:pull  ->  'github:Acme/App' gets nothing (holds nothing)" in lines


def test_conditions_that_fail_are_named_and_the_login_refused(tmp_path: Path) -> None:
    claims = {**CLAIMS, "ref": "refs/heads/feature"}
    del claims["repository_owner"]
    code, lines, err = explain(tmp_path, claims, "repository:acme/app:pull")
    assert code == 1
    assert lines == [
        f"trust gh: iss {GITHUB}, aud {REGISTRY}",
        "condition repository_owner: missing or not a string, fails ('acme')",
        "condition ref: 'refs/heads/feature' fails ('refs/heads/main' or 'refs/tags/*')",
    ]
    assert "a token with these claims is refused: not every condition of trust 'gh' holds" in err


def test_an_issuer_or_audience_of_another_trust_is_said(tmp_path: Path) -> None:
    claims = {**CLAIMS, "iss": "https://gitlab.example.com", "aud": ["x"]}
    code, lines, err = explain(tmp_path, claims, "repository:acme/app:pull")
    assert code == 0, err
    assert lines[1:3] == [
        "note: iss 'https://gitlab.example.com' is not this trust's issuer: a real token "
        "would be refused",
        f"note: aud ['x'] does not hold {REGISTRY!r}: a real token would be refused",
    ]


def test_an_unknown_trust_or_a_bad_claims_file_is_refused(tmp_path: Path) -> None:
    write_trusts(tmp_path)
    claims = tmp_path / "claims.json"
    claims.write_text("[1]")
    code, _, err = run_tool(
        "explain",
        "--config-dir",
        str(tmp_path),
        "--trust",
        "gh",
        "--claims",
        str(claims),
        "repository:a:pull",
    )
    assert code == 1 and f"{claims}: expected a JSON object of claims" in err
    claims.write_text(json.dumps(CLAIMS))
    code, _, err = run_tool(
        "explain",
        "--config-dir",
        str(tmp_path),
        "--trust",
        "gl",
        "--claims",
        str(claims),
        "repository:a:pull",
    )
    assert code == 1 and "no trust 'gl' in issuers.json (trusts: gh)" in err
    code, _, err = run_tool(
        "explain", "--config-dir", str(tmp_path), "--trust", "gh", "repository:a:pull"
    )
    assert code != 0 and "--trust needs --claims FILE" in err
