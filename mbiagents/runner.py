"""Run a validated scenario: open the ledger, create the run, drive the graph, summarise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mbiagents.graph import NODES_PER_ROUND, RunContext, build_graph
from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market
from mbiagents.scenario import ScenarioBase


@dataclass
class RunResult:
    run_id: str
    rounds: int
    converged: bool
    summary: dict[str, Any]
    ledger_url: str

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "rounds": self.rounds, "converged": self.converged,
                "ledger": self.ledger_url, **self.summary}


def run_scenario(
    scenario: ScenarioBase,
    *,
    ledger_url: str | None = None,
    rounds: int | None = None,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Run ``scenario`` for up to ``rounds`` rounds (default: the scenario's) into the ledger."""
    market = build_market(scenario)
    max_rounds = rounds or scenario.scenario.rounds
    ledger = open_ledger(ledger_url)
    meta = scenario.scenario
    run_id = ledger.create_run(name=meta.name, game=meta.game, mechanism=meta.mechanism, seed=meta.seed,
                               scenario=scenario.model_dump(mode="json"), agent_ids=market.agent_ids,
                               extra_accounts=market.extra_accounts())
    ctx = RunContext(market=market, ledger=ledger, run_id=run_id, on_round=on_round or (lambda i, m: None))
    graph = build_graph()
    state = {"round": 0, "max_rounds": max_rounds, "converged": False, **market.initial_state()}
    try:
        final = graph.invoke(state, context=ctx,
                             config={"recursion_limit": NODES_PER_ROUND * max_rounds + 10})
    except BaseException:
        ledger.finish_run(run_id, "failed")
        raise
    ledger.finish_run(run_id, "completed")
    result = RunResult(run_id, final["round"], bool(final["converged"]), market.summary(final), ledger.url)
    ledger.dispose()
    return result
