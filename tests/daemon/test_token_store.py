"""The schema upgrade at start-up, alone and reactor-free (a Clock, work run inline): a database
that does not answer is logged once and tried again until it does; a newer tokend's schema stops
start-up with one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from tokend.daemon.services import StartUpFailure
from tokend.daemon.token_store import SchemaUpgrade, TokenStore
from tokend.store.database import RETRY_AFTER, connect, locate
from tokend.store.migrating import head, upgrade, version
from tokend.threads import InlineRunner

NOWHERE = "postgresql://tokend@/tokend?host=/nonexistent"


def test_an_unreachable_database_is_logged_once_and_tried_again() -> None:
    clock = Clock()
    upgrading = SchemaUpgrade(locate(NOWHERE), InlineRunner(), clock, StartUpFailure(None))
    with capturedLogs() as events:
        upgrading.startService()
        for _ in range(3):
            assert len(clock.getDelayedCalls()) == 1
            clock.advance(RETRY_AFTER)
    said = [event for event in events if event["log_level"].name in ("error", "critical")]
    assert len(said) == 1 and "token logins get 503" in said[0]["log_format"]
    upgrading.stopService()
    assert clock.getDelayedCalls() == []


def test_a_newer_tokends_schema_stops_start_up(tmp_path: Path) -> None:
    location = locate(str(tmp_path / "tokens.db"))
    upgrade(location)
    engine = connect(location)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    upgrading = SchemaUpgrade(location, InlineRunner(), Clock(), StartUpFailure(None))
    with capturedLogs() as events, pytest.raises(SystemExit):
        upgrading.startService()
    assert "schema version 0099, which this tokend does not know" in str(events[-1])


def test_the_store_service_upgrades_only_when_asked(tmp_path: Path) -> None:
    location = locate(str(tmp_path / "tokens.db"))
    worker = TokenStore(location, Clock())
    assert not (tmp_path / "tokens.db").exists(), "no file touched before start-up"
    worker.startService()
    worker.stopService()
    first = TokenStore(location, Clock(), upgrade_with=StartUpFailure(None))
    first.startService()
    try:
        assert version(location).current == head()
    finally:
        first.stopService()
