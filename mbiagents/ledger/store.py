"""The ledger's write path and readers. One round = one database transaction.

The write path inserts through the driver (``executemany`` on SQLite, ``COPY`` on
PostgreSQL); there is no update or delete path for rounds, events or transfers, and the
database refuses both (triggers of migration 0002). Writers of one run are serialised by
a row lock on the run (PostgreSQL) or the database write lock (SQLite).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, inspect, make_url, select, update
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError

from mbiagents.errors import LedgerError
from mbiagents.faults import fault_point
from mbiagents.ledger.models import Account, Event, PendingResolution, PendingTransfer, Round, Run, Transfer
from mbiagents.ledger.money import MINOR_UNITS

DEFAULT_LEDGER_URL = "sqlite:///mbi-ledger.db"
TREASURY = "treasury"
GENESIS = "0" * 64


def agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, no NaN. Event payloads are stored like this."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _payload_json(run_id: str, round_index: int, e: "EventRow") -> str:
    """An event's canonical JSON; a NaN or infinity in it is a one-line ``LedgerError``."""
    try:
        return canonical_json(e.payload)
    except ValueError:
        raise LedgerError(f"run {run_id} round {round_index}: event {e.kind!r} holds a non-finite number "
                          f"(NaN or infinity); nothing written for this round") from None


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


@dataclass(frozen=True)
class Resolution:
    """The resolution of pending transfer ``pending_id``: ``posted`` moves ``amount`` (default:
    the whole pending amount, at most it), ``voided`` moves nothing."""

    pending_id: str
    state: Literal["posted", "voided"]
    amount: int | None = None


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
    pending: list[tuple[str, str, str, str, int]] = field(default_factory=list)  # pending transfers, same fields
    resolutions: list[tuple[str, str, int]] = field(default_factory=list)  # pending id, state, amount
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def payload(self, kind: str) -> Any:
        """The parsed payload of the round-level event ``kind`` (parsed once); ``KeyError`` if absent."""
        if kind not in self._parsed:
            text = next((t for _, k, agent, t in self.events if k == kind and agent is None), None)
            if text is None:
                raise KeyError(kind)
            self._parsed[kind] = json.loads(text)
        return self._parsed[kind]


HEADER_FIELDS = ("id", "name", "game", "mechanism", "seed", "scenario_json", "minor_units")


def run_header(run: Any) -> dict[str, Any]:
    """The hashed header fields of a ``Run`` row."""
    return {k: getattr(run, k) for k in HEADER_FIELDS}


def header_hash(run: dict[str, Any]) -> str:
    """SHA-256 of the run's header fields (id, name, game, mechanism, seed, scenario, units)."""
    fields = [run["id"], run["name"], run["game"], run["mechanism"], run["seed"], run["scenario_json"], run["minor_units"]]
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def round_hash(
    prev_hash: str,
    round_index: int,
    events: Iterable[tuple[int, str, str | None, str]],
    transfers: Iterable[tuple[str, str, str, str, int]],
    pending: Iterable[tuple[str, str, str, str, int]] = (),
    resolutions: Iterable[tuple[str, str, int]] = (),
) -> str:
    """SHA-256 over the previous hash and the round's rows in a canonical line encoding.

    Lines: ``R\\t<index>\\t<prev>``, then ``E\\t<seq>\\t<kind>\\t<agent>\\t<payload>`` per event
    in seq order and ``T\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>`` per transfer in id
    order. Ids, kinds and account names cannot hold tabs or newlines; payloads are compact
    JSON, which escapes them. Pending transfers (``P\t<id>\t<kind>\t<debit>\t<credit>\t<amount>``)
    and resolutions (``S\t<pending id>\t<state>\t<amount>``) follow in id order; a round
    without them hashes exactly as before migration 0003.
    """
    lines = [f"R\t{round_index}\t{prev_hash}"]
    lines += [f"E\t{s}\t{k}\t{a or ''}\t{p}" for s, k, a, p in sorted(events)]
    lines += [f"T\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in sorted(transfers)]
    lines += [f"P\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in sorted(pending)]
    lines += [f"S\t{i}\t{st}\t{m}" for i, st, m in sorted(resolutions)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _enable_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - driver callback
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache: bulk rounds stay in memory
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()


def display_url(url: str) -> str:
    """A ledger URL as messages show it: the password (if any) replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: mask anything between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def make_engine(url: str) -> Engine:
    """Create an engine for an SQLAlchemy URL; a clear ``LedgerError`` if it is unusable."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        engine = create_engine(url, future=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise LedgerError(f"ledger URL {display_url(url)!r} is not a usable SQLAlchemy URL: "
                          f"{_scrub_password(str(exc), url)}") from None
    if engine.dialect.name == "sqlite":
        db = engine.url.database
        if db and db != ":memory:" and not Path(db).parent.exists():
            raise LedgerError(f"ledger URL {display_url(url)!r}: folder {Path(db).parent} does not exist")
        _enable_sqlite_pragmas(engine)
    return engine


class Ledger:
    """Access to one ledger database (schema managed by Alembic; see ``mbiagents.ledger.schema``)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        #: signs run starts, round heads and run ends (``mbiagents.ledger.signing.RunSigner``);
        #: ``None`` writes no round heads
        self.signer: Any = None

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ---- runs -----------------------------------------------------------------------
    def create_run(self, *, name: str, game: str, mechanism: str, seed: int, scenario: dict[str, Any],
                   agent_ids: Sequence[str], extra_accounts: Sequence[str] = (), run_id: str | None = None,
                   floors: Mapping[str, int] | None = None) -> str:
        """Create a run and its accounts. ``floors`` maps agent ids to the lowest balance (minor
        units) their account may reach (budgeted agents: 0); others are unbounded."""
        run_id = run_id or uuid.uuid4().hex
        row = dict(id=run_id, name=name, game=game, mechanism=mechanism, seed=seed,
                   scenario_json=canonical_json(scenario), minor_units=MINOR_UNITS)
        row["header_hash"] = header_hash(row)
        row["status"] = "running"
        row["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        floors = floors or {}
        accounts = [dict(run_id=run_id, name=agent_account(a), kind="agent", position=i, floor=floors.get(a))
                    for i, a in enumerate(agent_ids)]
        accounts.append(dict(run_id=run_id, name=TREASURY, kind="treasury", position=len(agent_ids), floor=None))
        accounts += [dict(run_id=run_id, name=n, kind="mechanism", position=len(agent_ids) + 1 + j, floor=None)
                     for j, n in enumerate(extra_accounts)]
        with self._signed():
            row.update(self.signer.start_fields(row, accounts) if self.signer else {})
            with self._begin() as conn:
                conn.execute(insert(Run), [row])
                conn.execute(insert(Account), accounts)
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        """Set the run's status and record its final round count and hash (for the audit)."""
        with self._signed(), self._begin() as conn:
            last_index, last = self.last_hash(conn, run_id)
            signed = self.signer.end_fields(run_id, status, last_index + 1, last) if self.signer else {}
            conn.execute(update(Run).where(Run.id == run_id)
                         .values(status=status, final_rounds=last_index + 1, final_hash=last, **signed))

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
                    transfers: Sequence[TransferRow], *, pending: Sequence[TransferRow] = (),
                    resolutions: Sequence[Resolution] = ()) -> WriteResult:
        """Write one round atomically; a repeat of an already written round is a no-op duplicate.

        ``pending`` are two-phase transfers opened in this round (they reserve, nothing
        moves); ``resolutions`` post or void pending transfers of this or earlier rounds,
        each exactly once (``resolve_pending``).

        Raises ``LedgerError`` if the round was written before with different content, if it
        does not follow the run's last round, if the run is completed, if a resolution is
        not of an open pending transfer of the run, or if the round takes an account below
        its floor.
        """
        ev = [(seq, e.kind, e.agent, _payload_json(run_id, round_index, e)) for seq, e in enumerate(events)]
        tr = [(transfer_id(run_id, round_index, t.kind, t.debit, t.credit), t.kind, t.debit, t.credit, int(t.amount))
              for t in transfers if t.amount != 0]
        pe = [(transfer_id(run_id, round_index, t.kind, t.debit, t.credit), t.kind, t.debit, t.credit, int(t.amount))
              for t in pending if t.amount != 0]
        for t in tr + pe:
            if t[4] < 0:
                raise ValueError(f"transfer {t[0]} has a negative amount; swap debit and credit")
        if len({p[0] for p in pe}) != len(pe) or len({r.pending_id for r in resolutions}) != len(resolutions):
            raise LedgerError(f"run {run_id} round {round_index}: a pending transfer is opened or resolved twice")
        with self._signed():
            try:
                return self._write_round(run_id, round_index, ev, tr, pe, list(resolutions))
            except IntegrityError:
                # a concurrent writer of the same round committed first: report it as a duplicate
                # if it wrote the same content (the retry finds the round), else raise
                if self.signer:
                    self.signer.rolled_back()
                return self._write_round(run_id, round_index, ev, tr, pe, list(resolutions))

    def resolve_pending(self, run_id: str, round_index: int, events: Sequence[EventRow],
                        resolutions: Sequence[Resolution], transfers: Sequence[TransferRow] = ()) -> WriteResult:
        """Post or void pending transfers (each exactly once) in the round ``round_index``."""
        return self.write_round(run_id, round_index, events, transfers, resolutions=resolutions)

    def _resolve(self, conn, run_id: str, round_index: int, pe: list[tuple],
                 resolutions: list[Resolution]) -> list[tuple[str, str, int]]:
        """Check resolutions against the open pending transfers; their ``(id, state, amount)`` rows."""
        if not resolutions:
            return []
        ids = [r.pending_id for r in resolutions]
        opened = {p[0]: p[4] for p in pe}
        for i, amount in conn.execute(select(PendingTransfer.id, PendingTransfer.amount)
                                      .where(PendingTransfer.run_id == run_id, PendingTransfer.id.in_(ids))):
            opened[i] = int(amount)
        done = set(conn.execute(select(PendingResolution.pending_id).where(PendingResolution.pending_id.in_(ids))).scalars())
        rows = []
        for r in resolutions:
            if r.pending_id not in opened:
                raise LedgerError(f"run {run_id} round {round_index}: no pending transfer {r.pending_id!r}")
            if r.pending_id in done:
                raise LedgerError(f"run {run_id} round {round_index}: pending transfer {r.pending_id!r} "
                                  "is already resolved (a resolution happens exactly once)")
            if r.state not in ("posted", "voided"):
                raise LedgerError(f"resolution of {r.pending_id!r}: state {r.state!r} is not 'posted' or 'voided'")
            amount = 0 if r.state == "voided" else opened[r.pending_id] if r.amount is None else int(r.amount)
            if not 0 <= amount <= opened[r.pending_id]:
                raise LedgerError(f"resolution of {r.pending_id!r}: posts {amount}, pending amount is "
                                  f"{opened[r.pending_id]}")
            rows.append((r.pending_id, r.state, amount))
        return rows

    def _check_floors(self, conn, run_id: str, tr: list[tuple], pe: list[tuple], rs: list[tuple]) -> None:
        """Refuse a round that takes an account's available balance below its floor."""
        floors = dict(conn.execute(select(Account.name, Account.floor)
                                   .where(Account.run_id == run_id, Account.floor.is_not(None))).all())
        if not floors:
            return
        touched = {d for _, _, d, _, _ in tr + pe} | {c for _, _, _, c, _ in tr}
        if rs:
            touched |= {d for d, in conn.execute(select(PendingTransfer.debit).where(
                PendingTransfer.id.in_([r[0] for r in rs])))}
        touched &= set(floors)
        if not touched:
            return
        bal = self._available(conn, run_id, touched)
        for _, _, d, c, m in tr:
            bal[d] = bal.get(d, 0) - m
            bal[c] = bal.get(c, 0) + m
        for _, _, d, _, m in pe:
            bal[d] = bal.get(d, 0) - m
        for acct in touched:
            if bal[acct] < floors[acct]:
                raise LedgerError(f"run {run_id}: the round takes account {acct!r} to {bal[acct]} minor units, "
                                  f"below its floor {floors[acct]}")

    def _write_round(self, run_id: str, round_index: int, ev: list[tuple], tr: list[tuple], pe: list[tuple] = (),
                     resolutions: list[Resolution] = ()) -> WriteResult:
        pe = list(pe)
        with self._begin() as conn:
            # lock the run row (serialises writers of a run) and read the chain's anchor
            header, status = conn.execute(select(Run.header_hash, Run.status).where(Run.id == run_id)
                                          .with_for_update()).one()
            cols = select(Round.index, Round.prev_hash, Round.hash).where(Round.run_id == run_id)
            last = conn.execute(cols.order_by(Round.index.desc()).limit(1)).first()
            if last is not None and last[0] >= round_index:
                existing = last if last[0] == round_index else conn.execute(
                    cols.where(Round.index == round_index)).first()
                rs = [(r.pending_id, r.state, r.amount) for r in resolutions]
                if existing is not None and rs:  # the stored amounts (a default amount is the pending's)
                    stored = dict(conn.execute(select(PendingResolution.pending_id, PendingResolution.amount).where(
                        PendingResolution.run_id == run_id, PendingResolution.round_index == round_index)).all())
                    rs = [(i, st, stored.get(i, -1) if m is None else m) for i, st, m in rs]
                h = round_hash(existing[1], round_index, ev, tr, pe, rs) if existing is not None else None
                if existing is None or h != existing[2]:
                    raise LedgerError(f"run {run_id} round {round_index} was already written with different content")
                return WriteResult(round_index, h, duplicate=True, n_transfers=len(tr))
            if status == "completed":
                raise LedgerError(f"run {run_id} is completed: round {round_index} cannot be appended")
            last_index, prev = (-1, header) if last is None else (last[0], last[2])
            if last_index != round_index - 1:
                raise LedgerError(f"run {run_id}: round {round_index} written after round {last_index}")
            rs = self._resolve(conn, run_id, round_index, pe, list(resolutions))
            if tr or pe or rs:
                self._check_floors(conn, run_id, tr, pe, rs)
            h = round_hash(prev, round_index, ev, tr, pe, rs)
            conn.execute(insert(Round), [dict(run_id=run_id, index=round_index, prev_hash=prev, hash=h,
                                              n_events=len(ev), n_transfers=len(tr))])
            if self.signer:  # the round's Merkle root and signed head, in its transaction
                self.signer.write_head(conn, run_id, round_index, h, tr)
            bulk_insert(conn, "events", EVENT_COLUMNS, [(run_id, round_index, *e) for e in ev])
            fault_point("settle", round_index)
            bulk_insert(conn, "transfers", TRANSFER_COLUMNS,
                        [(i, run_id, round_index, k, d, c, m) for i, k, d, c, m in tr])
            bulk_insert(conn, "pending_transfers", TRANSFER_COLUMNS,
                        [(i, run_id, round_index, k, d, c, m) for i, k, d, c, m in pe])
            bulk_insert(conn, "pending_resolutions", RESOLUTION_COLUMNS,
                        [(i, run_id, round_index, st, m) for i, st, m in rs])
        return WriteResult(round_index, h, n_transfers=len(tr))

    def read_rounds(self, run_id: str) -> list[RoundRecord]:
        """All rounds of a run with their events and transfers, in order."""
        return list(self.iter_rounds(run_id))

    def iter_rounds(self, run_id: str) -> Iterator[RoundRecord]:
        """Stream a run's rounds in index order, one round in memory at a time.

        Rows whose round has no ``rounds`` row (inserted behind the ledger's back) come
        as a record with empty hashes, so the audit sees them.
        """
        escrow = self._escrow_rows(run_id)
        with self.engine.connect() as conn:
            stream = conn.execution_options(stream_results=True, yield_per=20_000)
            heads = ((i, [(p, h)]) for i, p, h in conn.execute(
                select(Round.index, Round.prev_hash, Round.hash).where(Round.run_id == run_id).order_by(Round.index)))
            events = stream.execute(select(Event.round_index, Event.seq, Event.kind, Event.agent, Event.payload)
                                    .where(Event.run_id == run_id).order_by(Event.round_index, Event.seq))
            transfers = stream.execute(select(Transfer.round_index, Transfer.id, Transfer.kind, Transfer.debit,
                                              Transfer.credit, Transfer.amount)
                                       .where(Transfer.run_id == run_id).order_by(Transfer.round_index))
            # transfers come in index order of rounds and are sorted by id within a round here,
            # which spares the database a sort of the whole run
            streams = [heads, _by_round(events), ((i, sorted(rows)) for i, rows in _by_round(transfers))]
            current = [next(it, None) for it in streams]
            while any(c is not None for c in current):
                index = min(c[0] for c in current if c is not None)
                rows = []
                for j, c in enumerate(current):
                    if c is not None and c[0] == index:
                        rows.append(c[1])
                        current[j] = next(streams[j], None)
                    else:
                        rows.append([])
                (prev, h), = rows[0] or [("", "")]
                yield RoundRecord(index, prev, h, rows[1], rows[2], escrow[0].pop(index, []), escrow[1].pop(index, []))

    def _escrow_rows(self, run_id: str) -> tuple[dict[int, list], dict[int, list]]:
        """A run's pending transfers and resolutions by round (few rows: read at once)."""
        pending: dict[int, list] = {}
        resolved: dict[int, list] = {}
        with self.engine.connect() as conn:
            for i, *row in conn.execute(select(PendingTransfer.round_index, PendingTransfer.id, PendingTransfer.kind,
                                               PendingTransfer.debit, PendingTransfer.credit, PendingTransfer.amount)
                                        .where(PendingTransfer.run_id == run_id).order_by(PendingTransfer.id)):
                pending.setdefault(i, []).append(tuple(row))
            for i, *row in conn.execute(select(PendingResolution.round_index, PendingResolution.pending_id,
                                               PendingResolution.state, PendingResolution.amount)
                                        .where(PendingResolution.run_id == run_id)
                                        .order_by(PendingResolution.pending_id)):
                resolved.setdefault(i, []).append(tuple(row))
        return pending, resolved

    def balances(self, run_id: str) -> dict[str, int]:
        """Derived posted balances (credits minus debits) of every account of a run: the
        transfers plus the posted amounts of resolved pending transfers."""
        out = {name: 0 for name, _ in self.accounts(run_id)}
        with self.engine.connect() as conn:
            for acct, total in self._posted(conn, run_id):
                out[acct] = out.get(acct, 0) + total
        return out

    def available(self, run_id: str) -> dict[str, int]:
        """Balances less the unresolved pending debits (what an account may still spend)."""
        with self.engine.connect() as conn:
            return self._available(conn, run_id, {name for name, _ in self.accounts(run_id)})

    def floors(self, run_id: str) -> dict[str, int]:
        """Accounts of a run with a floor (lowest allowed balance)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Account.name, Account.floor)
                                     .where(Account.run_id == run_id, Account.floor.is_not(None))).all())

    def _available(self, conn, run_id: str, names: set[str]) -> dict[str, int]:
        out = {n: 0 for n in names}
        for acct, total in self._posted(conn, run_id):
            if acct in out:
                out[acct] += total
        open_ = select(PendingTransfer.debit, func.sum(PendingTransfer.amount)).where(
            PendingTransfer.run_id == run_id,
            ~PendingTransfer.id.in_(select(PendingResolution.pending_id).where(PendingResolution.run_id == run_id)),
        ).group_by(PendingTransfer.debit)
        for acct, total in conn.execute(open_):
            if acct in out:
                out[acct] -= int(total)
        return out

    @staticmethod
    def _posted(conn, run_id: str) -> Iterator[tuple[str, int]]:
        """Signed per-account sums of the transfers and the posted resolutions."""
        for acct, total in conn.execute(select(Transfer.credit, func.sum(Transfer.amount))
                                        .where(Transfer.run_id == run_id).group_by(Transfer.credit)):
            yield acct, int(total)
        for acct, total in conn.execute(select(Transfer.debit, func.sum(Transfer.amount))
                                        .where(Transfer.run_id == run_id).group_by(Transfer.debit)):
            yield acct, -int(total)
        posted = (select(PendingTransfer.debit, PendingTransfer.credit, PendingResolution.amount)
                  .join(PendingResolution, PendingResolution.pending_id == PendingTransfer.id)
                  .where(PendingTransfer.run_id == run_id, PendingResolution.state == "posted"))
        for debit, credit, amount in conn.execute(posted):
            yield credit, int(amount)
            yield debit, -int(amount)

    # ---- plumbing -------------------------------------------------------------------
    @contextmanager
    def _signed(self) -> Iterator[None]:
        """Witness lines of a signed write go out once its transaction committed, else never."""
        try:
            yield
        except BaseException:
            if self.signer:
                self.signer.rolled_back()
            raise
        if self.signer:
            self.signer.committed()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction; an unreachable or locked database becomes a ``LedgerError``."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise LedgerError(f"ledger {self.url} cannot be written: {_short(exc)}") from None

    def _session(self):
        from sqlalchemy.orm import Session

        return Session(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


EVENT_COLUMNS = ("run_id", "round_index", "seq", "kind", "agent", "payload")
TRANSFER_COLUMNS = ("id", "run_id", "round_index", "kind", "debit", "credit", "amount")
RESOLUTION_COLUMNS = ("pending_id", "run_id", "round_index", "state", "amount")


def bulk_insert(conn: Connection, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    """Insert rows through the driver inside ``conn``'s transaction: COPY on PostgreSQL,
    ``executemany`` elsewhere (several times faster than ORM/Core inserts of dicts)."""
    if not rows:
        return
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        with dbapi.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        cur = dbapi.cursor()
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
        cur.close()


def _by_round(rows) -> Iterator[tuple[int, list[tuple]]]:
    """Group rows ``(round_index, *fields)`` sorted by round into ``(round_index, [fields])``."""
    for index, group in groupby(rows, key=itemgetter(0)):
        yield index, [tuple(r[1:]) for r in group]


def _short(exc: SQLAlchemyError, url: str | None = None) -> str:
    """The driver's first line of an error (without the URL's password, if it names it)."""
    text = (str(getattr(exc, "orig", exc)).strip().splitlines() or [type(exc).__name__])[0]
    return _scrub_password(text, url)


def _scrub_password(text: str, url: str | None) -> str:
    try:
        password = make_url(url).password if url else None
    except Exception:  # noqa: BLE001
        password = None
    return text.replace(str(password), "***") if password else text


def table_names(engine: Engine) -> list[str]:
    return inspect(engine).get_table_names()
