"""The round contract, per market: a run stops at the first round meeting its tolerance,
and the money a summary shows is the ledger's to the minor unit."""

from __future__ import annotations

import numpy as np
import pytest

from mbiagents.ledger.money import MINOR_UNITS
from mbiagents.ledger.payments import signed_minor_from_transfers
from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market
from mbiagents.runner import run_scenario
from mbiagents.scenario import REGISTRY, parse_scenario

from tests.conftest import example_scenarios


SCENARIOS = example_scenarios(policy_only=True)
KEYS = sorted(SCENARIOS)
ids = [":".join(k) for k in KEYS]


def _scenario(key, rounds: int | None = None):
    data = SCENARIOS[key]
    if rounds is not None:
        data = {**data, "scenario": {**data["scenario"], "rounds": rounds}}
    return parse_scenario(data, ":".join(key))


@pytest.mark.parametrize("key", KEYS, ids=ids)
def test_summary_money_equals_the_ledger_to_the_minor_unit(key, sqlite_url):
    scenario = _scenario(key, rounds=min(SCENARIOS[key]["scenario"].get("rounds", 100), 40))
    res = run_scenario(scenario, ledger_url=sqlite_url, checkpoint=False)
    market = build_market(scenario)
    ledger = open_ledger(sqlite_url)
    # independently of the ledger's balances: every logged transfer of the run, summed per agent
    paid = np.zeros(len(market.agent_ids), np.int64)
    for rec in ledger.read_rounds(res.run_id):
        paid += signed_minor_from_transfers(market.agent_ids, rec.transfers, market.payment_kind)
    balances = ledger.balances(res.run_id)
    for i, aid in enumerate(market.agent_ids):
        shown = res.summary["agents"][aid]["total_paid"]
        assert round(shown * MINOR_UNITS) == int(paid[i]) == -balances[f"agent:{aid}"], aid
        assert shown == int(paid[i]) / MINOR_UNITS  # the exact float of the settled amount
    ledger.dispose()


def _stopping_figures(key, rounds, market) -> list[bool] | None:
    """Per logged round: did its stopping figure meet the tolerance (``None``: the market
    has no stopping rule and runs to its round limit)?"""
    tol = market.tolerance
    game, mechanism = key
    if mechanism == "dpm":
        return [r.payload("signals")["residual"] <= tol for r in rounds]
    if mechanism == "social-gradient":
        return [r.payload("social_cost")["grad_norm"] <= tol for r in rounds]
    if mechanism == "reinforce":
        from mbiagents.markets.reinforce import TARGET

        return [r.payload("policy")["mean_welfare"] >= TARGET * market.w_star for r in rounds]
    return None


@pytest.mark.parametrize("key", KEYS, ids=ids)
def test_run_stops_at_the_first_round_meeting_its_tolerance(key, sqlite_url):
    rounds_cap = 60 if key[1] in ("two-phase", "tolls") else None  # no stopping rule: a short run suffices
    scenario = _scenario(key, rounds=rounds_cap)
    res = run_scenario(scenario, ledger_url=sqlite_url, checkpoint=False)
    market = build_market(scenario)
    ledger = open_ledger(sqlite_url)
    rounds = ledger.read_rounds(res.run_id)
    ledger.dispose()
    met = _stopping_figures(key, rounds, market)
    assert len(rounds) == res.rounds
    if met is None:
        assert not res.converged and res.rounds == scenario.scenario.rounds
        return
    assert res.converged, f"{key}: did not converge in {res.rounds} rounds"
    assert met.index(True) == res.rounds - 1  # the first round meeting it is the last one run
