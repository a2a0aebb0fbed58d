"""The bottom floor's file watch (tokend/file_watch.py): what it keeps out of the daemon's log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import reactor

from tokend.file_watch import INACTIVE_EMITTER
from tokend.policy.watcher import PolicyWatchService


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def test_a_started_watch_drops_watchdogs_shutdown_race_line_and_nothing_else(
    tmp_path: Path, kept: Kept
) -> None:
    """An event read as its watch stops makes watchdog log INACTIVE_EMITTER as an error, which
    reached twistd's stderr as ``[stderr#error]`` at a daemon's SIGTERM (a flaky
    test_hang_ups_hold_their_places_count_and_leave_sigterm_prompt). Once a watch has started,
    that line is dropped; watchdog's other errors still get through."""
    emitter_log = logging.getLogger("watchdog.observers.inotify")
    for existing in list(emitter_log.filters):
        emitter_log.removeFilter(existing)
    watch = PolicyWatchService(tmp_path, lambda reason: None, reactor)
    watch.privilegedStartService()
    try:
        emitter_log.error(INACTIVE_EMITTER)
        emitter_log.error("something else went wrong")
    finally:
        watch.stopService()
    assert kept.messages == ["something else went wrong"]
