"""What check-config and the reload log tell an operator about a valid policy: a typo'd key
named with the key meant, and a user's own deny that a group's grant makes void."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tokend.cli import main
from tokend.policy.model import (
    PolicyError,
    anonymous_from_document,
    groups_from_document,
    users_from_document,
)

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("repositorys", "repositories"), ("pass-hash", "pass_hash"), ("group", "groups")],
)
def test_a_typo_in_users_json_names_the_key_meant(typo: str, meant: str) -> None:
    with pytest.raises(PolicyError) as raised:
        users_from_document({"alice": {"pass_hash": HASH, typo: {}}}, "users.json")
    assert (raised.value.file, raised.value.path) == ("users.json", f"alice.{typo}")
    assert raised.value.reason == f'unknown key "{typo}" (did you mean "{meant}"?)'


def test_a_typo_in_repositories_json_names_the_key_meant() -> None:
    with pytest.raises(PolicyError) as raised:
        anonymous_from_document({"repositorys": []}, "repositories.json")
    assert (raised.value.file, raised.value.path) == ("repositories.json", "repositorys")
    assert raised.value.reason == 'unknown key "repositorys" (did you mean "repositories"?)'


def test_a_typo_in_groups_json_names_the_key_meant() -> None:
    with pytest.raises(PolicyError) as raised:
        groups_from_document({"staff": {"ldap_group": []}}, "groups.json")
    assert (raised.value.file, raised.value.path) == ("groups.json", "staff.ldap_group")
    assert raised.value.reason == 'unknown key "ldap_group" (did you mean "ldap_groups"?)'


@pytest.mark.parametrize(
    ("parse", "known"),
    [
        (
            lambda: users_from_document({"a": {"pass_hash": HASH, "rules": {}}}, "users.json"),
            '"pass_hash", "repositories", "groups", "catalog", "tokens_valid_after"',
        ),
        (
            lambda: anonymous_from_document({"whitelist": True}, "repositories.json"),
            '"blacklist", "repositories", "catalog"',
        ),
        (
            lambda: groups_from_document({"g": {"rules": {}}}, "groups.json"),
            '"repositories", "catalog", "ldap_groups"',
        ),
    ],
)
def test_a_key_like_no_known_one_lists_the_known_keys(parse: Any, known: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse()
    key = raised.value.path.rpartition(".")[2]
    assert raised.value.reason == f'unknown key "{key}" (known keys: {known})'


def write_files(directory: Path, users: dict[str, Any], groups: dict[str, Any] | None) -> Path:
    documents = {name: {"pass_hash": HASH, **entry} for name, entry in users.items()}
    (directory / "users.json").write_text(json.dumps(documents))
    (directory / "repositories.json").write_text(json.dumps({"repositories": []}))
    if groups is not None:
        (directory / "groups.json").write_text(json.dumps(groups))
    return directory


def check_config(directory: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["check-config", "--config-dir", str(directory)], io.StringIO(), out)
    return code, out.getvalue()


def test_check_config_names_the_key_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_files(tmp_path, {"alice": {"repositorys": {"a": ["pull"]}}}, None)
    assert check_config(tmp_path) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend check-config: {tmp_path / 'users.json'}: alice.repositorys: "
        'unknown key "repositorys" (did you mean "repositories"?)\n'
    )
