"""The schema's versions, by Alembic: which one a database is at, and bringing it to the newest.

The daemon upgrades at start-up and ``tokend db upgrade`` does it by hand; both run
:func:`upgrade`, which is idempotent. A database at a version this tokend does not know (a newer
tokend's) is refused rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from tokend.store.database import Location, connect, guarded

SCRIPTS = "tokend.store:migrations"
MIGRATION_LOCK = 0x746F6B656E64
"""The PostgreSQL advisory lock an upgrade holds ("tokend" in ASCII): daemons sharing a
database and starting together upgrade it one after the other, never side by side."""


class UnknownVersion(Exception):
    """The database was migrated by a newer tokend: this one cannot know its tables."""


@dataclass(frozen=True, slots=True)
class Version:
    """Where a database stands: ``current`` is None for an empty one."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPTS)
    return config


def head() -> str:
    """The newest schema version this tokend knows."""
    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def _current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        found = MigrationContext.configure(connection).get_current_revision()
    if found is not None and found not in _known():
        raise UnknownVersion(
            f"the database is at schema version {found}, which this tokend does not know "
            f"(its newest is {head()}): a newer tokend migrated it"
        )
    return found


def _known() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def version_of(engine: Engine) -> Version:
    return Version(_current(engine), head())


def upgrade_engine(engine: Engine, to: str = "head") -> Version:
    """Apply the versions the database lacks, in one transaction; on PostgreSQL under
    :data:`MIGRATION_LOCK`, so another upgrade running waits and then finds them applied."""
    _current(engine)
    config = _config()
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, to)
    return version_of(engine)


def version(location: Location) -> Version:
    """The version of the database at ``location`` and the newest one; a SQLite file that does
    not exist is a DatabaseError, not created."""
    engine = connect(location, create=False)
    try:
        return guarded(location, version_of, engine)
    finally:
        engine.dispose()


def upgrade(location: Location) -> tuple[Version, Version]:
    """Bring the database at ``location`` to the newest version: (before, after)."""
    engine = connect(location)
    try:
        before = guarded(location, version_of, engine)
        return before, guarded(location, upgrade_engine, engine)
    finally:
        engine.dispose()
