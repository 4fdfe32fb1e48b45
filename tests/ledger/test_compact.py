"""Compact ledger (migration 0005_compact): array records, payment batches, netted
settlements, disk per agent-round."""

import sqlite3

import numpy as np
import pytest
from sqlalchemy import text

from mbiagents.errors import LedgerError
from mbiagents.ledger.payments import signed_minor_from_transfers
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import EventRow, PaymentBatch, TransferRow, round_hash
from mbiagents.runner import run_scenario
from mbiagents.scenario import parse_scenario
from mbiagents.verify.audit import audit_run

from tests.conftest import drop_append_only_triggers


@pytest.fixture(params=["sqlite", "postgres"])
def url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def team(n: int, rounds: int, k: int = 1):
    rng = np.random.default_rng(3)
    agents = [{"id": f"a{i}", "value": float(v), "curvature": float(c), "step": 1e-3}
              for i, (v, c) in enumerate(zip(rng.uniform(1, 5, n), rng.uniform(0.5, 2, n)))]
    return parse_scenario({"scenario": {"name": "compact", "game": "team", "mechanism": "dpm", "rounds": rounds},
                           "game": {"congestion": 0.5, "settlement_interval": k}, "agents": agents})


def test_payment_batch_writes_the_rows_of_one_transfer_per_agent():
    rng = np.random.default_rng(0)
    ids = [f"a{i}" if i % 3 else f"b{i}" for i in range(200)]
    minor = rng.integers(-5, 6, len(ids))
    rows = PaymentBatch("clarke", ids, minor).id_rows("r:1:")
    expected = []
    for a, m in zip(ids, minor.tolist()):
        if m > 0:
            expected.append((f"r:1:clarke:agent:{a}:treasury", "clarke", f"agent:{a}", "treasury", m))
        elif m < 0:
            expected.append((f"r:1:clarke:treasury:agent:{a}", "clarke", "treasury", f"agent:{a}", -m))
    assert rows == sorted(expected)  # in id order: what the round hash covers
    assert (signed_minor_from_transfers(ids, rows, "clarke") == minor).all()


def test_arrays_round_trip_bit_exact_and_are_hashed(url):
    ledger = open_ledger(url)
    run = ledger.create_run(name="t", game="team", mechanism="dpm", seed=0, scenario={}, agent_ids=["a", "b"])
    x = np.array([0.1, 1 / 3])
    ledger.write_round(run, 0, [EventRow("actions", {"x": x, "note": "n"})], [])
    (r,) = ledger.read_rounds(run)
    assert r.payload("actions")["note"] == "n"
    assert r.payload("actions")["x"].tobytes() == x.tobytes()
    assert r.hash == round_hash(r.prev_hash, 0, r.events, r.transfers, arrays=r.arrays)
    assert round_hash(r.prev_hash, 0, r.events, r.transfers, arrays=[]) != r.hash  # the array is covered
    again = ledger.write_round(run, 0, [EventRow("actions", {"x": x, "note": "n"})], [])
    assert again.duplicate
    with pytest.raises(LedgerError, match="different content"):
        ledger.write_round(run, 0, [EventRow("actions", {"x": x + np.array([0.0, 1e-12]), "note": "n"})], [])
    with pytest.raises(ValueError, match="array records"):
        ledger.write_round(run, 1, [EventRow("llm", {"x": x}, agent="a")], [])


def test_unknown_account_is_refused_without_foreign_keys(url):
    ledger = open_ledger(url)
    run = ledger.create_run(name="t", game="team", mechanism="dpm", seed=0, scenario={}, agent_ids=["a"])
    with pytest.raises(LedgerError, match="'agent:zed', which is not an account of the run"):
        ledger.write_round(run, 0, [], [TransferRow("k", "agent:zed", "treasury", 1)])
    with pytest.raises(LedgerError, match="not an account"):
        ledger.write_round(run, 0, [], [PaymentBatch("k", ["a", "zed"], np.array([1, 1]))])
    assert ledger.read_rounds(run) == []


def test_netted_settlement_audits_and_catches_a_changed_settlement(url, tmp_path):
    res = run_scenario(team(5, 7, k=3), ledger_url=url, checkpoint=False)
    ledger = open_ledger(url)
    rounds = ledger.read_rounds(res.run_id)
    assert [r.index for r in rounds if r.transfers] == [2, 5, 6]  # every 3 rounds and the last
    paid = sum(np.rint(r.payload("payments")["t"] * 1e6).astype(np.int64) for r in rounds)
    assert (signed_minor_from_transfers([f"a{i}" for i in range(5)], [t for r in rounds for t in r.transfers],
                                        "clarke") == paid).all()
    report = audit_run(ledger, res.run_id)
    assert report.ok, report.as_json()
    drop_append_only_triggers(ledger.engine)
    with ledger.engine.begin() as conn:
        conn.execute(text("update transfers set amount = amount + 1 where round_index = 5 and id = "
                          "(select min(id) from transfers where round_index = 5)"))
    checks = {c.name: c for c in audit_run(ledger, res.run_id).checks}
    assert not checks["hash_chain"].ok and checks["hash_chain"].detail.startswith("round 5")
    assert not checks["payments_recompute"].ok and "rounds 3..5" in checks["payments_recompute"].detail


def test_policy_population_costs_at_most_64_bytes_per_agent_round(tmp_path):
    """1,000 agents, netted every 10 rounds: marginal SQLite bytes per agent-round."""
    sizes = []
    for r in (10, 40):
        path = tmp_path / f"l{r}.db"
        run_scenario(team(1000, r, k=10), ledger_url=f"sqlite:///{path}", checkpoint=False)
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(path.stat().st_size)
    assert (sizes[1] - sizes[0]) / (1000 * 30) <= 64
