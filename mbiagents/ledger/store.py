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
import queue
import re
import threading
import uuid
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import count, islice, repeat
from operator import add, itemgetter
from pathlib import Path
from urllib.parse import quote
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TypeVar

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, inspect, make_url, select, update
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError

from mbiagents.errors import LedgerError
from mbiagents.faults import fault_point
from mbiagents.ledger.models import (Account, ArrayRecord, Event, PendingResolution, PendingTransfer, Round, Run,
                                      Transfer)
from mbiagents.ledger.digests import BlockRoot, available_cpus
from mbiagents.ledger.hashing import (round_hash, round_hash_of_block, round_hash_of_lines,  # noqa: F401
                                      transfer_lines)  # (the round hash is defined there; re-exported)
from mbiagents.ledger.money import MINOR_UNITS

DEFAULT_LEDGER_URL = "sqlite:///mbi-ledger.db"
TREASURY = "treasury"
GENESIS = "0" * 64


def agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, no NaN. Event payloads are stored like this."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _payload_json(run_id: str, round_index: int, kind: str, payload: Any) -> str:
    """An event's canonical JSON; a NaN or infinity in it is a one-line ``LedgerError``."""
    try:
        return canonical_json(payload)
    except ValueError:
        raise LedgerError(f"run {run_id} round {round_index}: event {kind!r} holds a non-finite number "
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
        layout = _batch_layout(self.agent_ids, self.counterparty)
        minor = np.asarray(self.minor, dtype=np.int64)
        k, cp, accounts = self.kind, self.counterparty, layout.accounts
        # agent -> counterparty and counterparty -> agent, each in id order (an order is sorted
        # only once a batch has such a transfer: Clarke payments never pay an agent)
        pays = layout.pays[minor[layout.pays] > 0] if (minor > 0).any() else layout.none
        paid = layout.paid[minor[layout.paid] < 0] if (minor < 0).any() else layout.none
        # column-wise: the accounts picked by NumPy, the ids formatted, the tuples zipped in C
        debits = accounts[pays].tolist()
        credits = accounts[paid].tolist()
        rows = list(zip([f"{prefix}{k}:{d}:{cp}" for d in debits], repeat(k), debits, repeat(cp),
                        minor[pays].tolist()))
        rows += zip([f"{prefix}{k}:{cp}:{c}" for c in credits], repeat(k), repeat(cp), credits,
                    (-minor[paid]).tolist())
        if paid.size and pays.size:
            rows.sort()  # two sorted runs: one linear merge
        return rows


class _BatchLayout:
    """The account names of a batch's agents (an object array, for NumPy indexing) and the
    id orders of its transfers, each sorted once per agent list, on first use."""

    none = np.zeros(0, np.int64)

    def __init__(self, agent_ids: Sequence[str], counterparty: str):
        self.agent_ids, self.counterparty = agent_ids, counterparty  # the list is kept alive: identity is safe
        self.accounts = np.empty(len(agent_ids), dtype=object)
        self.accounts[:] = [agent_account(a) for a in agent_ids]

    @cached_property
    def pays(self) -> np.ndarray:
        """Agent positions in the id order of ``<kind>:<agent account>:<counterparty>``."""
        keys = [f"{a}:{self.counterparty}" for a in self.accounts.tolist()]
        return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)

    @cached_property
    def paid(self) -> np.ndarray:
        """Agent positions in the id order of ``<kind>:<counterparty>:<agent account>``."""
        names = self.accounts.tolist()
        return np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)


_LAYOUT: list[_BatchLayout | None] = [None]  # the last batch's


def _batch_layout(agent_ids: Sequence[str], counterparty: str) -> _BatchLayout:
    """The layout of a batch over ``agent_ids``, built once per agent list and counterparty."""
    last = _LAYOUT[0]
    if last is None or last.agent_ids is not agent_ids or last.counterparty != counterparty:
        last = _LAYOUT[0] = _BatchLayout(agent_ids, counterparty)
    return last


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
    transfers: list[tuple[str, str, str, str, int]] = field(default_factory=list)  # id, kind, debit, credit, amount;
    # in id order (as the round hash lists them)
    pending: list[tuple[str, str, str, str, int]] = field(default_factory=list)  # pending transfers, same fields
    resolutions: list[tuple[str, str, int]] = field(default_factory=list)  # pending id, state, amount
    arrays: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # name, dtype, shape, data
    #: transfers the round holds in the ledger that were not read into ``transfers``
    #: (``Ledger.iter_rounds(..., transfers=False)``; ``Ledger.round_transfers`` reads them)
    unread: int = 0
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _columns: tuple[tuple, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def transfer_count(self) -> int:
        """The round's transfers in the ledger, read or not (``unread``)."""
        return len(self.transfers) + self.unread

    def columns(self) -> tuple[tuple, ...]:
        """The transfers column-wise ``(ids, kinds, debits, credits, amounts)`` (built once;
        ``()`` for a round without transfers)."""
        if self._columns is None:
            self._columns = tuple(zip(*self.transfers))
        return self._columns

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


def split_arrays(seq: int, e: "EventRow", encode: Callable[[Any], str] = canonical_json,
                 ) -> tuple[tuple[int, str, str | None, str], list[tuple[str, str, str, bytes]]]:
    """An event row with its numpy arrays taken out as array records (round-level events
    only); ``encode`` writes the rest of the payload as JSON."""
    payload, arrays = e.payload, []
    if isinstance(payload, dict) and any(isinstance(v, np.ndarray) for v in payload.values()):
        if e.agent is not None:
            raise ValueError(f"event {e.kind!r} of agent {e.agent!r}: array records are for round-level events")
        arrays = [encode_array(e.kind, k, v) for k, v in payload.items() if isinstance(v, np.ndarray)]
        payload = {k: v for k, v in payload.items() if not isinstance(v, np.ndarray)}
    return (seq, e.kind, e.agent, encode(payload)), arrays


HEADER_FIELDS = ("id", "name", "game", "mechanism", "seed", "scenario_json", "minor_units")


def run_header(run: Any) -> dict[str, Any]:
    """The hashed header fields of a ``Run`` row."""
    return {k: getattr(run, k) for k in HEADER_FIELDS}


def header_hash(run: dict[str, Any]) -> str:
    """SHA-256 of the run's header fields (id, name, game, mechanism, seed, scenario, units)."""
    fields = [run["id"], run["name"], run["game"], run["mechanism"], run["seed"], run["scenario_json"], run["minor_units"]]
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


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
        self._accounts: dict[str, set[str]] = {}  # run id -> account names (accounts are never removed)
        self._checked_agents: dict[str, list[Sequence[str]]] = {}  # run id -> agent lists found to be accounts
        self._floors: dict[str, dict[str, int]] = {}  # run id -> account floors (fixed when the run is created)

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
        n = len(agent_ids)
        # columns, not a dict per account: (name, kind, position, floor) rows are zipped at the insert
        names = [agent_account(a) for a in agent_ids] + [TREASURY, *extra_accounts]
        kinds = [*repeat("agent", n), "treasury", *repeat("mechanism", len(extra_accounts))]
        floor_col = [floors.get(a) for a in agent_ids] + [None] * (1 + len(extra_accounts)) if floors \
            else repeat(None, len(names))
        with self._signed():
            if self.signer:
                accounts = [dict(name=m, kind=k, position=i) for i, (m, k) in enumerate(zip(names, kinds))]
                row.update(self.signer.start_fields(row, accounts))
            with self._begin() as conn:
                conn.execute(insert(Run), [row])
                bulk_insert(conn, "accounts", ACCOUNT_COLUMNS,
                            zip(repeat(run_id), names, kinds, range(len(names)), floor_col))
        self._accounts[run_id] = set(names[n:])  # the agents' accounts: known by their list, below
        self._checked_agents[run_id] = [agent_ids]  # a payment batch over this very list needs no check
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
        not of an open pending transfer of the run, if the round takes an account below
        its floor, or if a transfer names an account the run does not have (checked here:
        the transfers table has no foreign keys).
        """
        ev, arrays = [], []
        for seq, e in enumerate(events):
            row, arr = split_arrays(seq, e, lambda p, k=e.kind: _payload_json(run_id, round_index, k, p))
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
        transfer_batches = len(batches)
        pe = []
        for t in pending:
            if isinstance(t, PaymentBatch):
                pe += t.id_rows(prefix)
                batches.append(t)
            elif t.amount != 0:
                pe.append((f"{prefix}{t.kind}:{t.debit}:{t.credit}", t.kind, t.debit, t.credit, int(t.amount)))
        pe.sort()
        if any(t[4] < 0 for t in pe):
            raise ValueError("a pending transfer has a negative amount; swap debit and credit")
        if len({p[0] for p in pe}) != len(pe) or len({r.pending_id for r in resolutions}) != len(resolutions):
            raise LedgerError(f"run {run_id} round {round_index}: a pending transfer is opened or resolved twice")
        self._check_accounts(run_id, round_index, single + pe, batches)
        if single or transfer_batches > 1:
            tr += single
            tr.sort()  # in id order from here on (one batch alone already is)
        with self._signed():
            try:
                return self._write_round(run_id, round_index, ev, tr, arrays, pe, list(resolutions))
            except IntegrityError:
                # a concurrent writer of the same round committed first: report it as a duplicate
                # if it wrote the same content (the retry finds the round), else raise
                if self.signer:
                    self.signer.rolled_back()
                return self._write_round(run_id, round_index, ev, tr, arrays, pe, list(resolutions))

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
        floors = self._floors.get(run_id)
        if floors is None:  # read once per run: not a query per round on the write path
            floors = self._floors[run_id] = dict(conn.execute(select(Account.name, Account.floor).where(
                Account.run_id == run_id, Account.floor.is_not(None))).all())
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
                     arrays: list[tuple], pe: list[tuple] = (), resolutions: list[Resolution] = ()) -> WriteResult:
        """The round's transaction; ``tr`` (transfer rows) in id order, as ``write_round`` leaves them."""
        pe = list(pe)
        with self._begin() as conn:
            # lock the run row (serialises writers of a run; on PostgreSQL a statement of its
            # own, so that the next one reads what a writer before us committed), then read
            # the chain's anchor and the run's last round in one statement; on PostgreSQL the
            # two go in one round trip (psycopg's pipeline: the server still runs them in turn)
            if conn.dialect.name == "postgresql":
                dbapi = conn.connection.dbapi_connection
                with dbapi.pipeline():
                    dbapi.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))
                    head = dbapi.execute(CHAIN_HEAD_SQL.replace("?", "%s"), (run_id, run_id))
                found = head.fetchone()
            else:
                found = conn.exec_driver_sql(CHAIN_HEAD_SQL, (run_id, run_id)).first()
            if found is None:
                raise LedgerError(f"ledger {self.url} has no run {run_id!r}")
            header, status = found[0], found[1]
            last = None if found[2] is None else tuple(found[2:])
            if last is not None and last[0] >= round_index:
                existing = last if last[0] == round_index else conn.execute(
                    select(Round.index, Round.prev_hash, Round.hash).where(
                        Round.run_id == run_id, Round.index == round_index)).first()
                rs = [(r.pending_id, r.state, r.amount) for r in resolutions]
                if existing is not None and rs:  # the stored amounts (a default amount is the pending's)
                    stored = dict(conn.execute(select(PendingResolution.pending_id, PendingResolution.amount).where(
                        PendingResolution.run_id == run_id, PendingResolution.round_index == round_index)).all())
                    rs = [(i, st, stored.get(i, -1) if m is None else m) for i, st, m in rs]
                h = round_hash(existing[1], round_index, ev, tr, pending=pe, resolutions=rs,
                               arrays=arrays) if existing is not None else None
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
            t_lines = transfer_lines(tr)  # in id order; encoded once: the round hash, the Merkle leaves, COPY
            t_text: str | None = "\n".join(t_lines)
            t_block = t_text.encode()  # type: ignore[union-attr]
            if conn.dialect.name != "postgresql":
                t_text = None  # only COPY reads the text again (10^6 transfers: ~100 MB)
            h = round_hash_of_block(prev, round_index, ev, t_block, pending=pe, resolutions=rs, arrays=arrays)
            bulk_insert(conn, "rounds", ROUND_COLUMNS, [(run_id, round_index, prev, h, len(ev), len(tr))])
            rooting = self._root_helper(tr, t_block)  # a large round's Merkle root, computed while the rows go in
            if self.signer and rooting is None:  # the round's Merkle root and signed head, in its transaction
                self.signer.write_head(conn, run_id, round_index, h, tr, lines=t_lines, block=t_block)
            del t_lines, t_block  # what the inserts no longer need goes now
            try:
                bulk_insert(conn, "events", EVENT_COLUMNS, [(run_id, round_index, *e) for e in ev])
                bulk_insert(conn, "arrays", ARRAY_COLUMNS, [(run_id, round_index, *a) for a in arrays])
                fault_point("settle", round_index)
                insert_transfers(conn, run_id, round_index, tr, t_text)
                if rooting is not None:
                    try:
                        root: str | None = rooting.result().hex()
                    except OSError:
                        root = None  # computed from the rows
                    self.signer.write_head(conn, run_id, round_index, h, tr, root=root)
            finally:
                if rooting is not None:
                    rooting.close()
            bulk_insert(conn, "pending_transfers", TRANSFER_COLUMNS,
                        [(i, run_id, round_index, k, d, c, m) for i, k, d, c, m in pe])
            bulk_insert(conn, "pending_resolutions", RESOLUTION_COLUMNS,
                        [(i, run_id, round_index, st, m) for i, st, m in rs])
        return WriteResult(round_index, h, n_transfers=len(tr))

    def _root_helper(self, tr: list[tuple], block: bytes) -> BlockRoot | None:
        """A helper process computing the Merkle root of a signed round of at least
        ``ROOT_HELPER_TRANSFERS`` transfers (``block``: their lines), on a machine with two or
        more CPUs; else (or if it cannot start) ``None``: the root is computed here."""
        if not self.signer or len(tr) < ROOT_HELPER_TRANSFERS or available_cpus() < 2:
            return None
        try:
            return BlockRoot(block)
        except OSError:
            return None

    def read_rounds(self, run_id: str) -> list[RoundRecord]:
        """All rounds of a run with their events and transfers, in order."""
        return list(self.iter_rounds(run_id))

    def iter_rounds(self, run_id: str, *, transfers: bool = True) -> Iterator[RoundRecord]:
        """Stream a run's rounds in index order, one round in memory at a time.

        Rows whose round has no ``rounds`` row (inserted behind the ledger's back) come
        as a record with empty hashes, so the audit sees them. ``transfers=False``: each
        round's transfer rows are counted, not read (``RoundRecord.unread``).
        """
        escrow = self._escrow_rows(run_id)
        with self.engine.connect() as conn:
            # batches bound memory, not rounds: an array record holds 8 bytes per account
            # (10^6 agents: 8 MB), so array rows come ARRAY_BATCH_BYTES at a time (at least 4)
            accounts = conn.execute(select(func.count()).select_from(Account).where(Account.run_id == run_id)).scalar()
            batch = {**RUN_ROWS_BATCH, "arrays": max(4, ARRAY_BATCH_BYTES // (8 * max(1, accounts or 0)))}
            queries = {**RUN_ROWS_SQL, **({} if transfers else {"transfers": TRANSFER_COUNTS_SQL})}
            sources = {t: driver_batches(conn, queries[t], run_id, batch=batch[t]) for t in queries}
            if transfers and conn.dialect.name == "postgresql":  # the bulk of a run: fetched while the rounds
                sources["transfers"] = prefetched(sources["transfers"])  # before are used
            try:
                yield from _merged_rounds(sources, escrow, counted=not transfers)
            finally:  # a reader that stops early: no fetch (nor fetching thread) outlives the connection
                for source in sources.values():
                    source.close()

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

    def round_transfers(self, run_id: str, index: int) -> list[tuple[str, str, str, str, int]]:
        """Round ``index``'s transfer rows ``(id, kind, debit, credit, amount)`` in id order
        (``RoundRecord.transfers``)."""
        with self.transfer_reader(run_id) as read:
            return read(index)

    @contextmanager
    def transfer_reader(self, run_id: str) -> Iterator[Callable[[int], list[tuple[str, str, str, str, int]]]]:
        """``read(index)``: ``round_transfers`` of run ``run_id``'s rounds, one query each
        through one connection held open (a plain cursor: a round is a few rows)."""
        with self.engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            sql = ROUND_TRANSFERS_SQL.replace("?", "%s") if conn.dialect.name == "postgresql" else ROUND_TRANSFERS_SQL

            def read(index: int) -> list[tuple[str, str, str, str, int]]:
                cur = dbapi.cursor()
                try:
                    cur.execute(sql, (run_id, index))
                    return sorted(cur.fetchall())
                finally:
                    cur.close()

            yield read

    def row_source(self) -> tuple[str, list, dict, str, tuple[str, tuple] | None] | None:
        """How another process opens this ledger to read a round's transfers itself
        (``digests.RowSource``): the DB-API module, its connect arguments (a SQLite file
        read-only), ``ROUND_TRANSFERS_SQL`` in its parameter style, and on PostgreSQL a query
        with the row it must return there (``IDENTITY_SQL``: the same database and schema as
        this process sees, whatever the engine's own connect arguments); ``None`` for a
        database no other process can open (SQLite in memory) or another driver."""
        url = self.engine.url
        args, kwargs = self.engine.dialect.create_connect_args(url)
        if url.get_backend_name() == "sqlite" and self.engine.dialect.driver == "pysqlite":
            path = args[0] if args else ""
            if not isinstance(path, str) or not path or path == ":memory:" or path.startswith("file:") \
                    or not Path(path).is_file():
                return None
            return ("sqlite3", [f"file:{quote(str(Path(path).resolve()))}?mode=ro"], {"uri": True},
                    ROUND_TRANSFERS_SQL, None)
        if url.get_backend_name() == "postgresql" and self.engine.dialect.driver == "psycopg" and not args:
            plain = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}
            with self.engine.connect() as conn:
                here = tuple(conn.exec_driver_sql(IDENTITY_SQL).one())
            return "psycopg", [], plain, ROUND_TRANSFERS_SQL.replace("?", "%s"), (IDENTITY_SQL, here)
        return None

    def balances(self, run_id: str) -> dict[str, int]:
        """Derived posted balances (credits minus debits) of every account of a run: the
        transfers plus the posted amounts of resolved pending transfers."""
        with self.engine.connect() as conn:  # through the driver: 10^6 accounts are 10^6 rows
            out = dict.fromkeys((name for name, in driver_rows(conn, ACCOUNT_NAMES_SQL, run_id)), 0)
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
        for side, sign in (("credit", 1), ("debit", -1)):  # through the driver: a row per account
            for acct, total in driver_rows(conn, f"SELECT {side}, SUM(amount) FROM transfers WHERE run_id = ? "
                                                 f"GROUP BY {side}", run_id):
                yield acct, sign * int(total)
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
        """A write transaction; an unreachable or locked database becomes a ``LedgerError``
        (raised through SQLAlchemy, or by the driver itself: ``COPY``, pipelined statements)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, self.engine.dialect.loaded_dbapi.OperationalError) as exc:
            raise LedgerError(f"ledger {self.url} cannot be written: {_short(exc)}") from None

    def _session(self):
        from sqlalchemy.orm import Session

        return Session(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


ACCOUNT_COLUMNS = ("run_id", "name", "kind", "position", "floor")
ACCOUNT_NAMES_SQL = "SELECT name FROM accounts WHERE run_id = ? ORDER BY position"
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
#: a run's transfers counted per round (``iter_rounds(..., transfers=False)``)
TRANSFER_COUNTS_SQL = ("SELECT round_index, count(*) FROM transfers WHERE run_id = ? GROUP BY round_index "
                       "ORDER BY round_index")
#: one round's transfers (parameters: run id, round index), in no particular order
ROUND_TRANSFERS_SQL = "SELECT id, kind, debit, credit, amount FROM transfers WHERE run_id = ? AND round_index = ?"
#: which database and tables a PostgreSQL connection sees (``Ledger.row_source``)
IDENTITY_SQL = "SELECT current_database(), current_schema(), inet_server_port()"
#: transfers of a round from which the write path computes its Merkle root in a helper
#: process while it inserts the rows (``digests.BlockRoot``; below, starting it costs more)
ROOT_HELPER_TRANSFERS = 100_000
RUN_ROWS_BATCH = {"rounds": 10_000, "events": 1_000, "transfers": 5_000, "arrays": 4}  # rows per fetch
ARRAY_BATCH_BYTES = 2**21  # array rows per fetch: about this many bytes (a fetch is a round trip on PostgreSQL)
CHAIN_HEAD_SQL = ('SELECT runs.header_hash, runs.status, rounds."index", rounds.prev_hash, rounds.hash FROM runs '
                  'LEFT JOIN rounds ON rounds.run_id = runs.id AND rounds."index" = '
                  '(SELECT max("index") FROM rounds WHERE run_id = ?) WHERE runs.id = ?')
ARRAY_COLUMNS = ("run_id", "round_index", "name", "dtype", "shape", "data")
TRANSFER_COLUMNS = ("id", "run_id", "round_index", "kind", "debit", "credit", "amount")
#: the same columns in the order of a round's rows ``(id, kind, debit, credit, amount)`` and then the round's
TRANSFER_ROW_COLUMNS = ("id", "kind", "debit", "credit", "amount", "run_id", "round_index")
RESOLUTION_COLUMNS = ("pending_id", "run_id", "round_index", "state", "amount")


def insert_transfers(conn: Connection, run_id: str, round_index: int, tr: list[tuple],
                     t_text: str | None = None) -> None:
    """Insert a round's transfers ``(id, kind, debit, credit, amount)`` through the driver.

    On PostgreSQL the rows go to ``COPY`` as one block of text (one ``write`` instead of a
    Python call per row) when no field needs COPY escaping; otherwise row by row. The block
    is the round hash's transfer lines (``t_text``: ``transfer_lines`` joined by newlines,
    when the caller has them) with their ``T`` dropped and the round's columns appended,
    in two C passes over the text.
    """
    if not tr:
        return
    if conn.dialect.name == "postgresql":
        text = "\n".join(transfer_lines(tr)) if t_text is None else t_text
        tail = f"\t{run_id}\t{round_index}"
        block = text[2:].replace("\nT\t", tail + "\n") + tail + "\n"
        plain = "\\" not in block and "\r" not in block  # nothing COPY would unescape
        if plain and block.count("\t") == 6 * len(tr) and block.count("\n") == len(tr):
            with conn.connection.dbapi_connection.cursor() as cur, \
                    cur.copy(f"COPY transfers ({', '.join(TRANSFER_ROW_COLUMNS)}) FROM STDIN") as copy:
                copy.write(block)
            return
    # the round's constants appended to each row in C (``tuple + tail``): no Python step per row
    bulk_insert(conn, "transfers", TRANSFER_ROW_COLUMNS, map(add, tr, repeat((run_id, round_index))))


def bulk_insert(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Insert rows (a list, or an iterator such as a ``zip`` of columns) through the driver
    inside ``conn``'s transaction: COPY on PostgreSQL, ``executemany`` elsewhere (several
    times faster than ORM/Core inserts of dicts)."""
    if isinstance(rows, list) and not rows:
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
    for rows in driver_batches(conn, sql, *params, batch=batch):
        yield from rows


def driver_batches(conn: Connection, sql: str, *params: Any, batch: int = 20_000) -> Iterator[list[tuple]]:
    """``driver_rows`` a batch at a time (the driver's ``fetchmany`` lists): one batch alive
    at a time, so memory is bounded by the batch, not the query."""
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cur = dbapi.cursor(name=f"mbi_rows_{next(_CURSOR_NAMES)}")
        sql = sql.replace("?", "%s")
    else:
        cur = dbapi.cursor()
    try:
        cur.execute(sql, params)
        while rows := cur.fetchmany(batch):
            yield rows
            del rows
    finally:
        cur.close()


T = TypeVar("T")
_CURSOR_NAMES = count(1)  # server-side cursors' names, unique in the process (``next`` is atomic)


def _merged_rounds(sources: dict[str, Iterator[list[tuple]]],
                   escrow: tuple[dict[int, list], dict[int, list]], counted: bool = False) -> Iterator[RoundRecord]:
    """``Ledger.iter_rounds``'s merge: the batches of the four ``RUN_ROWS_SQL`` queries
    grouped by round and joined into one ``RoundRecord`` per round index, in order
    (``counted``: the transfers source is ``TRANSFER_COUNTS_SQL``)."""
    heads, events, transfers, arrays = (_rounds_of(sources[t]) for t in RUN_ROWS_SQL)
    # transfers come in index order of rounds and are sorted by id within a round here,
    # which spares the database a sort of the whole run (they mostly come sorted: one pass)
    streams = [heads, events, transfers if counted else ((i, sorted(rows)) for i, rows in transfers),
               ((i, [(n, d, sh, b if isinstance(b, bytes) else bytes(b)) for n, d, sh, b in rows])
                for i, rows in arrays)]
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
        unread = rows[2][0][0] if counted and rows[2] else 0
        yield RoundRecord(index, prev, h, rows[1], [] if counted else rows[2], pending=escrow[0].pop(index, []),
                          resolutions=escrow[1].pop(index, []), arrays=rows[3], unread=unread)


def prefetched(batches: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``batches`` read by a thread of their own, up to ``depth`` ahead of the consumer.

    For PostgreSQL's server-side cursors: a fetch waits on the server with the GIL released,
    so the server produces the next batch while the consumer works on this one (psycopg's
    connections are thread-safe; the thread uses its own cursor). Errors reach the consumer;
    closing the iterator stops the thread after its current fetch and closes ``batches``.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in batches:
                if not put((True, b)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=produce, name="mbi-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            more, item = q.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()
        close = getattr(batches, "close", None)
        if close is not None:
            close()


_TAIL = itemgetter(slice(1, None))  # a row without its first column
_FIRST = itemgetter(0)


def _rounds_of(batches: Iterable[list[tuple]]) -> Iterator[tuple[int, list[tuple]]]:
    """Group batches of rows ``(round_index, *fields)`` sorted by round into ``(round_index,
    [fields])``: each round's rows are found by bisection of the batch (no Python step per
    row beyond dropping the index)."""
    index, group = None, []
    for rows in batches:
        i, n = 0, len(rows)
        while i < n:
            first = rows[i][0]
            j = n if rows[n - 1][0] == first else bisect_right(rows, first, i, n, key=_FIRST)
            if first != index:
                if index is not None:
                    yield index, group
                index, group = first, []
            group += map(_TAIL, islice(rows, i, j))
            i = j
    if index is not None:
        yield index, group


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
