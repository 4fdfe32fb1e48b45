"""Run a validated scenario: open the ledger, create the run, drive the graph, summarise."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from mbiagents.errors import MbiError

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
    llm: str | None = None,
) -> RunResult:
    """Run ``scenario`` for up to ``rounds`` rounds (default: the scenario's) into the ledger.

    ``llm`` is the ``--llm`` backend (``local``, ``openai`` or a URL) for LLM agents.
    """
    if rounds and rounds != scenario.scenario.rounds:  # recorded: a market may schedule by its horizon
        scenario = scenario.model_copy(update={"scenario": scenario.scenario.model_copy(update={"rounds": rounds})})
    market = build_market(scenario)
    llm_settings = _llm_settings(scenario, llm) if market.llm_agent_ids else None
    max_rounds = rounds or scenario.scenario.rounds
    ledger = open_ledger(ledger_url)
    meta = scenario.scenario
    run_id = ledger.create_run(name=meta.name, game=meta.game, mechanism=meta.mechanism, seed=meta.seed,
                               scenario=scenario.model_dump(mode="json"), agent_ids=market.agent_ids,
                               extra_accounts=market.extra_accounts())
    ctx = RunContext(market=market, ledger=ledger, run_id=run_id, on_round=on_round or (lambda i, m: None))
    graph = build_graph()
    state = {"round": 0, "max_rounds": max_rounds, "converged": False, **market.initial_state()}
    config = {"recursion_limit": NODES_PER_ROUND * max_rounds + 10}
    try:
        if llm_settings is None:
            final = graph.invoke(state, context=ctx, config=config)
        else:
            final = asyncio.run(_invoke_with_llm(graph, state, ctx, config, llm_settings))
    except BaseException:
        ledger.finish_run(run_id, "failed")
        raise
    ledger.finish_run(run_id, "completed")
    result = RunResult(run_id, final["round"], bool(final["converged"]), market.summary(final), ledger.url)
    ledger.dispose()
    return result


def _llm_settings(scenario: ScenarioBase, cli: str | None):
    from mbiagents.agents.settings import resolve_llm_settings

    try:
        return resolve_llm_settings(scenario.llm, cli=cli)
    except ValueError as exc:
        raise MbiError(f"--llm / [llm]: {str(exc).splitlines()[0]}") from None


async def _invoke_with_llm(graph, state, ctx: RunContext, config, settings):
    """Run the graph with the run's LLM client open (the local model server, if any, too)."""
    from mbiagents.agents.llm import LLMConfigError
    from mbiagents.agents.local_server import LocalBackendUnavailable, LocalServerError, open_llm

    try:
        async with open_llm(settings) as client:
            ctx.llm = client
            return await graph.ainvoke(state, context=ctx, config=config)
    except (LocalBackendUnavailable, LocalServerError, LLMConfigError) as exc:
        raise MbiError(str(exc).strip().splitlines()[0]) from None
