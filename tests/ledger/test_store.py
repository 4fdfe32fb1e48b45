"""Ledger invariants on a real SQLite file and a real PostgreSQL database."""

import hashlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from mbiagents.errors import LedgerError
from mbiagents.ledger import digests as digests_module
from mbiagents.ledger import store as store_module
from mbiagents.ledger.digests import row_reader
from mbiagents.ledger.merkle import block_root, merkle_root
from mbiagents.ledger.models import Base
from mbiagents.ledger.schema import head_revision, open_ledger, upgrade
from mbiagents.ledger.signing import RunSigner, head_statement, public_hex, verify
from mbiagents.ledger.store import EventRow, TransferRow, make_engine, round_hash


@pytest.fixture(params=["sqlite", "postgres"])
def url(request):
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


def new_run(ledger, agents=("a", "b")):
    return ledger.create_run(name="t", game="team", mechanism="dpm", seed=0, scenario={"x": 1}, agent_ids=list(agents))


def pay(agent, amount):
    return TransferRow("clarke", f"agent:{agent}", "treasury", amount)


def test_migrations_create_the_models_schema(url):
    ledger = open_ledger(url)
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        rev = MigrationContext.configure(conn).get_current_revision()
    assert diff == []
    assert rev == head_revision()


def test_double_entry_balances_sum_to_zero(url):
    ledger = open_ledger(url)
    run = new_run(ledger)
    ledger.write_round(run, 0, [EventRow("payments", {"t": [1.0, 2.0]})], [pay("a", 7), pay("b", 5)])
    ledger.write_round(run, 1, [], [TransferRow("refund", "treasury", "agent:a", 3)])
    bal = ledger.balances(run)
    assert bal == {"agent:a": -4, "agent:b": -5, "treasury": 9}
    assert sum(bal.values()) == 0


def test_rounds_with_transfers_counted_not_read(url):
    """``iter_rounds(transfers=False)``: the same rounds with each one's transfers counted
    (``unread``), not read; ``round_transfers`` and ``transfer_reader`` read them in id order."""
    ledger = open_ledger(url)
    run = new_run(ledger, agents=("a", "b", "c"))
    ledger.write_round(run, 0, [EventRow("e", {"v": 1})], [pay("c", 3), pay("a", 7), pay("b", 5)])
    ledger.write_round(run, 1, [EventRow("e", {"v": 2})], [])
    ledger.write_round(run, 2, [], [TransferRow("refund", "treasury", "agent:b", 2)])
    full = ledger.read_rounds(run)
    counted = list(ledger.iter_rounds(run, transfers=False))
    assert [r.unread for r in counted] == [len(r.transfers) for r in full] == [3, 0, 1]
    assert [(r.index, r.hash, r.events) for r in counted] == [(r.index, r.hash, r.events) for r in full]
    assert all(r.transfers == [] for r in counted) and all(r.unread == 0 for r in full)
    assert [ledger.round_transfers(run, r.index) for r in full] == [r.transfers for r in full]
    with ledger.transfer_reader(run) as read:
        assert [read(r.index) for r in full] == [r.transfers for r in full]
        assert [t[0] for t in read(0)] == sorted(t[0] for t in read(0))


def test_row_source_opens_the_ledger_in_another_process(url, tmp_path):
    """``row_source``: a SQLite file read-only, PostgreSQL through psycopg with the URL's fields
    (the password among them, never on a command line); the query reads a round's rows."""
    ledger = open_ledger(url)
    run = new_run(ledger)
    ledger.write_round(run, 0, [], [pay("a", 7), pay("b", 5)])
    module, args, kwargs, sql, identity = ledger.row_source()
    if module == "sqlite3":
        import sqlite3

        assert args[0].startswith("file:") and args[0].endswith("?mode=ro") and kwargs == {"uri": True}
        assert identity is None  # the file's path names it
        conn = sqlite3.connect(*args, **kwargs)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("insert into runs (id) values ('x')")
    else:
        import psycopg

        assert module == "psycopg" and not args and "%s" in sql
        conn = psycopg.connect(*args, autocommit=True, **kwargs)
        assert tuple(conn.execute(identity[0]).fetchone()) == identity[1]
        with pytest.raises(ValueError, match="not the caller's"):  # another database on the same server
            row_reader((module, args, {**kwargs, "dbname": "postgres"}, sql, identity))
    assert sorted(conn.execute(sql, (run, 0)).fetchall()) == ledger.round_transfers(run, 0)
    conn.close()
    assert open_ledger("sqlite://").row_source() is None  # in memory: no other process can open it


def test_idempotent_round_write_is_a_duplicate_not_an_error(url):
    ledger = open_ledger(url)
    run = new_run(ledger)
    first = ledger.write_round(run, 0, [EventRow("e", {"v": 1})], [pay("a", 10)])
    again = ledger.write_round(run, 0, [EventRow("e", {"v": 1})], [pay("a", 10)])
    assert again.duplicate and again.hash == first.hash
    assert ledger.balances(run)["treasury"] == 10
    with pytest.raises(LedgerError, match="different content"):
        ledger.write_round(run, 0, [EventRow("e", {"v": 1})], [pay("a", 11)])


def test_round_is_atomic(url):
    ledger = open_ledger(url)
    run = new_run(ledger)
    # a transfer to an account that does not exist violates a foreign key mid-round
    with pytest.raises(Exception):
        ledger.write_round(run, 0, [EventRow("e", {"v": 1})], [pay("a", 1), TransferRow("x", "agent:zed", "treasury", 1)])
    assert ledger.read_rounds(run) == []
    with ledger.engine.connect() as conn:
        assert conn.execute(text("select count(*) from events")).scalar() == 0
        assert conn.execute(text("select count(*) from transfers")).scalar() == 0


def test_rounds_must_be_written_in_order(url):
    ledger = open_ledger(url)
    run = new_run(ledger)
    with pytest.raises(LedgerError, match="written after round -1"):
        ledger.write_round(run, 1, [], [])


def test_hash_chain_links_rounds(url):
    ledger = open_ledger(url)
    run = new_run(ledger)
    ledger.write_round(run, 0, [EventRow("e", {"v": 1})], [pay("a", 10)])
    ledger.write_round(run, 1, [EventRow("e", {"v": 2})], [pay("b", 3)])
    r0, r1 = ledger.read_rounds(run)
    assert r1.prev_hash == r0.hash
    assert r1.hash == round_hash(r0.hash, 1, r1.events, r1.transfers)


def test_database_rejects_non_positive_amounts(url):
    ledger = open_ledger(url)
    run = new_run(ledger)
    ledger.write_round(run, 0, [], [])
    with pytest.raises(Exception):
        with ledger.engine.begin() as conn:
            conn.execute(text("insert into transfers (id, run_id, round_index, kind, debit, credit, amount) "
                              "values ('x', :r, 0, 'k', 'agent:a', 'treasury', 0)"), {"r": run})


def test_old_schema_asks_for_upgrade(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num = 'older'"))
    with pytest.raises(LedgerError, match="mbi db upgrade"):
        open_ledger(sqlite_url)


def test_unreachable_and_foreign_databases(tmp_path):
    with pytest.raises(LedgerError, match="does not exist"):
        open_ledger(f"sqlite:///{tmp_path}/missing/dir/l.db")
    with pytest.raises(LedgerError, match="cannot be reached"):
        open_ledger("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(LedgerError, match="not a usable SQLAlchemy URL"):
        open_ledger("notadb://x")
    other = make_engine(f"sqlite:///{tmp_path}/other.db")
    with other.begin() as conn:
        conn.execute(text("create table t (x int)"))
    with pytest.raises(LedgerError, match="not an mbiagents ledger"):
        open_ledger(f"sqlite:///{tmp_path}/other.db")


def test_accounts_from_columns_and_payment_batches_over_the_runs_list_or_another(url):
    import numpy as np

    from mbiagents.ledger.store import PaymentBatch

    ledger = open_ledger(url)
    ids = ["a", "b", "c"]
    run = ledger.create_run(name="t", game="team", mechanism="dpm", seed=0, scenario={}, agent_ids=ids,
                            extra_accounts=["escrow"], floors={"b": -5})
    assert ledger.accounts(run) == [("agent:a", "agent"), ("agent:b", "agent"), ("agent:c", "agent"),
                                    ("treasury", "treasury"), ("escrow", "mechanism")]
    assert ledger.floors(run) == {"agent:b": -5}
    ledger.write_round(run, 0, [], [PaymentBatch("clarke", ids, np.array([3, -2, 0]))])
    with pytest.raises(LedgerError, match="the round takes account 'agent:b' to -6"):
        ledger.write_round(run, 1, [], [PaymentBatch("clarke", ids, np.array([0, 8, 0]))])
    with pytest.raises(LedgerError, match="'agent:zed', which is not an account"):
        ledger.write_round(run, 1, [], [PaymentBatch("clarke", ["a", "zed"], np.array([1, 1]))])
    assert ledger.balances(run) == {"agent:a": -3, "agent:b": 2, "agent:c": 0, "treasury": 1, "escrow": 0}
    assert [t[1:] for t in ledger.read_rounds(run)[0].transfers] == [
        ("clarke", "agent:a", "treasury", 3), ("clarke", "treasury", "agent:b", 2)]


# ---- prefetched (PostgreSQL's transfer batches read by a thread of their own) ------------
def test_prefetched_keeps_order_and_raises_the_sources_error():
    from mbiagents.ledger.store import prefetched

    assert list(prefetched(iter(range(100)), depth=2)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("fetch failed")

    got = prefetched(failing())
    assert next(got) == 1
    with pytest.raises(ValueError, match="fetch failed"):
        next(got)


def test_prefetched_closed_early_stops_its_thread_and_closes_the_source():
    import threading

    from mbiagents.ledger.store import prefetched

    closed = []

    def source():
        try:
            yield from range(10**9)
        finally:
            closed.append(True)

    got = prefetched(source(), depth=2)
    assert [next(got) for _ in range(5)] == [0, 1, 2, 3, 4]
    got.close()
    assert closed == [True]
    assert not any(t.name == "mbi-prefetch" for t in threading.enumerate())


@pytest.mark.postgres
def test_a_reader_that_stops_early_leaves_no_fetching_thread(pg_url):
    """PostgreSQL's transfers are fetched by a thread; closing ``iter_rounds`` mid-run stops it
    before the connection goes back to the pool, which then serves the next reader."""
    import threading

    from mbiagents.ledger import store

    ledger = open_ledger(pg_url)
    run = new_run(ledger, agents=[f"a{i}" for i in range(50)])
    for r in range(12):
        ledger.write_round(run, r, [], [pay(f"a{i}", i + 1 + r) for i in range(50)])
    with pytest.MonkeyPatch.context() as m:
        m.setitem(store.RUN_ROWS_BATCH, "transfers", 60)  # many fetches per run
        rounds = ledger.iter_rounds(run)
        assert [next(rounds).index for _ in range(3)] == [0, 1, 2]
        rounds.close()
        assert not any(t.name == "mbi-prefetch" for t in threading.enumerate())
        assert [r.index for r in ledger.iter_rounds(run)] == list(range(12))
    ledger.dispose()


@pytest.mark.postgres
def test_a_locked_run_row_is_a_ledger_error_on_postgresql(pg_url):
    """The write path's pipelined lock of the run row (raw psycopg, not SQLAlchemy) times out
    as a LedgerError, as a statement through SQLAlchemy would."""
    from sqlalchemy import event

    from mbiagents.ledger.store import Ledger

    ledger = open_ledger(pg_url)
    run = new_run(ledger)
    ledger.write_round(run, 0, [], [pay("a", 1)])
    impatient = make_engine(pg_url)

    @event.listens_for(impatient, "connect")
    def _short_lock_timeout(dbapi_conn, _record):
        with dbapi_conn.cursor() as cur:
            cur.execute("set lock_timeout = '200ms'")
        dbapi_conn.commit()

    with ledger.engine.connect() as conn, conn.begin():  # another writer holds the run row
        conn.execute(text("select 1 from runs where id = :r for update"), {"r": run})
        with pytest.raises(LedgerError, match="cannot be written"):
            Ledger(impatient).write_round(run, 1, [], [pay("a", 2)])
    impatient.dispose()
    ledger.write_round(run, 1, [], [pay("a", 2)])  # once released, the round goes in
    ledger.dispose()


class _FailingRoot(digests_module.BlockRoot):
    """A root helper that dies before answering."""

    def result(self) -> bytes:
        self.proc.kill()
        return super().result()


@pytest.mark.parametrize("helper", [digests_module.BlockRoot, _FailingRoot])
def test_a_large_rounds_merkle_root_comes_from_a_helper_process(sqlite_url, monkeypatch, helper):
    """Past ``ROOT_HELPER_TRANSFERS`` the signed head's root is computed by a helper process
    while the rows go in: the head holds the RFC 6962 root of the round's transfer lines
    (recomputed here leaf by leaf), signed; a helper that fails leaves the same root,
    computed from the rows."""
    started = []

    class Counted(helper):
        def __init__(self, block):
            super().__init__(block)
            started.append(self)

    monkeypatch.setattr(store_module, "ROOT_HELPER_TRANSFERS", 5)
    monkeypatch.setattr(store_module, "available_cpus", lambda: 2)
    monkeypatch.setattr(store_module, "BlockRoot", Counted)
    ledger = open_ledger(sqlite_url)
    key = Ed25519PrivateKey.generate()
    ledger.signer = RunSigner(key)
    agents = [f"a{j}" for j in range(8)]
    run = new_run(ledger, agents=agents)
    ledger.write_round(run, 0, [], [pay(a, j + 1) for j, a in enumerate(agents[:4])])  # below: computed here
    ledger.write_round(run, 1, [], [pay(a, j + 1) for j, a in enumerate(agents)])
    assert len(started) == 1 and started[0].proc.returncode is not None
    with ledger.engine.connect() as conn:
        heads = {i: (root, sig) for i, root, sig in conn.execute(text(
            "select round_index, merkle_root, signature from round_heads where run_id = :r"), {"r": run})}
    for r in ledger.read_rounds(run):
        want = merkle_root([hashlib.sha256(b"\x00" + f"T\t{i}\t{k}\t{d}\t{c}\t{m}".encode()).digest()
                            for i, k, d, c, m in r.transfers]).hex()
        root, sig = heads[r.index]
        assert root == want and verify(public_hex(key), sig, head_statement(run, r.index, r.hash, want))


def test_block_root_helper_is_block_root():
    block = "\n".join(f"T\tid{j}\tk\ta\tb\t{j}" for j in range(1000)).encode()
    assert digests_module.BlockRoot(block).result() == block_root(block)


def test_a_round_that_fails_mid_write_ends_its_root_helper(sqlite_url, monkeypatch):
    started = []

    class Counted(digests_module.BlockRoot):
        def __init__(self, block):
            super().__init__(block)
            started.append(self)

    def crash(point, index):
        raise RuntimeError(f"killed at {point}")

    monkeypatch.setattr(store_module, "ROOT_HELPER_TRANSFERS", 2)
    monkeypatch.setattr(store_module, "available_cpus", lambda: 2)
    monkeypatch.setattr(store_module, "BlockRoot", Counted)
    monkeypatch.setattr(store_module, "fault_point", crash)
    ledger = open_ledger(sqlite_url)
    ledger.signer = RunSigner(Ed25519PrivateKey.generate())
    run = new_run(ledger, agents=("a", "b", "c"))
    with pytest.raises(RuntimeError, match="killed at settle"):
        ledger.write_round(run, 0, [], [pay(a, 1) for a in "abc"])
    assert len(started) == 1 and started[0].proc.returncode is not None  # no helper left behind
    assert ledger.read_rounds(run) == []  # nothing written
