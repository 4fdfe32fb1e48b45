"""ORM models of the ledger (SQLAlchemy 2.0). The schema is created only by migrations."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, ForeignKeyConstraint, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One run of a scenario. ``header_hash`` anchors the round hash chain.

    ``final_rounds`` and ``final_hash`` are recorded when the run finishes, so the audit
    notices a deleted last round (the chain alone cannot).
    """

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    game: Mapped[str] = mapped_column(String(40))
    mechanism: Mapped[str] = mapped_column(String(40))
    seed: Mapped[int] = mapped_column(BigInteger)
    scenario_json: Mapped[str] = mapped_column(Text)
    minor_units: Mapped[int] = mapped_column(BigInteger)
    header_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(String(32))
    final_rounds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    final_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # signed heads (migration 0004_signed_heads; mbiagents.ledger.signing): None when unsigned
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    start_sig: Mapped[str | None] = mapped_column(String(128), nullable=True)
    end_sig: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Account(Base):
    """A run's account: one per agent (``agent:<id>``) and the ``treasury`` (the operator)."""

    __tablename__ = "accounts"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    floor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # lowest balance allowed; None: unbounded

    __table_args__ = (ForeignKeyConstraint(["run_id"], ["runs.id"]),)


class Round(Base):
    """A settled round: its hash covers its events and transfers and the previous hash."""

    __tablename__ = "rounds"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    n_events: Mapped[int] = mapped_column(Integer)
    n_transfers: Mapped[int] = mapped_column(Integer)

    __table_args__ = (ForeignKeyConstraint(["run_id"], ["runs.id"]),)


class Event(Base):
    """Something that happened in a round: reports, signals, actions, outcome, payments, ...

    ``payload`` is canonical JSON (sorted keys, no spaces); per-agent arrays follow the
    run's account positions.
    """

    __tablename__ = "events"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    round_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
        Index("ix_events_kind", "run_id", "kind"),
    )


class Transfer(Base):
    """An immutable transfer of ``amount`` minor units from ``debit`` to ``credit``.

    No foreign keys (migration ``0005_compact``): the write path checks the accounts and
    writes the round row in the same transaction; ``mbi audit`` checks both.
    """

    __tablename__ = "transfers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    round_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    debit: Mapped[str] = mapped_column(String(80))
    credit: Mapped[str] = mapped_column(String(80))
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("amount > 0", name="ck_transfers_amount_positive"),
        CheckConstraint("debit <> credit", name="ck_transfers_distinct_accounts"),
        Index("ix_transfers_run_round", "run_id", "round_index"),
    )


class RoundHead(Base):
    """A round's Merkle root over its transfers and its signed head (``mbiagents.ledger.signing``).

    Written in the round's transaction; append-only like the round. ``signature`` is
    ``None`` in an unsigned run.
    """

    __tablename__ = "round_heads"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    round_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    merkle_root: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),)


class PendingTransfer(Base):
    """A two-phase transfer (TigerBeetle's pending): ``amount`` reserved from ``debit`` for
    ``credit``; nothing moves until its resolution posts it."""

    __tablename__ = "pending_transfers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    round_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    debit: Mapped[str] = mapped_column(String(80))
    credit: Mapped[str] = mapped_column(String(80))
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("amount > 0", name="ck_pending_amount_positive"),
        CheckConstraint("debit <> credit", name="ck_pending_distinct_accounts"),
        ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
        ForeignKeyConstraint(["run_id", "debit"], ["accounts.run_id", "accounts.name"]),
        ForeignKeyConstraint(["run_id", "credit"], ["accounts.run_id", "accounts.name"]),
        Index("ix_pending_run_round", "run_id", "round_index"),
    )


class PendingResolution(Base):
    """The one resolution of a pending transfer: ``posted`` (``amount`` moves, at most the
    pending amount) or ``voided`` (nothing moves). Keyed by the pending id: exactly once."""

    __tablename__ = "pending_resolutions"

    pending_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    round_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("state in ('posted', 'voided')", name="ck_resolution_state"),
        CheckConstraint("amount >= 0 and (state = 'posted' or amount = 0)", name="ck_resolution_amount"),
        ForeignKeyConstraint(["pending_id"], ["pending_transfers.id"]),
        ForeignKeyConstraint(["run_id", "round_index"], ["rounds.run_id", "rounds.index"]),
        Index("ix_resolutions_run_round", "run_id", "round_index"),
    )


class ArrayRecord(Base):
    """A numpy array of a round's event ``<kind>.<field>`` (migration ``0005_compact``).

    ``data`` is the array's raw little-endian bytes (C order), ``dtype`` its numpy dtype
    string (``<f8``, ``<i8``, ...) and ``shape`` its dimensions joined by commas. The
    round's hash covers the SHA-256 of ``data`` with the name, dtype and shape.
    """

    __tablename__ = "arrays"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    round_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    dtype: Mapped[str] = mapped_column(String(8))
    shape: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
