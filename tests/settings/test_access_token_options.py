"""``--database`` and ``--access-token-max-ttl`` as the daemon parses them (#26): the database
beside the config directory by default, the command line over ``TOKEND_*``, and a value the
daemon cannot use stops start-up with one sentence naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemons import parsed
from twisted.python.usage import UsageError

from tokend.access_tokens.lifetimes import DEFAULT_MAX_TTL
from tokend.settings.options import ACCESS_TOKENS, DAEMON


def test_the_daemon_takes_both_options() -> None:
    assert {option.name for option in ACCESS_TOKENS} <= set(DAEMON)


def test_by_default_the_database_is_in_state_beside_the_config_directory(tmp_path: Path) -> None:
    tokens = parsed(tmp_path).settings.access_tokens
    assert tokens.location.path == tmp_path / "state" / "tokend.db"
    assert tokens.location.url.drivername == "sqlite"
    assert tokens.max_ttl == DEFAULT_MAX_TTL
    assert not (tmp_path / "state").exists(), "created at start-up, not when parsing"


def test_the_command_line_wins_over_the_environment(tmp_path: Path) -> None:
    environ = {
        "TOKEND_DATABASE": "postgresql://tokend@db.example/tokend",
        "TOKEND_ACCESS_TOKEN_MAX_TTL": "86400",
    }
    tokens = parsed(tmp_path, environ=environ).settings.access_tokens
    assert tokens.location.path is None and tokens.location.url.host == "db.example"
    assert tokens.max_ttl == 86400
    database = str(tmp_path / "tokens.db")
    tokens = parsed(
        tmp_path, "--database", database, "--access-token-max-ttl", "3600", environ=environ
    ).settings.access_tokens
    assert tokens.location.path == Path(database) and tokens.max_ttl == 3600


@pytest.mark.parametrize(
    ("environ", "args", "message"),
    [
        ({"TOKEND_DATABASE": "mysql://u@h/db"}, [], "TOKEND_DATABASE: mysql:// is not supported"),
        ({}, ["--database", "mysql://u@h/db"], "--database: mysql:// is not supported"),
        ({}, ["--database", "sqlite:///relative.db"], "--database sqlite:///PATH needs an abs"),
        ({}, ["--database", "nowhere/tokens.db"], "--database nowhere/tokens.db: the directory"),
        ({}, ["--access-token-max-ttl", "59"], "--access-token-max-ttl must be between 60"),
        ({"TOKEND_ACCESS_TOKEN_MAX_TTL": "1y"}, [], "TOKEND_ACCESS_TOKEN_MAX_TTL must be a whole"),
    ],
)
def test_a_value_the_daemon_cannot_use_is_one_sentence(
    tmp_path: Path, environ: dict[str, str], args: list[str], message: str
) -> None:
    with pytest.raises(UsageError) as error:
        parsed(tmp_path, *args, environ=environ)
    assert str(error.value).startswith(message)
