"""Compact ledger: per-round array records, and transfers without per-row foreign keys.

- ``arrays``: one row per named array of a round (``<event kind>.<field>``: raw
  little-endian bytes of a numpy array, its dtype and shape). A round's hash covers each
  array's SHA-256 (``mbiagents.ledger.store.round_hash``), so a policy population's
  per-agent reports, signals, actions and payments cost 8 bytes per agent and field
  instead of a JSON number. Append-only like the other tables (triggers).
- ``transfers`` loses its three foreign keys (round, debit account, credit account):
  on PostgreSQL they were most of the COPY time (three index probes per row). The write
  path checks every account against the run's accounts before it writes, the round row
  is written in the same transaction, and ``mbi audit`` checks both (``double_entry``:
  accounts of the run; ``hash_chain``: a row outside a hashed round breaks the chain).

Revision ID: 0005_compact
Revises: 0002
Create Date: 2026-12-03
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005_compact"
down_revision: Union[str, None] = "0004_signed_heads"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TRANSFER_COLUMNS = "id, run_id, round_index, kind, debit, credit, amount"
TRANSFER_FKS = (
    (["run_id", "round_index"], "rounds", ["run_id", "index"]),
    (["run_id", "debit"], "accounts", ["run_id", "name"]),
    (["run_id", "credit"], "accounts", ["run_id", "name"]),
)


def _transfers_table(name: str, with_fks: bool) -> None:
    fks = [sa.ForeignKeyConstraint(cols, [f"{t}.{c}" for c in ref]) for cols, t, ref in TRANSFER_FKS] if with_fks else []
    op.create_table(
        name,
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("debit", sa.String(80), nullable=False),
        sa.Column("credit", sa.String(80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_transfers_amount_positive"),
        sa.CheckConstraint("debit <> credit", name="ck_transfers_distinct_accounts"),
        *fks,
    )


def _append_only(table: str, dialect: str) -> None:
    """The triggers of migration 0002 for ``table`` (UPDATE, DELETE; TRUNCATE on PostgreSQL)."""
    for action in ("UPDATE", "DELETE"):
        name = f"{table}_no_{action.lower()}"
        if dialect == "postgresql":
            op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON {table} FOR EACH ROW EXECUTE FUNCTION mbi_append_only()")
        elif dialect == "sqlite":
            op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON {table} BEGIN SELECT RAISE(ABORT, "
                       f"'mbi ledger: {action} on {table} is refused: the ledger is append-only'); END")
    if dialect == "postgresql":
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION mbi_append_only()")


def _rebuild_transfers_sqlite(with_fks: bool) -> None:
    """SQLite cannot drop or add a foreign key: copy the table (its triggers go with it)."""
    _transfers_table("transfers_new", with_fks)
    op.execute(f"INSERT INTO transfers_new ({TRANSFER_COLUMNS}) SELECT {TRANSFER_COLUMNS} FROM transfers")
    op.drop_index("ix_transfers_run_round", table_name="transfers")
    op.drop_table("transfers")
    op.rename_table("transfers_new", "transfers")
    op.create_index("ix_transfers_run_round", "transfers", ["run_id", "round_index"])
    _append_only("transfers", "sqlite")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "arrays",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("round_index", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("shape", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    _append_only("arrays", dialect)
    if dialect == "postgresql":
        fks = op.get_bind().execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'transfers'::regclass AND contype = 'f'")).scalars().all()
        for name in fks:
            op.drop_constraint(name, "transfers", type_="foreignkey")
    elif dialect == "sqlite":
        _rebuild_transfers_sqlite(with_fks=False)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for cols, table, ref in TRANSFER_FKS:
            op.create_foreign_key(None, "transfers", table, cols, ref)
        for action in ("update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS arrays_no_{action} ON arrays")
    elif dialect == "sqlite":
        _rebuild_transfers_sqlite(with_fks=True)
        for action in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS arrays_no_{action}")
    op.drop_table("arrays")
