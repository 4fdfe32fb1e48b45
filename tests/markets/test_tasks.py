"""The task market end to end: payments recomputed independently, misreport, AGV balance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mbiagents.verify.audit import audit_run
from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market
from mbiagents.ledger.payments import signed_minor_from_transfers
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario, parse_scenario

from tests.conftest import EXAMPLES

SMALL = {
    "scenario": {"name": "small", "game": "assignment", "mechanism": "vcg", "rounds": 1},
    "tasks": [{"id": "a", "value": 10.0}, {"id": "b", "value": 8.0}, {"id": "c", "value": 6.0}],
    "agents": [
        {"id": "p", "capacity": 2, "costs": {"a": 5.0, "b": 6.0, "c": 5.0}},
        {"id": "q", "costs": {"a": 6.0, "b": 3.0, "c": 4.0}},
        {"id": "r", "costs": {"a": 9.0, "b": 7.0, "c": 2.0}},
        {"id": "s", "costs": {"b": 3.2, "c": 3.5}},
    ],
}


def brute_force(costs, values, caps, without=None):
    """Best welfare over every task -> agent map (independent of scipy and of mechanisms)."""
    n, m = costs.shape
    best, arg = 0.0, (-1,) * m
    for a in itertools.product(range(-1, n), repeat=m):
        if without is not None and without in a:
            continue
        if any(a.count(i) > caps[i] for i in range(n)):
            continue
        c = [costs[i, j] for j, i in enumerate(a) if i >= 0]
        if not all(np.isfinite(c)):
            continue
        w = sum(values[j] for j, i in enumerate(a) if i >= 0) - sum(c)
        if w > best + 1e-12:
            best, arg = w, a
    return best, arg


def test_vcg_payments_match_brute_force_clarke_pivot(sqlite_url):
    sc = parse_scenario(SMALL)
    res = run_scenario(sc, ledger_url=sqlite_url)
    market = build_market(sc)
    costs, values, caps = market.true_costs(0), market.values(0), [2, 1, 1, 1]
    w, arg = brute_force(costs, values, caps)
    assert res.summary["welfare"] == pytest.approx(w) and res.summary["optimal_welfare"] == pytest.approx(w)
    ids = ["p", "q", "r", "s"]
    assert res.summary["assignment"] == {t: (ids[i] if i >= 0 else None) for t, i in zip("abc", arg)}
    for i, aid in enumerate(ids):
        own = sum(costs[i, j] for j, k in enumerate(arg) if k == i)
        received = own + w - brute_force(costs, values, caps, without=i)[0]
        row = res.summary["agents"][aid]
        assert row["payment"] == pytest.approx(-received, abs=1e-6)  # paid for work: negative payment
        assert row["utility"] == pytest.approx(-own + received, abs=1e-6) and row["utility"] >= -1e-6
    assert audit_run(open_ledger(sqlite_url), res.run_id).ok


def test_vcg_fast_equals_vcg_and_refuses_capacities(sqlite_url):
    unit = {**SMALL, "agents": [{**a, "capacity": 1} for a in SMALL["agents"]]}
    ref = run_scenario(parse_scenario(unit), ledger_url=sqlite_url).summary
    fast_sc = parse_scenario({**unit, "scenario": {**unit["scenario"], "mechanism": "vcg-fast"}})
    fast = run_scenario(fast_sc, ledger_url=sqlite_url).summary
    assert fast["assignment"] == ref["assignment"]
    for aid in ref["agents"]:
        assert fast["agents"][aid]["payment"] == pytest.approx(ref["agents"][aid]["payment"], abs=1e-6)
    with pytest.raises(Exception, match="capacity"):
        parse_scenario({**SMALL, "scenario": {**SMALL["scenario"], "mechanism": "vcg-fast"}})


def test_misreporting_agent_earns_less_than_truthful(sqlite_url):
    sc = load_scenario(EXAMPLES / "task_market.toml")
    liar = run_scenario(sc, ledger_url=sqlite_url).summary["agents"]["dan"]
    honest_specs = [a.model_copy(update={"policy": "truthful", "misreport_factor": None}) if a.id == "dan" else a
                    for a in sc.agents]
    honest = run_scenario(sc.model_copy(update={"agents": honest_specs}), ledger_url=sqlite_url).summary["agents"]["dan"]
    assert liar["utility"] < honest["utility"] - 0.5
    assert liar["utility"] < liar["utility_if_truthful"] - 0.5  # the summary shows it too


def test_agv_balances_exactly_every_round_in_the_ledger(sqlite_url):
    sc = load_scenario(EXAMPLES / "task_market.toml")
    sc = sc.model_copy(update={"scenario": sc.scenario.model_copy(update={"mechanism": "agv"}),
                               "game": sc.game.model_copy(update={"samples": 16})})
    res = run_scenario(sc, ledger_url=sqlite_url, rounds=2)
    ledger = open_ledger(sqlite_url)
    ids = list(res.summary["agents"])
    rounds = ledger.read_rounds(res.run_id)
    assert len(rounds) == 2
    for r in rounds:
        t = signed_minor_from_transfers(ids, r.transfers, "payment")
        assert t.sum() == 0 and np.abs(t).max() > 0
    assert ledger.balances(res.run_id).get("treasury", 0) == 0
    rep = audit_run(ledger, res.run_id)
    assert rep.ok and "budget_balance" in {c.name for c in rep.checks}


def test_a_round_without_tasks_settles_nothing_and_audits(sqlite_url):
    sc = parse_scenario({**SMALL, "scenario": {**SMALL["scenario"], "rounds": 2},
                         "tasks": [{**t, "round": 1} for t in SMALL["tasks"]]})
    res = run_scenario(sc, ledger_url=sqlite_url)
    ledger = open_ledger(sqlite_url)
    first, second = ledger.read_rounds(res.run_id)
    assert first.transfers == [] and second.transfers
    assert audit_run(ledger, res.run_id).ok
