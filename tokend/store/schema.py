"""The tables, in SQLAlchemy Core, as the newest migration leaves them.

Times are whole seconds since the epoch (one meaning in SQLite and PostgreSQL, no time zones);
a token's cap is JSON text (repository pattern -> actions, as in users.json). Only the SHA-256
of a secret is kept: a token can never be read back.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text

metadata = MetaData()

access_tokens = Table(
    "access_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(256), nullable=False),
    Column("name", String(256), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("cap", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Column("last_used_at", BigInteger, nullable=True),
    Column("last_used_from", String(64), nullable=True),
    Index("ix_access_tokens_owner", "owner"),
)
