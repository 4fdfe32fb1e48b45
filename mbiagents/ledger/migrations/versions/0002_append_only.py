"""Append-only ledger: database triggers refuse UPDATE and DELETE; runs record their end.

Transfers, events and rounds are immutable in the database itself (PostgreSQL and SQLite
triggers), not only in the code: corrections are new reversing transfers. ``runs`` gains
``final_rounds`` and ``final_hash``, set when a run finishes, so the audit can tell a
deleted last round from a run that ended there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

APPEND_ONLY = ("transfers", "events", "rounds")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION mbi_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'mbi ledger: % on % is refused: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("final_rounds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("final_hash", sa.String(64), nullable=True))
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_FUNCTION)
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            name = f"{table}_no_{action.lower()}"
            if dialect == "postgresql":
                op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON {table} "
                           f"FOR EACH ROW EXECUTE FUNCTION mbi_append_only()")
                if action == "DELETE":
                    op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                               f"FOR EACH STATEMENT EXECUTE FUNCTION mbi_append_only()")
            elif dialect == "sqlite":
                op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON {table} BEGIN "
                           f"SELECT RAISE(ABORT, 'mbi ledger: {action} on {table} is refused: "
                           f"the ledger is append-only'); END")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in APPEND_ONLY:
        for action in ("update", "delete"):
            if dialect == "postgresql":
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action} ON {table}")
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            elif dialect == "sqlite":
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS mbi_append_only()")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("final_hash")
        batch.drop_column("final_rounds")
