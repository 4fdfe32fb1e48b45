"""The round loop is a LangGraph graph; a round is one ledger transaction."""

import numpy as np

from mbiagents.graph import build_graph
from mbiagents.ledger.schema import open_ledger
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario
from mechanisms import dpm
from mechanisms.games import team

from tests.conftest import EXAMPLES


def test_graph_edges_are_the_round():
    g = build_graph().get_graph()
    edges = {(e.source, e.target) for e in g.edges}
    assert {("__start__", "elicit"), ("elicit", "mechanism"), ("mechanism", "act"), ("act", "settle"),
            ("settle", "elicit"), ("settle", "__end__")} <= edges


def test_each_round_settles_once_and_actions_follow_gradient_play(sqlite_url):
    sc = load_scenario(EXAMPLES / "shared_capacity.toml")
    seen = []
    res = run_scenario(sc, ledger_url=sqlite_url, rounds=5, on_round=lambda i, m: seen.append(i))
    assert seen == [0, 1, 2, 3, 4] and res.rounds == 5
    rounds = open_ledger(sqlite_url).read_rounds(res.run_id)
    assert [r.index for r in rounds] == list(range(5))
    # replay the DPM independently: x^{t+1} = max(0, x^t + eta * G(x^t))
    types = team.TeamTypes(np.array([4.0, 3.0, 2.5, 1.8]), np.array([1.0, 0.5, 2.0, 1.0]))
    eta = np.asarray(dpm.default_steps(types, 0.5))
    x = np.zeros(4)
    for r in rounds:
        g = types.a - types.b * x - 0.5 * x.sum()
        x = np.maximum(0.0, x + eta * g)
        np.testing.assert_allclose(r.payload("actions")["x"], x, atol=1e-12)
    assert len(rounds[0].transfers) == 4  # one Clarke payment per agent
