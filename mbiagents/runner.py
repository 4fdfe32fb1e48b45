"""Run a validated scenario: open the ledger, create the run, drive the graph, summarise.

``resume_run`` continues a crashed run (same run id) from its LangGraph checkpoint. The
checkpointer writes with ``durability="async"`` (a step's checkpoint is saved while the
next step runs), so after a crash the newest checkpoint may be a step behind the ledger;
re-running those steps rewrites rounds the ledger already holds, which the idempotent
write path verifies (same hash) and skips. The result is the ledger an uninterrupted
run would have written.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

from mbiagents.aio import run_sync
from mbiagents.checkpoint import open_checkpointer
from mbiagents.errors import LedgerError, MbiError
from mbiagents.graph import NODES_PER_ROUND, RunContext, build_graph
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.signing import RunSigner
from mbiagents.ledger.store import Ledger
from mbiagents.markets import Market, build_market, market_of
from mbiagents.markets.base import ledger_paid
from mbiagents.scenario import ScenarioBase

OnRound = Callable[[int, dict[str, float]], None]
DURABILITY = "async"


@dataclass
class RunResult:
    run_id: str
    rounds: int
    converged: bool
    summary: dict[str, Any]
    ledger_url: str
    resumed: bool = False
    columns: tuple[str, ...] = ()  # per-agent summary fields the table shows (the market's)
    head: str = ""  # the last round's hash: note it (or keep a --witness file) to catch a later truncation

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "rounds": self.rounds, "converged": self.converged,
                "ledger": self.ledger_url, "resumed": self.resumed, "head": self.head,
                **self.summary}


def run_scenario(
    scenario: ScenarioBase,
    *,
    ledger_url: str | None = None,
    rounds: int | None = None,
    on_round: OnRound | None = None,
    checkpoint: bool = True,
    llm: str | None = None,
    witness: str | None = None,
) -> RunResult:
    """Run ``scenario`` for up to ``rounds`` rounds (default: the scenario's) into the ledger.

    ``llm`` is the ``--llm`` backend (``local``, ``openai`` or a URL) of the LLM agents. A
    run with LLM agents keeps no checkpoint: a model's answers cannot be replayed, so such
    a run cannot be resumed (its ledger still records every answer).
    """
    market = build_market(scenario)
    if getattr(market, "python_only", False):  # its agents are the user's own callables
        raise MbiError(f"game {scenario.scenario.game!r} runs from Python: mbiagents.TaskMarket.from_toml(path, "
                       "agents={id: your agent}).run(...) (see examples/team_python.py)")
    if rounds and rounds != scenario.scenario.rounds:
        # record the limit so that --resume without a checkpoint honours it; a market that
        # plans by its horizon T also gets T overridden, so that the audit rebuilds it
        update = {"round_limit": rounds, **({"rounds": rounds} if market.schedules_by_horizon else {})}
        scenario = scenario.model_copy(update={"scenario": scenario.scenario.model_copy(update=update)})
        market = build_market(scenario)
    llm_settings = _llm_settings(scenario, llm) if market.llm_agent_ids else None
    signer = RunSigner.from_environment(witness)  # before the ledger: a bad key writes nothing
    ledger = open_ledger(ledger_url)
    ledger.signer = signer
    meta = scenario.scenario
    run_id = ledger.create_run(name=meta.name, game=meta.game, mechanism=meta.mechanism, seed=meta.seed,
                               scenario=scenario.model_dump(mode="json"), agent_ids=market.agent_ids)
    state = initial_state(market, rounds or meta.rounds)
    return _drive(market, ledger, run_id, state, on_round,
                  checkpoint and llm_settings is None and market.checkpointable, llm_settings=llm_settings)


def resume_run(run_id: str, *, ledger_url: str | None = None, on_round: OnRound | None = None,
               witness: str | None = None) -> RunResult:
    """Continue the crashed run ``run_id`` from its newest checkpoint, under the same run id.

    Raises ``LedgerError`` for an unknown or already completed run.
    """
    signer = RunSigner.from_environment(witness)
    ledger = open_ledger(ledger_url, create=False)
    run = ledger.get_run(run_id)
    if run.status == "completed":
        ledger.dispose()
        raise LedgerError(f"run {run_id} already completed: nothing to resume")
    if run.public_key != signer.public_key:  # a run is signed by one key from start to end, or not at all
        ledger.dispose()
        raise LedgerError(f"run {run_id} was started {'signed by key ' + run.public_key[:16] if run.public_key else 'unsigned'}; "
                          f"the signing key now configured is {signer.public_key[:16] if signer.public_key else 'none'}: "
                          f"resume it with the key it was started with")
    ledger.signer = signer
    market = market_of(run)
    if market.llm_agent_ids:
        ledger.dispose()
        raise LedgerError(f"run {run_id} has LLM agents, whose answers cannot be replayed: it cannot be resumed")
    if not market.checkpointable:
        ledger.dispose()
        raise LedgerError(f"run {run_id} ({run.game}, {run.mechanism}) keeps no checkpoints: it cannot be resumed")
    meta = market.scenario.scenario
    state = initial_state(market, meta.round_limit or meta.rounds)
    return _drive(market, ledger, run_id, state, on_round, True, resume=True)


def initial_state(market: Market, max_rounds: int) -> dict[str, Any]:
    """The loop state before round 0: the loop's keys and the market's ``init_state()``."""
    return {"round": 0, "max_rounds": max_rounds, "converged": False, "market": market.init_state(),
            "llm_agents": market.llm_agent_ids, "llm_usage": {}}


def summarise(market: Market, ledger: Ledger, run_id: str, final: dict[str, Any]) -> dict[str, Any]:
    """The market's summary of the final state, its money read from the ledger's balances,
    with each LLM agent's usage."""
    summary = market.summary(final, ledger_paid(market.agent_ids, ledger.balances(run_id)))
    for aid, usage in (final.get("llm_usage") or {}).items():
        summary["agents"][aid]["llm"] = usage
    return summary


def _drive(market: Market, ledger: Ledger, run_id: str, state: dict[str, Any], on_round: OnRound | None,
           checkpoint: bool, resume: bool = False, llm_settings: Any = None) -> RunResult:
    ctx = RunContext(market=market, ledger=ledger, run_id=run_id, on_round=on_round or (lambda i, m: None))
    try:
        with open_checkpointer(ledger) if checkpoint else nullcontext() as saver:
            graph = build_graph(saver)
            config = {"configurable": {"thread_id": run_id}}
            if resume and saver is not None and graph.get_state(config).values:
                state = None  # continue from the newest checkpoint
            else:
                resume = False
            max_rounds = graph.get_state(config).values["max_rounds"] if state is None else state["max_rounds"]
            config["recursion_limit"] = NODES_PER_ROUND * max_rounds + 10
            durability = {"durability": DURABILITY} if saver is not None else {}
            if llm_settings is None:
                final = graph.invoke(state, context=ctx, config=config, **durability)
            else:
                final = run_sync(lambda: _invoke_with_llm(graph, state, ctx, config, llm_settings))
    except BaseException:
        ledger.finish_run(run_id, "failed")
        raise
    ledger.finish_run(run_id, "completed")
    result = RunResult(run_id, final["round"], bool(final["converged"]), summarise(market, ledger, run_id, final),
                       ledger.url, resume, market.summary_columns, head=str(final.get("last_hash", "")))
    ledger.dispose()
    return result



def _llm_settings(scenario: ScenarioBase, cli: str | None):
    """The run's LLM settings, checked before anything is written: the backend must be
    usable (the local extra installed; an API key for OpenAI)."""
    from mbiagents.agents.local_server import local_backend_available
    from mbiagents.llm_settings import resolve_llm_settings

    try:
        settings = resolve_llm_settings(scenario.llm, cli=cli)
    except ValueError as exc:
        raise MbiError(f"--llm / [llm]: {str(exc).splitlines()[0]}") from None
    if settings.backend == "local" and settings.base_url is None and not local_backend_available():
        raise MbiError("the local LLM backend needs the 'local' extra: pip install -e '.[local]' "
                       "(or pass --llm openai / --llm http://host:port/v1)")
    if settings.backend == "openai" and settings.base_url is None and settings.api_key() is None:
        raise MbiError(f"the openai LLM backend needs an API key in ${settings.api_key_env}")
    from mbiagents.agents.prompts import check_templates

    check_templates(settings.prompts_dir)  # a broken template fails here, before anything is written
    return settings


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
