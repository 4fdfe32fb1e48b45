"""Initial ledger: runs, accounts, rounds, events, transfers.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("game", sa.String(40), nullable=False),
        sa.Column("mechanism", sa.String(40), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("scenario_json", sa.Text(), nullable=False),
        sa.Column("minor_units", sa.BigInteger(), nullable=False),
        sa.Column("header_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(80), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
    )
    op.create_table(
        "rounds",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("index", sa.Integer(), primary_key=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("n_transfers", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
    )
    op.create_table(
        "events",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("round_index", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("agent", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
    )
    op.create_index("ix_events_kind", "events", ["run_id", "kind"])
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("debit", sa.String(80), nullable=False),
        sa.Column("credit", sa.String(80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_transfers_amount_positive"),
        sa.CheckConstraint("debit <> credit", name="ck_transfers_distinct_accounts"),
        sa.ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
        sa.ForeignKeyConstraint(["run_id", "debit"], ["accounts.run_id", "accounts.name"]),
        sa.ForeignKeyConstraint(["run_id", "credit"], ["accounts.run_id", "accounts.name"]),
    )
    op.create_index("ix_transfers_run_round", "transfers", ["run_id", "round_index"])


def downgrade() -> None:
    op.drop_index("ix_transfers_run_round", table_name="transfers")
    op.drop_table("transfers")
    op.drop_index("ix_events_kind", table_name="events")
    op.drop_table("events")
    op.drop_table("rounds")
    op.drop_table("accounts")
    op.drop_table("runs")
