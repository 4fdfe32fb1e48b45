"""Signed round heads: per-run public key and signed start/end; per-round Merkle root and signature.

``runs`` gains ``public_key``, ``start_sig`` and ``end_sig`` (``mbiagents.ledger.signing``);
the new table ``round_heads`` holds each round's Merkle root over its transfers and its
signed head, append-only like the rounds (UPDATE and DELETE refused by triggers).

Revision ID: 0004_signed_heads
Revises: 0002
Create Date: 2026-12-03
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004_signed_heads"
down_revision: Union[str, None] = "0003_escrow"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("public_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("start_sig", sa.String(128), nullable=True))
        batch.add_column(sa.Column("end_sig", sa.String(128), nullable=True))
    op.create_table(
        "round_heads",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("round_index", sa.Integer(), primary_key=True),
        sa.Column("merkle_root", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
    )
    dialect = op.get_bind().dialect.name
    for action in ("UPDATE", "DELETE"):
        name = f"round_heads_no_{action.lower()}"
        if dialect == "postgresql":  # mbi_append_only() is migration 0002's
            op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON round_heads "
                       f"FOR EACH ROW EXECUTE FUNCTION mbi_append_only()")
        elif dialect == "sqlite":
            op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON round_heads BEGIN "
                       f"SELECT RAISE(ABORT, 'mbi ledger: {action} on round_heads is refused: "
                       f"the ledger is append-only'); END")
    if dialect == "postgresql":
        op.execute("CREATE TRIGGER round_heads_no_truncate BEFORE TRUNCATE ON round_heads "
                   "FOR EACH STATEMENT EXECUTE FUNCTION mbi_append_only()")


def downgrade() -> None:
    op.drop_table("round_heads")  # its triggers go with it
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("end_sig")
        batch.drop_column("start_sig")
        batch.drop_column("public_key")
