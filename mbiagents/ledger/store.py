"""The ledger's write path and readers. One round = one database transaction."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy import Engine, create_engine, event, func, insert, inspect, select, update
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from mbiagents.errors import LedgerError
from mbiagents.ledger.models import Account, Event, Round, Run, Transfer
from mbiagents.ledger.money import MINOR_UNITS

DEFAULT_LEDGER_URL = "sqlite:///mbi-ledger.db"
TREASURY = "treasury"
GENESIS = "0" * 64


def agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, no NaN. Event payloads are stored like this."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def transfer_id(run_id: str, round_index: int, kind: str, debit: str, credit: str) -> str:
    """Deterministic transfer id: the same round written twice yields the same ids."""
    return f"{run_id}:{round_index}:{kind}:{debit}:{credit}"


@dataclass(frozen=True)
class EventRow:
    kind: str
    payload: Any
    agent: str | None = None


@dataclass(frozen=True)
class TransferRow:
    kind: str
    debit: str
    credit: str
    amount: int


@dataclass
class WriteResult:
    round_index: int
    hash: str
    duplicate: bool = False
    n_transfers: int = 0


@dataclass
class RoundRecord:
    """A round as read back from the ledger."""

    index: int
    prev_hash: str
    hash: str
    events: list[tuple[int, str, str | None, str]] = field(default_factory=list)  # seq, kind, agent, payload
    transfers: list[tuple[str, str, str, str, int]] = field(default_factory=list)  # id, kind, debit, credit, amount

    def payload(self, kind: str) -> Any:
        for _, k, agent, text in self.events:
            if k == kind and agent is None:
                return json.loads(text)
        raise KeyError(kind)


def header_hash(run: dict[str, Any]) -> str:
    fields = [run["id"], run["name"], run["game"], run["mechanism"], run["seed"], run["scenario_json"], run["minor_units"]]
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def round_hash(
    prev_hash: str,
    round_index: int,
    events: Iterable[tuple[int, str, str | None, str]],
    transfers: Iterable[tuple[str, str, str, str, int]],
) -> str:
    """SHA-256 over the previous hash and the round's rows in a canonical line encoding.

    Lines: ``R\\t<index>\\t<prev>``, then ``E\\t<seq>\\t<kind>\\t<agent>\\t<payload>`` per event
    in seq order and ``T\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>`` per transfer in id
    order. Ids, kinds and account names cannot hold tabs or newlines; payloads are compact
    JSON, which escapes them.
    """
    lines = [f"R\t{round_index}\t{prev_hash}"]
    lines += [f"E\t{s}\t{k}\t{a or ''}\t{p}" for s, k, a, p in sorted(events)]
    lines += [f"T\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in sorted(transfers)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _enable_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - driver callback
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine for an SQLAlchemy URL; a clear ``LedgerError`` if it is unusable."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        engine = create_engine(url, future=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise LedgerError(f"ledger URL {url!r} is not a usable SQLAlchemy URL: {exc}") from None
    if engine.dialect.name == "sqlite":
        db = engine.url.database
        if db and db != ":memory:" and not Path(db).parent.exists():
            raise LedgerError(f"ledger URL {url!r}: folder {Path(db).parent} does not exist")
        _enable_sqlite_pragmas(engine)
    return engine


class Ledger:
    """Access to one ledger database (schema managed by Alembic; see ``mbiagents.ledger.schema``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ---- runs -----------------------------------------------------------------------
    def create_run(self, *, name: str, game: str, mechanism: str, seed: int, scenario: dict[str, Any],
                   agent_ids: Sequence[str], extra_accounts: Sequence[str] = (), run_id: str | None = None) -> str:
        run_id = run_id or uuid.uuid4().hex
        row = dict(id=run_id, name=name, game=game, mechanism=mechanism, seed=seed,
                   scenario_json=canonical_json(scenario), minor_units=MINOR_UNITS)
        row["header_hash"] = header_hash(row)
        row["status"] = "running"
        row["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        accounts = [dict(run_id=run_id, name=agent_account(a), kind="agent", position=i) for i, a in enumerate(agent_ids)]
        accounts.append(dict(run_id=run_id, name=TREASURY, kind="treasury", position=len(agent_ids)))
        accounts += [dict(run_id=run_id, name=n, kind="mechanism", position=len(agent_ids) + 1 + j)
                     for j, n in enumerate(extra_accounts)]
        with self._begin() as conn:
            conn.execute(insert(Run), [row])
            conn.execute(insert(Account), accounts)
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        with self._begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(status=status))

    def get_run(self, run_id: str | None) -> Run:
        """The run with this id (or the latest run if ``None``); ``LedgerError`` if absent."""
        with self._session() as s:
            if run_id is None:
                run = s.scalars(select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(1)).first()
                if run is None:
                    raise LedgerError(f"ledger {self.url} has no runs")
            else:
                run = s.get(Run, run_id)
                if run is None:
                    raise LedgerError(f"ledger {self.url} has no run {run_id!r}")
            s.expunge(run)
            return run

    def accounts(self, run_id: str) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Account.name, Account.kind).where(Account.run_id == run_id).order_by(Account.position)
            ).all()
        return [(r[0], r[1]) for r in rows]

    # ---- rounds ---------------------------------------------------------------------
    def last_hash(self, conn, run_id: str) -> tuple[int, str]:
        row = conn.execute(
            select(Round.index, Round.hash).where(Round.run_id == run_id).order_by(Round.index.desc()).limit(1)
        ).first()
        if row is None:
            head = conn.execute(select(Run.header_hash).where(Run.id == run_id)).scalar_one()
            return -1, head
        return row[0], row[1]

    def write_round(self, run_id: str, round_index: int, events: Sequence[EventRow],
                    transfers: Sequence[TransferRow]) -> WriteResult:
        """Write one round atomically; a repeat of an already written round is a no-op duplicate."""
        ev = [(seq, e.kind, e.agent, canonical_json(e.payload)) for seq, e in enumerate(events)]
        tr = [(transfer_id(run_id, round_index, t.kind, t.debit, t.credit), t.kind, t.debit, t.credit, int(t.amount))
              for t in transfers if t.amount != 0]
        for t in tr:
            if t[4] < 0:
                raise ValueError(f"transfer {t[0]} has a negative amount; swap debit and credit")
        with self._begin() as conn:
            existing = conn.execute(
                select(Round.hash, Round.prev_hash).where(Round.run_id == run_id, Round.index == round_index)
            ).first()
            if existing is not None:
                h = round_hash(existing[1], round_index, ev, tr)
                if h != existing[0]:
                    raise LedgerError(f"run {run_id} round {round_index} was already written with different content")
                return WriteResult(round_index, h, duplicate=True, n_transfers=len(tr))
            last_index, prev = self.last_hash(conn, run_id)
            if last_index != round_index - 1:
                raise LedgerError(f"run {run_id}: round {round_index} written after round {last_index}")
            h = round_hash(prev, round_index, ev, tr)
            conn.execute(insert(Round), [dict(run_id=run_id, index=round_index, prev_hash=prev, hash=h,
                                              n_events=len(ev), n_transfers=len(tr))])
            if ev:
                conn.execute(insert(Event), [dict(run_id=run_id, round_index=round_index, seq=s, kind=k, agent=a,
                                                  payload=p) for s, k, a, p in ev])
            if tr:
                conn.execute(insert(Transfer), [dict(id=i, run_id=run_id, round_index=round_index, kind=k, debit=d,
                                                     credit=c, amount=m) for i, k, d, c, m in tr])
        return WriteResult(round_index, h, n_transfers=len(tr))

    def read_rounds(self, run_id: str) -> list[RoundRecord]:
        """All rounds of a run with their events and transfers, in order."""
        with self.engine.connect() as conn:
            rounds = {r.index: RoundRecord(r.index, r.prev_hash, r.hash) for r in conn.execute(
                select(Round.index, Round.prev_hash, Round.hash).where(Round.run_id == run_id).order_by(Round.index))}
            for r in conn.execute(select(Event.round_index, Event.seq, Event.kind, Event.agent, Event.payload)
                                  .where(Event.run_id == run_id).order_by(Event.round_index, Event.seq)):
                rounds.setdefault(r[0], RoundRecord(r[0], "", "")).events.append((r[1], r[2], r[3], r[4]))
            for r in conn.execute(select(Transfer.round_index, Transfer.id, Transfer.kind, Transfer.debit,
                                         Transfer.credit, Transfer.amount)
                                  .where(Transfer.run_id == run_id).order_by(Transfer.round_index, Transfer.id)):
                rounds.setdefault(r[0], RoundRecord(r[0], "", "")).transfers.append((r[1], r[2], r[3], r[4], r[5]))
        return [rounds[k] for k in sorted(rounds)]

    def balances(self, run_id: str) -> dict[str, int]:
        """Derived balances (credits minus debits) of every account of a run."""
        out = {name: 0 for name, _ in self.accounts(run_id)}
        with self.engine.connect() as conn:
            for acct, total in conn.execute(select(Transfer.credit, func.sum(Transfer.amount))
                                            .where(Transfer.run_id == run_id).group_by(Transfer.credit)):
                out[acct] = out.get(acct, 0) + int(total)
            for acct, total in conn.execute(select(Transfer.debit, func.sum(Transfer.amount))
                                            .where(Transfer.run_id == run_id).group_by(Transfer.debit)):
                out[acct] = out.get(acct, 0) - int(total)
        return out

    # ---- plumbing -------------------------------------------------------------------
    def _begin(self):
        try:
            return self.engine.begin()
        except OperationalError as exc:
            raise LedgerError(f"ledger {self.url} cannot be reached: {_short(exc)}") from None

    def _session(self):
        from sqlalchemy.orm import Session

        return Session(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def _short(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0]


def table_names(engine: Engine) -> list[str]:
    return inspect(engine).get_table_names()
