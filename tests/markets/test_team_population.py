"""A generated team population (``[population]``): the header stores the table, not the
agents; the run equals the same agents listed one by one, and its audit passes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mbiagents.errors import ScenarioError
from mbiagents.ledger.money import MINOR_UNITS
from mbiagents.ledger.payments import signed_minor_from_transfers
from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market, market_of
from mbiagents.runner import run_scenario
from mbiagents.scenario import parse_scenario
from mbiagents.verify.audit import audit_run

POPULATION = {"size": 40, "seed": 7, "value": [1.0, 5.0], "curvature": [0.5, 2.0]}


def _scenario(rounds: int = 6, **extra):
    return parse_scenario({"scenario": {"name": "pop", "game": "team", "mechanism": "dpm", "rounds": rounds,
                                        "tolerance": 1e-300},
                           "game": {"congestion": 0.5, "settlement_interval": 2}, **extra})


def test_population_draws_value_then_curvature_from_its_seed():
    sc = _scenario(population=POPULATION)
    rng = np.random.default_rng(7)
    value, curvature = rng.uniform(1.0, 5.0, 40), rng.uniform(0.5, 2.0, 40)
    got = sc.population.types()
    assert np.array_equal(got[0], value) and np.array_equal(got[1], curvature)
    assert sc.agent_ids() == [f"a{i}" for i in range(40)] and sc.agents == []


def test_population_without_a_seed_is_drawn_from_the_scenario_seed():
    unseeded = {k: v for k, v in POPULATION.items() if k != "seed"}
    drawn = [build_market(parse_scenario({"scenario": {"name": "pop", "game": "team", "mechanism": "dpm",
                                                       "seed": seed}, "game": {"congestion": 0.5},
                                          "population": unseeded})).population.value for seed in (7, 8)]
    assert np.array_equal(drawn[0], np.random.default_rng(7).uniform(1.0, 5.0, 40))
    assert not np.array_equal(drawn[0], drawn[1])


def test_population_run_equals_the_same_agents_listed_and_audits(sqlite_url):
    pop = _scenario(population=POPULATION)
    value, curvature = pop.population.types()
    listed = _scenario(agents=[{"id": f"a{i}", "value": float(v), "curvature": float(c)}
                               for i, (v, c) in enumerate(zip(value, curvature))])
    runs = [run_scenario(sc, ledger_url=sqlite_url, checkpoint=False) for sc in (pop, listed)]
    ledger = open_ledger(sqlite_url)
    recs = [ledger.read_rounds(r.run_id) for r in runs]
    assert len(recs[0]) == len(recs[1]) == 6
    for a, b in zip(*recs):  # the same payment vectors, actions and netted transfers, round by round
        for kind, key in (("payments", "t"), ("actions", "x")):
            assert np.array_equal(a.payload(kind)[key], b.payload(kind)[key])
        assert [t[1:] for t in a.transfers] == [t[1:] for t in b.transfers]
    run = ledger.get_run(runs[0].run_id)
    assert len(run.scenario_json) < 1000 and json.loads(run.scenario_json)["population"]["size"] == 40
    assert market_of(run).agent_ids == pop.agent_ids()  # the audit rebuilds the population from the header
    report = audit_run(ledger, runs[0].run_id)
    assert report.ok, report
    # the summary's money is the ledger's, to the minor unit (independent sum of the transfers)
    paid = np.zeros(40, np.int64)
    for rec in recs[0]:
        paid += signed_minor_from_transfers(pop.agent_ids(), rec.transfers, "clarke")
    shown = np.array([runs[0].summary["agents"][a]["total_paid"] for a in pop.agent_ids()])
    assert np.array_equal(np.rint(shown * MINOR_UNITS).astype(np.int64), paid) and paid.sum() > 0
    assert runs[0].summary["agents"] == runs[1].summary["agents"]
    ledger.dispose()


@pytest.mark.parametrize("extra, message", [
    ({}, "exactly one of them"),
    ({"population": POPULATION, "agents": [{"id": "x", "value": 1.0, "curvature": 1.0}]}, "exactly one of them"),
    ({"population": {**POPULATION, "value": [5.0, 1.0]}}, "range [5.0, 1.0] is empty"),
    ({"population": {**POPULATION, "size": 0}}, "population.size"),
    ({"population": {**POPULATION, "id_prefix": "a:b"}}, "population.id_prefix"),
])
def test_bad_population_is_a_one_line_error(extra, message):
    with pytest.raises(ScenarioError, match=None) as err:
        _scenario(**extra)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_population_runs_under_the_dpm_only():
    with pytest.raises(ScenarioError, match="mechanism 'dpm'"):
        parse_scenario({"scenario": {"name": "pop", "game": "team", "mechanism": "reinforce"},
                        "game": {"congestion": 0.5}, "population": POPULATION})
