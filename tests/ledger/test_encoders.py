"""The read side's encoders against the documented formats, recomputed here independently:
the round hash from pre-encoded transfer lines, Merkle leaves from those lines, payments
from transfer columns."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbiagents.ledger import digests as digests_module
from mbiagents.ledger.digests import DigestWorker, digest_request, round_digests
from mbiagents.ledger.invariants import agent_payments, ids_match, transfers_clean
from mbiagents.ledger.merkle import leaf_hash, line_leaves, merkle_root, transfer_leaves, transfer_line
from mbiagents.ledger.payments import signed_minor_from_columns, signed_minor_from_transfers
from mbiagents.ledger.schema import HEAD_REVISION, alembic_head, open_ledger
from mbiagents.ledger.hashing import transfer_block
from mbiagents.ledger.store import RoundRecord, TransferRow, round_hash, round_hash_of_lines, transfer_lines

name = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
transfer = st.tuples(name, name, name, name, st.integers(1, 10**18))


def documented_round_hash(prev, index, events, transfers, pending, resolutions, arrays) -> str:
    """``store.round_hash`` as its docstring states it (the format existing ledgers hold)."""
    lines = [f"R\t{index}\t{prev}"]
    lines += [f"E\t{s}\t{k}\t{a or ''}\t{p}" for s, k, a, p in sorted(events)]
    lines += [f"A\t{n}\t{d}\t{sh}\t{hashlib.sha256(b).hexdigest()}" for n, d, sh, b in sorted(arrays)]
    lines += [f"T\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in sorted(transfers)]
    lines += [f"P\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in sorted(pending)]
    lines += [f"S\t{i}\t{s}\t{m}" for i, s, m in sorted(resolutions)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@settings(max_examples=200, deadline=None)
@given(prev=st.text(max_size=64), index=st.integers(0, 10**6),
       events=st.lists(st.tuples(st.integers(0, 99), name, st.none() | name, st.text(max_size=30)), max_size=4,
                       unique_by=lambda e: e[0]),
       transfers=st.lists(transfer, max_size=20), pending=st.lists(transfer, max_size=3),
       resolutions=st.lists(st.tuples(name, st.sampled_from(["posted", "voided"]), st.integers(0, 10**6)), max_size=3),
       arrays=st.lists(st.tuples(name, st.just("<f8"), st.just("2"), st.binary(max_size=16)), max_size=3,
                       unique_by=lambda a: a[0]))
def test_round_hash_of_lines_is_the_documented_round_hash(prev, index, events, transfers, pending, resolutions,
                                                          arrays):
    want = documented_round_hash(prev, index, events, transfers, pending, resolutions, arrays)
    assert round_hash(prev, index, events, transfers, pending=pending, resolutions=resolutions, arrays=arrays) == want
    lines = transfer_lines(sorted(transfers))
    assert round_hash_of_lines(prev, index, events, lines, pending=pending, resolutions=resolutions,
                               arrays=arrays) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(transfer, min_size=1, max_size=30))
def test_transfer_block_is_the_lines_joined(transfers):
    want = "\n".join(f"T\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in transfers)
    assert transfer_block(tuple(zip(*transfers))) == want


@settings(max_examples=300, deadline=None)
@given(run_id=name, index=st.integers(0, 10**6),
       fields=st.lists(st.tuples(name, name, name), min_size=1, max_size=12), data=st.data())
def test_ids_match_is_the_row_by_row_check(run_id, index, fields, data):
    """Ids built from their fields (some changed, some holding a newline) against a check of each row."""
    ids = [f"{run_id}:{index}:{k}:{d}:{c}" for k, d, c in fields]
    for j in data.draw(st.sets(st.integers(0, len(ids) - 1), max_size=2)):
        ids[j] = data.draw(st.sampled_from([ids[j] + "x", ids[j] + "\n", ids[j][:-1], "\n".join(ids[:2])]))
    rows = [(i, k, d, c, 1) for i, (k, d, c) in zip(ids, fields)]
    want = all(i == f"{run_id}:{index}:{k}:{d}:{c}" and "\n" not in i for i, k, d, c, _ in rows)
    assert ids_match(run_id, index, tuple(zip(*rows))) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(transfer, max_size=30))
def test_line_leaves_hash_each_transfer_line(transfers):
    rows = sorted(transfers)
    want = [leaf_hash(transfer_line(t)) for t in rows]
    assert line_leaves(transfer_lines(rows)) == want == transfer_leaves(transfers)


def test_line_leaves_of_a_line_with_a_newline():
    rows = [("r:0:k:a:b\nX", "k", "a", "b", 5), ("r:0:k:a:c", "k", "a", "c", 7)]
    assert line_leaves(transfer_lines(rows)) == [leaf_hash(transfer_line(t)) for t in rows]


def test_signed_minor_from_columns_is_the_row_version():
    ids = ["a0", "a1", "a2"]
    rows = [("x1", "clarke", "agent:a0", "treasury", 5), ("x2", "clarke", "treasury", "agent:a2", 7),
            ("x3", "bonus", "agent:a1", "treasury", 11), ("x4", "clarke", "agent:a1", "agent:a0", 2)]
    want = np.array([5 - 2, 2, -7])
    assert (signed_minor_from_transfers(ids, rows, "clarke") == want).all()
    assert (signed_minor_from_columns(ids, RoundRecord(0, "", "", transfers=rows).columns(), "clarke") == want).all()
    only_treasury = [r for r in rows if r[3] == "treasury" and r[1] == "clarke"]
    assert (signed_minor_from_columns(ids, tuple(zip(*only_treasury)), "clarke") == [5, 0, 0]).all()
    assert (signed_minor_from_columns(ids, (), "clarke") == 0).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["clarke", "bonus"]), st.sampled_from(["a0", "a1", "a2", "a3", "treasury"]),
                          st.sampled_from(["a0", "a1", "a2", "a3", "treasury"]), st.integers(1, 10**12)), max_size=25))
def test_agent_payments_are_the_sums_row_by_row(rows):
    """What each agent paid, recomputed here one row at a time: debited amounts minus credited
    ones of the payment kind (agents with no such transfer: absent or zero)."""
    ids = ["a0", "a1", "a2"]  # a3 is no agent of the run: its rows count for nobody
    transfers = [(f"t{j}", k, f"agent:{d}" if d != "treasury" else d, f"agent:{c}" if c != "treasury" else c, m)
                 for j, (k, d, c, m) in enumerate(rows)]
    want = np.zeros(3, dtype=np.int64)
    for _, kind, debit, credit, amount in transfers:
        for account, sign in ((debit, 1), (credit, -1)):
            if kind == "clarke" and account.removeprefix("agent:") in ids:
                want[ids.index(account.removeprefix("agent:"))] += sign * amount
    assert (signed_minor_from_columns(ids, tuple(zip(*transfers)), "clarke") == want).all()
    positions = {f"agent:{a}": i for i, a in enumerate(ids)}
    got = agent_payments(tuple(zip(*transfers)), positions, "clarke")
    assert all(want[i] == v for i, v in got.items()) and all(want[i] == 0 for i in set(range(3)) - set(got))


def test_head_revision_is_alembics_head():
    assert HEAD_REVISION == alembic_head()


line_name = name.filter(lambda s: "\n" not in s)  # what a clean round's fields are (the audit checks)


@settings(max_examples=150, deadline=None)
@given(prev=st.text(max_size=64), index=st.integers(0, 10**6),
       events=st.lists(st.tuples(st.integers(0, 99), name, st.none() | name, st.text(max_size=30)), max_size=4,
                       unique_by=lambda e: e[0]),
       transfers=st.lists(st.tuples(line_name, line_name, line_name, line_name, st.integers(-2**63, 2**63 - 1)),
                          max_size=20),
       resolutions=st.lists(st.tuples(name, st.sampled_from(["posted", "voided"]), st.integers(0, 10**6)), max_size=3),
       arrays=st.lists(st.tuples(name, st.just("<f8"), st.just("2"), st.binary(max_size=16)), max_size=3,
                       unique_by=lambda a: a[0]),
       want_root=st.booleans())
def test_round_digests_are_the_documented_hash_and_root(prev, index, events, transfers, resolutions, arrays, want_root):
    """What the audit's helper computes from a request (columns joined, amounts as bytes)
    is the documented round hash and the RFC 6962 root of the transfers' leaves."""
    rows = sorted(transfers)
    got = round_digests(digest_request(prev, index, events, arrays, resolutions, tuple(zip(*rows)), want_root, "run"),
                        frozenset())
    assert got.round_hash == documented_round_hash(prev, index, events, rows, [], resolutions, arrays)
    assert got.root == (merkle_root([leaf_hash(transfer_line(t)) for t in rows]) if want_root else None)
    assert got.clean == (not rows)  # no account is the run's: only a round without transfers is clean
    assert got.paid is None  # no payer asked for


def clean_rows(run_id: str, index: int, n: int) -> list[tuple]:
    return sorted((f"{run_id}:{index}:pay:agent:a{j}:treasury", "pay", f"agent:a{j}", "treasury", j + 1)
                  for j in range(n))


ACCOUNTS = frozenset(["treasury", *(f"agent:a{j}" for j in range(100))])


@pytest.mark.parametrize("tamper, clean", [
    (lambda rows: rows, True),
    (lambda rows: rows[:1] + [(rows[1][0], "pay", rows[1][2], rows[1][2], 5)] + rows[2:], False),  # debit = credit
    (lambda rows: rows[:1] + [(rows[1][0], "pay", "agent:zed", "treasury", 5)] + rows[2:], False),  # no such account
    (lambda rows: rows[:1] + [(rows[1][0] + "x", *rows[1][1:])] + rows[2:], False),  # id of other fields
    (lambda rows: rows[:1] + [rows[1][:4] + (0,)] + rows[2:], False),  # amount not positive
    (lambda rows: rows[:2] + rows[1:], False),  # an id twice
])
def test_the_helpers_clean_check_is_the_audits(tamper, clean):
    rows = tamper(clean_rows("run", 3, 6))
    req = digest_request("p", 3, [], [], [], tuple(zip(*rows)), False, "run")
    assert round_digests(req, ACCOUNTS).clean is clean is transfers_clean("run", 3, tuple(zip(*rows)), ACCOUNTS)


def test_round_digests_refuse_columns_that_do_not_split_back():
    rows = [("run:0:pay:a\nb:treasury", "pay", "a\nb", "treasury", 5)]
    assert round_digests(digest_request("p", 0, [], [], [], tuple(zip(*rows)), True, "run"), ACCOUNTS) is None


def test_round_digests_of_rows_read_from_the_ledger_are_those_of_the_columns_sent():
    """A request that gives only the number of transfers: the helper reads them (in no order),
    sorts them by id and digests them as the columns would be; rows not as many as the
    request says, or a ledger that cannot be read, leave the round to the caller (``None``)."""
    rows = clean_rows("run", 4, 30)
    payer = {f"agent:a{j}": j for j in range(40)}
    sent = round_digests(digest_request("p", 4, [(0, "k", None, "{}")], [], [], tuple(zip(*rows)), True, "run"),
                         ACCOUNTS, payer, "pay")
    shuffled = rows[::-1]
    read = round_digests(digest_request("p", 4, [(0, "k", None, "{}")], [], [], 30, True, "run"), ACCOUNTS, payer,
                         "pay", read=lambda run_id, index: list(shuffled) if (run_id, index) == ("run", 4) else [])
    assert read == sent and sent.clean
    assert dict(zip(*sent.paid)) == {j: j + 1 for j in range(30)}  # each agent a_j paid j + 1 to the treasury
    assert round_digests(digest_request("p", 4, [], [], [], 31, True, "run"), ACCOUNTS, payer, "pay",
                         read=lambda run_id, index: list(rows)) is None
    for broken in (None, lambda run_id, index: 1 / 0):
        assert round_digests(digest_request("p", 4, [], [], [], 30, True, "run"), ACCOUNTS, read=broken) is None
    text_amount = rows[:3] + [rows[3][:4] + ("4",)] + rows[4:]  # a tampered row SQLite would return so
    assert round_digests(digest_request("p", 4, [], [], [], 30, True, "run"), ACCOUNTS,
                         read=lambda run_id, index: list(text_amount)) is None


def test_digest_worker_reads_a_sqlite_ledger_and_sums_payments(tmp_path):
    """The helper opened on a ledger (``Ledger.row_source``) answers a request that gives only
    the number of transfers as ``round_digests`` of the same rows sent as columns, with the
    agents' payments; a ledger it cannot open leaves those rounds to the caller."""
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    run_id = ledger.create_run(name="t", game="team", mechanism="dpm", seed=0, scenario={"x": 1},
                               agent_ids=["a", "b", "c"])
    for i in range(3):
        ledger.write_round(run_id, i, [], [TransferRow("clarke", f"agent:{a}", "treasury", 10 * i + j + 1)
                                           for j, a in enumerate("abc"[:i + 1])])
    accounts = frozenset(name for name, _ in ledger.accounts(run_id))
    payer = (["agent:a", "agent:b", "agent:c"], "clarke")
    records = ledger.read_rounds(run_id)
    source = ledger.row_source()
    assert source is not None and source[0] == "sqlite3" and "mode=ro" in source[1][0]
    worker = DigestWorker(accounts, payer, source)
    try:
        for r in records:
            got = worker.result(worker.submit(digest_request(r.prev_hash, r.index, r.events, [], [],
                                                             len(r.transfers), True, run_id)))
            want = round_digests(digest_request(r.prev_hash, r.index, r.events, [], [], r.columns(), True, run_id),
                                 accounts, {a: j for j, a in enumerate(payer[0])}, "clarke")
            assert got == want and got.round_hash == r.hash and got.clean
            assert dict(zip(*got.paid)) == {j: 10 * r.index + j + 1 for j in range(r.index + 1)}
    finally:
        worker.close()
    gone = DigestWorker(accounts, payer, ("sqlite3", [f"file:{tmp_path / 'nothing.db'}?mode=ro"], {"uri": True},
                                          source[3], None))
    try:
        assert gone.result(gone.submit(digest_request("p", 0, [], [], [], 1, True, run_id))) is None
    finally:
        gone.close()
    ledger.dispose()


def test_digest_worker_answers_in_order_as_round_digests_does():
    reqs = [digest_request("p", i, [(0, "k", None, "{}")], [("a.x", "<f8", "[2]", bytes(16))], [],
                           tuple(zip(*clean_rows("run", i, i * 13))), bool(i % 2), "run") for i in range(7)]
    worker = DigestWorker(ACCOUNTS)
    try:
        tickets = [worker.submit(q) for q in reqs]
        with pytest.raises(ValueError, match="out of order"):
            worker.result(tickets[1])
        for t, q in zip(tickets, reqs):
            want = round_digests(q, ACCOUNTS)
            assert worker.result(t) == want and want.clean
        bad = [("run:0:pay:a\nb:treasury", "pay", "a\nb", "treasury", 5)]
        assert worker.result(worker.submit(digest_request("p", 0, [], [], [], tuple(zip(*bad)), True, "run"))) is None
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_digest_worker_backlog_reads_replies_without_redeeming_them():
    """``backlog`` counts the requests not yet answered (reading the answers that came, without
    waiting); the answers read are still redeemed in order, unchanged."""
    reqs = [digest_request("p", i, [], [], [], tuple(zip(*clean_rows("run", i, 50))), True, "run") for i in range(5)]
    worker = DigestWorker(ACCOUNTS)
    try:
        tickets = [worker.submit(q) for q in reqs]
        assert 0 <= worker.backlog() <= 5
        deadline = time.monotonic() + 30
        while worker.backlog() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.backlog() == 0 and len(worker.done) == 5 and not worker.replies
        for t, q in zip(tickets, reqs):
            assert worker.result(t) == round_digests(q, ACCOUNTS)
        assert worker.backlog() == 0 and not worker.done
    finally:
        worker.close()


def test_digest_worker_never_deadlocks_on_unredeemed_replies():
    """More unredeemed replies than the helper's output pipe holds: while this side waits to
    write, it reads them, so the helper never blocks on its output."""
    reqs = [digest_request("p", i, [], [], [], tuple(zip(*clean_rows("run", i, 2))), False, "run")
            for i in range(20_000)]  # 1.9 MB of replies, 6 MB of requests: more than either pipe holds
    worker = DigestWorker(ACCOUNTS)
    worker.MAX_QUEUED = 0  # every submit waits until its request is written
    try:
        tickets = [worker.submit(q) for q in reqs]
        assert [worker.result(t)[0] for t in tickets] == [round_digests(q, ACCOUNTS)[0] for q in reqs]
    finally:
        worker.close()


def test_digest_worker_that_died_raises_oserror():
    worker = DigestWorker(ACCOUNTS)
    worker.proc.kill()
    worker.proc.wait()
    with pytest.raises(OSError):
        worker.result(worker.submit(digest_request("p", 0, [], [], [], (), True, "run")))
    worker.close()


def test_digest_worker_imports_no_database_stack():
    """The helper runs isolated and imports this package's hashing modules only: a fast start."""
    code = ("import sys; sys.path.insert(0, %r); import mbiagents.ledger.digests; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'sqlalchemy', 'jax')))")
    root = str(Path(digests_module.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-I", "-c", code % root], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_digest_worker_closed_mid_request_exits_cleanly():
    """An audit that stops (an error, Ctrl-C) closes the helper with a request half sent:
    the helper ends quietly (exit 0), not with a traceback on the user's terminal."""
    rows = clean_rows("run", 0, 100_000)  # ~8 MB of columns: more than the pipe holds
    worker = DigestWorker(frozenset())
    worker.submit(digest_request("p", 0, [], [], [], tuple(zip(*rows)), True, "run"))
    assert worker.queued > 0  # part of it still waits here
    worker.close()
    assert worker.proc.returncode == 0
