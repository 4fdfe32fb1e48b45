"""The ledger's write path and readers. One round = one database transaction.

The write path inserts through the driver (``executemany`` on SQLite, ``COPY`` on
PostgreSQL); there is no update or delete path for rounds, events, arrays or transfers,
and the database refuses both (triggers of migrations 0002 and 0005_compact). Writers of
one run are serialised by a row lock on the run (PostgreSQL) or the database write lock
(SQLite).

Numpy arrays in a round-level event's payload (``{"x": np.ndarray}``) are stored as
compact array records (``arrays`` table: raw little-endian bytes, 8 bytes per float64)
instead of JSON; ``RoundRecord.payload`` gives them back as read-only numpy arrays
under the same keys, and ``round_hash`` covers each array's SHA-256.
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
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, inspect, make_url, select, update
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError

from mbiagents.errors import LedgerError
from mbiagents.faults import fault_point
from mbiagents.ledger.models import Account, ArrayRecord, Event, Round, Run, Transfer
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


def transfer_ids(run_id: str, round_index: int, kinds: Iterable[str], debits: Iterable[str],
                 credits: Iterable[str]) -> list[str]:
    """``transfer_id`` of many transfers of one round, column-wise (no Python call per row)."""
    prefix = f"{run_id}:{round_index}:"
    return [f"{prefix}{k}:{d}:{c}" for k, d, c in zip(kinds, debits, credits)]


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
class PaymentBatch:
    """One transfer per agent of one kind, held as an array until the write (no per-agent
    Python objects in the round loop).

    ``minor[i] > 0`` moves ``minor[i]`` minor units from ``agent:<agent_ids[i]>`` to
    ``counterparty``, ``< 0`` moves ``-minor[i]`` the other way, ``0`` writes nothing:
    the same rows as the ``TransferRow`` per agent it stands for (``rows``).
    """

    kind: str
    agent_ids: Sequence[str]
    minor: np.ndarray
    counterparty: str = TREASURY

    def rows(self) -> list[TransferRow]:
        return [TransferRow(k, d, c, m) for _, k, d, c, m in self.id_rows("")]

    def id_rows(self, prefix: str) -> list[tuple[str, str, str, str, int]]:
        """``(id, kind, debit, credit, amount)`` of the non-zero transfers, in id order; ids
        are ``prefix + kind:debit:credit`` (``transfer_id`` with ``prefix = run:round:``)."""
        accounts, pays_order, paid_order = _batch_layout(self.agent_ids, self.counterparty)
        minor = np.asarray(self.minor, dtype=np.int64)
        k, cp = self.kind, self.counterparty
        pays = pays_order[minor[pays_order] > 0]  # agent -> counterparty, in id order
        paid = paid_order[minor[paid_order] < 0]  # counterparty -> agent, in id order
        rows = [(f"{prefix}{k}:{accounts[i]}:{cp}", k, accounts[i], cp, m)
                for i, m in zip(pays.tolist(), minor[pays].tolist())]
        rows += [(f"{prefix}{k}:{cp}:{accounts[i]}", k, cp, accounts[i], -m)
                 for i, m in zip(paid.tolist(), minor[paid].tolist())]
        if rows and paid.size and pays.size:
            rows.sort()  # two sorted runs: one linear merge
        return rows


_LAYOUT: list = [None, None, None]  # (agent list kept alive, counterparty, layout): the last batch's


def _batch_layout(agent_ids: Sequence[str], counterparty: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Account names of a batch's agents and the two id orders of its transfers (agent ->
    counterparty, counterparty -> agent), computed once per agent list."""
    if _LAYOUT[0] is not agent_ids or _LAYOUT[1] != counterparty:
        accounts = [agent_account(a) for a in agent_ids]
        pays = np.array(sorted(range(len(accounts)), key=lambda i: f"{accounts[i]}:{counterparty}"), dtype=np.int64)
        paid = np.array(sorted(range(len(accounts)), key=accounts.__getitem__), dtype=np.int64)
        _LAYOUT[:] = [agent_ids, counterparty, (accounts, pays, paid)]
    return _LAYOUT[2]


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
    arrays: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # name, dtype, shape, data
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def payload(self, kind: str) -> Any:
        """The parsed payload of the round-level event ``kind`` (parsed once); ``KeyError`` if absent.

        Arrays stored for the event (``<kind>.<key>``) come back as read-only numpy
        arrays under ``key``.
        """
        if kind not in self._parsed:
            text = next((t for _, k, agent, t in self.events if k == kind and agent is None), None)
            if text is None:
                raise KeyError(kind)
            value = json.loads(text)
            prefix = kind + ARRAY_SEP
            for name, dtype, shape, data in self.arrays:
                if name.startswith(prefix) and isinstance(value, dict):
                    value[name[len(prefix):]] = decode_array(dtype, shape, data)
            self._parsed[kind] = value
        return self._parsed[kind]

    def payload_json(self, seq: int) -> str:
        """Event ``seq``'s payload as canonical JSON with its arrays as lists (for export)."""
        _, kind, agent, text = next(e for e in self.events if e[0] == seq)
        prefix = kind + ARRAY_SEP
        if agent is not None or not any(name.startswith(prefix) for name, *_ in self.arrays):
            return text
        value = dict(self.payload(kind))
        return canonical_json({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in value.items()})


ARRAY_SEP = "."
ARRAY_KINDS = "fiub"  # float, signed and unsigned integer, bool: the dtypes an array record may hold


def encode_array(kind: str, key: str, value: np.ndarray) -> tuple[str, str, str, bytes]:
    """``(name, dtype, shape, data)`` of an array record: raw little-endian bytes, C order."""
    if value.dtype.kind not in ARRAY_KINDS or value.ndim == 0:
        raise ValueError(f"event {kind!r} field {key!r}: an array record holds numeric arrays of rank >= 1, "
                         f"not {value.dtype} of rank {value.ndim}")
    arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    return f"{kind}{ARRAY_SEP}{key}", arr.dtype.str, ",".join(map(str, arr.shape)), arr.tobytes()


def decode_array(dtype: str, shape: str, data: bytes) -> np.ndarray:
    """The numpy array of an array record (read-only view of ``data``)."""
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(tuple(int(d) for d in shape.split(",")))


def split_arrays(seq: int, e: "EventRow") -> tuple[tuple[int, str, str | None, str], list[tuple[str, str, str, bytes]]]:
    """An event row with its numpy arrays taken out as array records (round-level events only)."""
    payload, arrays = e.payload, []
    if isinstance(payload, dict) and any(isinstance(v, np.ndarray) for v in payload.values()):
        if e.agent is not None:
            raise ValueError(f"event {e.kind!r} of agent {e.agent!r}: array records are for round-level events")
        arrays = [encode_array(e.kind, k, v) for k, v in payload.items() if isinstance(v, np.ndarray)]
        payload = {k: v for k, v in payload.items() if not isinstance(v, np.ndarray)}
    return (seq, e.kind, e.agent, canonical_json(payload)), arrays


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
    arrays: Iterable[tuple[str, str, str, bytes]] = (),
) -> str:
    """SHA-256 over the previous hash and the round's rows in a canonical line encoding.

    This is the one definition of a round's hash (the write path, the duplicate check and
    the audit all call it). Lines: ``R\\t<index>\\t<prev>``, then
    ``E\\t<seq>\\t<kind>\\t<agent>\\t<payload>`` per event in seq order,
    ``A\\t<name>\\t<dtype>\\t<shape>\\t<sha256 of data>`` per array record in name order, and
    ``T\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>`` per transfer in id order. Ids,
    kinds, names and account names cannot hold tabs or newlines; payloads are compact
    JSON, which escapes them. A round without arrays hashes as before migration
    ``0005_compact``.
    """
    lines = [f"R\t{round_index}\t{prev_hash}"]
    lines += [f"E\t{s}\t{k}\t{a or ''}\t{p}" for s, k, a, p in sorted(events)]
    lines += [f"A\t{n}\t{d}\t{sh}\t{hashlib.sha256(b).hexdigest()}" for n, d, sh, b in sorted(arrays)]
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
        self._accounts: dict[str, set[str]] = {}  # run id -> account names (accounts are never removed)
        self._checked_agents: dict[str, list[Sequence[str]]] = {}  # run id -> agent lists found to be accounts

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
        row["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        accounts = [dict(run_id=run_id, name=agent_account(a), kind="agent", position=i) for i, a in enumerate(agent_ids)]
        accounts.append(dict(run_id=run_id, name=TREASURY, kind="treasury", position=len(agent_ids)))
        accounts += [dict(run_id=run_id, name=n, kind="mechanism", position=len(agent_ids) + 1 + j)
                     for j, n in enumerate(extra_accounts)]
        with self._begin() as conn:
            conn.execute(insert(Run), [row])
            bulk_insert(conn, "accounts", ("run_id", "name", "kind", "position"),
                        [(a["run_id"], a["name"], a["kind"], a["position"]) for a in accounts])
        self._accounts[run_id] = {a["name"] for a in accounts}
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        """Set the run's status and record its final round count and hash (for the audit)."""
        with self._begin() as conn:
            last_index, last = self.last_hash(conn, run_id)
            conn.execute(update(Run).where(Run.id == run_id)
                         .values(status=status, final_rounds=last_index + 1, final_hash=last))

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
        """Write one round atomically; a repeat of an already written round is a no-op duplicate.

        Raises ``LedgerError`` if the round was written before with different content, if
        it does not follow the run's last round, or if a transfer names an account the run
        does not have (checked here: the transfers table has no foreign keys).
        """
        ev, arrays = [], []
        for seq, e in enumerate(events):
            row, arr = split_arrays(seq, e)
            ev.append(row)
            arrays += arr
        prefix = f"{run_id}:{round_index}:"  # ids as ``transfer_id`` makes them, without a call per row
        single, batches, tr = [], [], []
        for t in transfers:
            if isinstance(t, PaymentBatch):
                tr += t.id_rows(prefix)
                batches.append(t)
            elif t.amount != 0:
                if t.amount < 0:
                    raise ValueError(f"transfer {prefix}{t.kind}:{t.debit}:{t.credit} has a negative amount; "
                                     f"swap debit and credit")
                single.append((f"{prefix}{t.kind}:{t.debit}:{t.credit}", t.kind, t.debit, t.credit, int(t.amount)))
        self._check_accounts(run_id, round_index, single, batches)
        tr += single
        tr.sort()
        try:
            return self._write_round(run_id, round_index, ev, tr, arrays)
        except IntegrityError:
            # a concurrent writer of the same round committed first: report it as a duplicate
            # if it wrote the same content (the retry finds the round), else raise
            return self._write_round(run_id, round_index, ev, tr, arrays)

    def _check_accounts(self, run_id: str, round_index: int, rows: list[tuple], batches: list[PaymentBatch]) -> None:
        """Every debit and credit is an account of the run (names read once per run; a
        batch's agent list is checked once and remembered by identity)."""
        names = {t[2] for t in rows} | {t[3] for t in rows} | {b.counterparty for b in batches}
        checked = self._checked_agents.setdefault(run_id, [])
        for b in batches:
            if not any(b.agent_ids is ids for ids in checked):
                names |= {agent_account(a) for a in b.agent_ids}
        known = self._accounts.get(run_id)
        if known is None or not names <= known:
            known = self._accounts[run_id] = {name for name, _ in self.accounts(run_id)}
        unknown = sorted(names - known)
        if unknown:
            raise LedgerError(f"run {run_id} round {round_index}: transfer to or from {unknown[0]!r}, "
                              f"which is not an account of the run")
        for b in batches:  # kept alive here, so identity cannot be reused by another list
            if not any(b.agent_ids is ids for ids in checked):
                checked.append(b.agent_ids)

    def _write_round(self, run_id: str, round_index: int, ev: list[tuple], tr: list[tuple],
                     arrays: list[tuple]) -> WriteResult:
        with self._begin() as conn:
            # lock the run row (serialises writers of a run; on PostgreSQL a statement of its
            # own, so that the next one reads what a writer before us committed), then read
            # the chain's anchor and the run's last round in one statement
            pg = conn.dialect.name == "postgresql"
            if pg:
                conn.exec_driver_sql("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))
            found = conn.exec_driver_sql(CHAIN_HEAD_SQL.replace("?", "%s") if pg else CHAIN_HEAD_SQL,
                                         (run_id, run_id)).first()
            if found is None:
                raise LedgerError(f"ledger {self.url} has no run {run_id!r}")
            header = found[0]
            last = None if found[1] is None else tuple(found[1:])
            cols = select(Round.index, Round.prev_hash, Round.hash).where(Round.run_id == run_id)
            if last is not None and last[0] >= round_index:
                existing = last if last[0] == round_index else conn.execute(
                    cols.where(Round.index == round_index)).first()
                h = round_hash(existing[1], round_index, ev, tr, arrays) if existing is not None else None
                if existing is None or h != existing[2]:
                    raise LedgerError(f"run {run_id} round {round_index} was already written with different content")
                return WriteResult(round_index, h, duplicate=True, n_transfers=len(tr))
            last_index, prev = (-1, header) if last is None else (last[0], last[2])
            if last_index != round_index - 1:
                raise LedgerError(f"run {run_id}: round {round_index} written after round {last_index}")
            h = round_hash(prev, round_index, ev, tr, arrays)
            bulk_insert(conn, "rounds", ROUND_COLUMNS, [(run_id, round_index, prev, h, len(ev), len(tr))])
            bulk_insert(conn, "events", EVENT_COLUMNS, [(run_id, round_index, *e) for e in ev])
            bulk_insert(conn, "arrays", ARRAY_COLUMNS, [(run_id, round_index, *a) for a in arrays])
            fault_point("settle", round_index)
            insert_transfers(conn, run_id, round_index, tr)
        return WriteResult(round_index, h, n_transfers=len(tr))

    def read_rounds(self, run_id: str) -> list[RoundRecord]:
        """All rounds of a run with their events and transfers, in order."""
        return list(self.iter_rounds(run_id))

    def iter_rounds(self, run_id: str) -> Iterator[RoundRecord]:
        """Stream a run's rounds in index order, one round in memory at a time.

        Rows whose round has no ``rounds`` row (inserted behind the ledger's back) come
        as a record with empty hashes, so the audit sees them.
        """
        with self.engine.connect() as conn:
            # batches bound memory, not rounds: an array record of 10^6 agents is 8 MB
            heads, events, transfers, arrays = (driver_rows(conn, RUN_ROWS_SQL[t], run_id, batch=RUN_ROWS_BATCH[t])
                                                for t in RUN_ROWS_SQL)
            heads = ((i, [(p, h)]) for i, p, h in heads)
            # transfers come in index order of rounds and are sorted by id within a round here,
            # which spares the database a sort of the whole run
            streams = [heads, _by_round(events), ((i, sorted(rows)) for i, rows in _by_round(transfers)),
                       ((i, [(n, d, sh, b if isinstance(b, bytes) else bytes(b)) for n, d, sh, b in rows]) for i, rows in _by_round(arrays))]
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
                yield RoundRecord(index, prev, h, rows[1], rows[2], rows[3])

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


ROUND_COLUMNS = ("run_id", '"index"', "prev_hash", "hash", "n_events", "n_transfers")
EVENT_COLUMNS = ("run_id", "round_index", "seq", "kind", "agent", "payload")
#: a run's rows in the order ``iter_rounds`` merges them (one parameter: the run id)
RUN_ROWS_SQL = {
    "rounds": 'SELECT "index", prev_hash, hash FROM rounds WHERE run_id = ? ORDER BY "index"',
    "events": "SELECT round_index, seq, kind, agent, payload FROM events WHERE run_id = ? ORDER BY round_index, seq",
    "transfers": "SELECT round_index, id, kind, debit, credit, amount FROM transfers WHERE run_id = ? "
                 "ORDER BY round_index",
    "arrays": "SELECT round_index, name, dtype, shape, data FROM arrays WHERE run_id = ? ORDER BY round_index, name",
}
RUN_ROWS_BATCH = {"rounds": 10_000, "events": 1_000, "transfers": 5_000, "arrays": 4}  # rows per fetch
CHAIN_HEAD_SQL = ('SELECT runs.header_hash, rounds."index", rounds.prev_hash, rounds.hash FROM runs '
                  'LEFT JOIN rounds ON rounds.run_id = runs.id AND rounds."index" = '
                  '(SELECT max("index") FROM rounds WHERE run_id = ?) WHERE runs.id = ?')
ARRAY_COLUMNS = ("run_id", "round_index", "name", "dtype", "shape", "data")
TRANSFER_COLUMNS = ("id", "run_id", "round_index", "kind", "debit", "credit", "amount")


def insert_transfers(conn: Connection, run_id: str, round_index: int, tr: list[tuple]) -> None:
    """Insert a round's transfers ``(id, kind, debit, credit, amount)`` through the driver.

    On PostgreSQL the rows go to ``COPY`` as one block of text (one ``write`` instead of a
    Python call per row) when no field needs COPY escaping; otherwise row by row.
    """
    if not tr:
        return
    if conn.dialect.name == "postgresql":
        block = "".join([f"{i}\t{run_id}\t{round_index}\t{k}\t{d}\t{c}\t{m}\n" for i, k, d, c, m in tr])
        plain = "\\" not in block and "\r" not in block  # nothing COPY would unescape
        if plain and block.count("\t") == 6 * len(tr) and block.count("\n") == len(tr):
            with conn.connection.dbapi_connection.cursor() as cur, \
                    cur.copy(f"COPY transfers ({', '.join(TRANSFER_COLUMNS)}) FROM STDIN") as copy:
                copy.write(block)
            return
    bulk_insert(conn, "transfers", TRANSFER_COLUMNS, [(i, run_id, round_index, k, d, c, m) for i, k, d, c, m in tr])


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


def driver_rows(conn: Connection, sql: str, *params: Any, batch: int = 20_000) -> Iterator[tuple]:
    """Stream the rows of ``sql`` (``?`` placeholders) through the driver's own cursor, in
    batches: a server-side cursor on PostgreSQL, SQLite's lazy cursor elsewhere. Several
    may be open at once on one connection (``iter_rounds`` merges four)."""
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        driver_rows.n = getattr(driver_rows, "n", 0) + 1
        cur = dbapi.cursor(name=f"mbi_rows_{driver_rows.n}")
        sql = sql.replace("?", "%s")
    else:
        cur = dbapi.cursor()
    try:
        cur.execute(sql, params)
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                break
            yield from rows
            del rows  # one batch alive at a time: memory bounded by the batch, not the run
    finally:
        cur.close()


_TAIL = itemgetter(slice(1, None))  # a row without its first column


def _by_round(rows) -> Iterator[tuple[int, list[tuple]]]:
    """Group rows ``(round_index, *fields)`` sorted by round into ``(round_index, [fields])``."""
    for index, group in groupby(rows, key=itemgetter(0)):
        yield index, list(map(_TAIL, group))


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
