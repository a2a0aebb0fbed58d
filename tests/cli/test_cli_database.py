"""``tokend db version`` and ``tokend db upgrade`` on the daemon's database (``--database``,
``TOKEND_DATABASE``): what they print, and one sentence when the database cannot be used."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tokend.cli import main


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(argv, stdin=io.StringIO(), stdout=out), out.getvalue()


def test_upgrade_then_version_on_a_sqlite_file(tmp_path: Path) -> None:
    database = str(tmp_path / "tokens.db")
    assert run(["db", "upgrade", "--database", database]) == (
        0,
        f"sqlite:///{database}: schema version none (empty) -> 0002\n",
    )
    assert run(["db", "upgrade", "--database", database]) == (
        0,
        f"sqlite:///{database}: already at schema version 0002\n",
    )
    status, out = run(["db", "version", "--database", database])
    assert status == 0 and "schema version: 0002\nnewest: 0002 (up to date)" in out


def test_the_daemons_variable_names_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = str(tmp_path / "tokens.db")
    monkeypatch.setenv("TOKEND_DATABASE", database)
    assert run(["db", "upgrade"])[0] == 0
    status, out = run(["db", "version", "--json"])
    assert status == 0
    assert json.loads(out) == {
        "database": f"sqlite:///{database}",
        "current": "0002",
        "head": "0002",
    }


def test_a_database_that_cannot_be_used_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["db", "version", "--database", "mysql://u@h/db"])[0] == 2
    assert "mysql:// is not supported" in capsys.readouterr().err
    assert run(["db", "version", "--database", str(tmp_path / "none.db")])[0] == 1
    assert "does not exist (tokend db upgrade creates it)" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    nowhere = "postgresql://tokend:hunter2@/tokend?host=/nonexistent"
    assert run(["db", "upgrade", "--database", nowhere])[0] == 1
    said = capsys.readouterr().err
    assert (
        said.startswith("tokend db: database postgresql+psycopg://tokend:***@") and "\n" == said[-1]
    )
    assert "hunter2" not in said and said.count("\n") == 1


def test_by_default_the_database_is_the_daemons_beside_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(tmp_path / "config"))
    database = tmp_path / "state" / "tokend.db"
    assert run(["db", "upgrade"]) == (
        0,
        f"sqlite:///{database}: schema version none (empty) -> 0002\n",
    )
    assert database.is_file() and oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
