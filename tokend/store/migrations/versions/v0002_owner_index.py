"""An index on access_tokens.owner: listing one owner's tokens reads only theirs.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_access_tokens_owner", "access_tokens", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_access_tokens_owner", table_name="access_tokens")
