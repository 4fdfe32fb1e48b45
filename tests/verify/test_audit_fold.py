"""The audit is an explicit fold: ``audit_round(a, record)`` depends on its arguments only
(no state hidden in the market), so replaying any round from its audit state gives the
same recomputation, in any order, on a fresh or a used market."""

from __future__ import annotations

import numpy as np
import pytest

from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market
from mbiagents.runner import run_scenario
from mbiagents.scenario import parse_scenario

from tests.conftest import example_scenarios

SCENARIOS = example_scenarios(policy_only=True)
KEYS = sorted(SCENARIOS)


def _same(r1, r2) -> bool:
    return (np.array_equal(np.asarray(r1.payments), np.asarray(r2.payments))
            and r1.checks == r2.checks and r1.info == r2.info)


@pytest.mark.parametrize("key", KEYS, ids=[":".join(k) for k in KEYS])
def test_audit_round_is_a_function_of_its_arguments(key, sqlite_url):
    data = SCENARIOS[key]
    scenario = parse_scenario({**data, "scenario": {**data["scenario"], "rounds": 4}}, ":".join(key))
    run_id = run_scenario(scenario, ledger_url=sqlite_url, checkpoint=False).run_id
    ledger = open_ledger(sqlite_url)
    rounds = ledger.read_rounds(run_id)
    ledger.dispose()
    market = build_market(scenario)
    states, recs = [market.audit_init()], []
    for r in rounds:
        a, rec = market.audit_round(states[-1], r)
        states.append(a)
        recs.append(rec)
    assert all(ok for rec in recs for ok, _ in rec.checks.values())
    # backwards, on the same (used) market and on a fresh one: the same recomputations
    fresh = build_market(scenario)
    for i in reversed(range(len(rounds))):
        assert _same(market.audit_round(states[i], rounds[i])[1], recs[i])
        assert _same(fresh.audit_round(states[i], rounds[i])[1], recs[i])
