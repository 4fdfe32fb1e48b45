"""Escrow and budgets: pending transfers, their one resolution, account floors.

TigerBeetle's two-phase transfers (pending -> posted | voided) for the append-only ledger:

- ``pending_transfers``: a transfer that reserves ``amount`` from ``debit`` for ``credit``
  but moves nothing yet (written in a round, covered by that round's hash);
- ``pending_resolutions``: the one resolution of a pending transfer, written in a later
  (or the same) round: ``posted`` with ``0 <= amount <= pending amount`` (the money that
  moves) or ``voided`` (amount 0). Its primary key is the pending transfer's id, so the
  database itself refuses a second resolution; resolving is a new row, never an UPDATE;
- ``accounts.floor``: the lowest balance an account may reach (NULL: unbounded); the write
  path refuses a round that would take an account's available balance (posted balance
  minus unresolved pending debits) below it, and the audit re-checks every round;
- a trigger refuses a round inserted into a ``completed`` run.

Both new tables get the append-only triggers of migration 0002.

Revision ID: 0003_escrow
Revises: 0002
Create Date: 2026-12-03
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003_escrow"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

APPEND_ONLY = ("pending_transfers", "pending_resolutions")

PG_COMPLETED = """
CREATE OR REPLACE FUNCTION mbi_no_append_completed() RETURNS trigger AS $$
BEGIN
    IF (SELECT status FROM runs WHERE id = NEW.run_id) = 'completed' THEN
        RAISE EXCEPTION 'mbi ledger: run % is completed: no round may be appended', NEW.run_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.add_column("accounts", sa.Column("floor", sa.BigInteger(), nullable=True))
    op.create_table(
        "pending_transfers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("debit", sa.String(80), nullable=False),
        sa.Column("credit", sa.String(80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_pending_amount_positive"),
        sa.CheckConstraint("debit <> credit", name="ck_pending_distinct_accounts"),
        sa.ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
        sa.ForeignKeyConstraint(["run_id", "debit"], ["accounts.run_id", "accounts.name"]),
        sa.ForeignKeyConstraint(["run_id", "credit"], ["accounts.run_id", "accounts.name"]),
    )
    op.create_index("ix_pending_run_round", "pending_transfers", ["run_id", "round_index"])
    op.create_table(
        "pending_resolutions",
        sa.Column("pending_id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state in ('posted', 'voided')", name="ck_resolution_state"),
        sa.CheckConstraint("amount >= 0 and (state = 'posted' or amount = 0)", name="ck_resolution_amount"),
        sa.ForeignKeyConstraint(["pending_id"], ["pending_transfers.id"]),
        sa.ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
    )
    op.create_index("ix_resolutions_run_round", "pending_resolutions", ["run_id", "round_index"])
    dialect = op.get_bind().dialect.name
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
    if dialect == "postgresql":
        op.execute(PG_COMPLETED)
        op.execute("CREATE TRIGGER rounds_no_append_completed BEFORE INSERT ON rounds "
                   "FOR EACH ROW EXECUTE FUNCTION mbi_no_append_completed()")
    elif dialect == "sqlite":
        op.execute("CREATE TRIGGER rounds_no_append_completed BEFORE INSERT ON rounds "
                   "WHEN (SELECT status FROM runs WHERE id = NEW.run_id) = 'completed' BEGIN "
                   "SELECT RAISE(ABORT, 'mbi ledger: the run is completed: no round may be appended'); END")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS rounds_no_append_completed ON rounds")
        op.execute("DROP FUNCTION IF EXISTS mbi_no_append_completed()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS rounds_no_append_completed")
    for table in APPEND_ONLY:
        for action in ("update", "delete"):
            if dialect == "postgresql":
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action} ON {table}")
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            elif dialect == "sqlite":
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
    op.drop_index("ix_resolutions_run_round", table_name="pending_resolutions")
    op.drop_table("pending_resolutions")
    op.drop_index("ix_pending_run_round", table_name="pending_transfers")
    op.drop_table("pending_transfers")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("floor")
