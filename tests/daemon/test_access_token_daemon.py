"""The access tokens' database in the real daemon (#26): created and brought to the newest
schema version at start-up, once (by the first process under ``--workers``), and a database
that cannot be reached at start-up does not stop password and anonymous logins; its versions
are applied when it answers."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import start
from postgres_server import PostgresServer, running_postgres
from support import (
    start_failure,
    stop_process,
    wait_for,
    write_key_pair,
    write_policy,
)

from tokend.store.database import DatabaseUnavailable, locate
from tokend.store.migrating import head, version

UPGRADED = "access tokens: database {shown} upgraded from schema version none to {head}"


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def upgraded(location: str) -> bool:
    try:
        return version(locate(location)).up_to_date
    except DatabaseUnavailable:
        return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_daemon_creates_the_default_database_and_upgrades_it_once(
    tmp_path: Path, workers: str
) -> None:
    daemon = start(tmp_path, workers=workers)
    try:
        database = tmp_path / "state" / "tokend.db"
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        assert version(locate(str(database))).current == head()
        said = UPGRADED.format(shown=f"sqlite:///{database}", head=head())
        assert daemon.log_text().count(said) == 1, daemon.log_text()
        assert daemon.login("alice", "alice-pw") == 200
    finally:
        stop_process(daemon.process)
    (tmp_path / "tokend.log").unlink()
    daemon = start(tmp_path, workers=workers)
    try:
        said = f"access tokens: database sqlite:///{database} at schema version {head()}"
        assert daemon.log_text().count(said) == 1, daemon.log_text()
    finally:
        stop_process(daemon.process)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_database_down_at_start_up_stops_no_login_and_is_upgraded_when_it_answers(
    tmp_path: Path, postgres: PostgresServer, workers: str
) -> None:
    postgres.stop()
    daemon = start(tmp_path, "--database", postgres.url, workers=workers)
    try:
        assert daemon.login("alice", "alice-pw") == 200
        assert daemon.request("/v2/token?service=svc&scope=repository:pub/x:pull")[0] == 200
        log = daemon.log_text()
        assert log.count("access tokens: database postgresql+psycopg://tokend@/tokend") == 1, log
        assert "unavailable" in log and "token logins get 503 until it answers" in log
        postgres.start()
        wait_for("the upgrade once the database answers", lambda: upgraded(postgres.url))
        upgrade_logged = "upgraded from schema version none"
        wait_for("the upgrade logged", lambda: upgrade_logged in daemon.log_text())
    finally:
        stop_process(daemon.process)


def test_a_database_that_cannot_be_created_stops_start_up_with_one_sentence(
    tmp_path: Path,
) -> None:
    """state/ taken by a file beside the config directory (in a container: a working
    directory only root may write): twistd exits 1 with the reason, no traceback."""
    (tmp_path / "state").write_text("not a directory")
    config = tmp_path / "config"
    write_policy(config, {"alice": ("alice-pw", {"*": ["pull"]})}, {"repositories": []})
    key, cert = write_key_pair(tmp_path)
    text = start_failure(
        tmp_path,
        "--listen", f"unix:{tmp_path / 'tokend.sock'}", "--config-dir", str(config),
        "--key", str(key), "--cert", str(cert), "--workers", "1",
    )  # fmt: skip
    assert f"cannot create {tmp_path / 'state'} for the access tokens' database" in text, text
