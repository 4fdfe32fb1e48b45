"""The round loop as a LangGraph ``StateGraph``: elicit -> mechanism -> act -> settle.

The graph is the program: each node is a small function of the state, and whether another
round runs is the conditional edge after ``settle``. Non-state dependencies (the market,
the ledger, the run id, a progress callback) travel in the run's ``RunContext``.

Programmatic agents are one vectorised population node; the mechanism node is one jitted
JAX call for all agents; ``settle`` writes the whole round in one ledger transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from mbiagents.faults import fault_point
from mbiagents.ledger.store import Ledger
from mbiagents.markets.base import Market, llm_events


def merge_llm_answers(old: dict | None, new: dict | None) -> dict:
    """Reducer of the LLM agents' answers: ``None`` clears (a new round), else merge by key."""
    if new is None:
        return {}
    return {**(old or {}), **new}


class RoundState(TypedDict, total=False):
    """Loop state (numpy arrays, numbers and plain containers: checkpointable).

    The loop's own keys, plus two that belong to the market: ``market``, the market's
    state across rounds (its ``init_state()``, then each ``Settlement.state``), and
    ``step``, the record of the round in progress (reports, signals, actions) that
    ``elicit``, ``price`` and ``act`` build and ``settle`` consumes. Each market declares
    both as its own ``TypedDict``.
    """

    round: int
    max_rounds: int
    converged: bool
    last_hash: str
    metrics: dict[str, float]
    market: Any
    step: Any
    llm_agents: list[str]
    llm_answers: Annotated[dict, merge_llm_answers]
    llm_usage: dict[str, dict[str, float]]


@dataclass
class RunContext:
    market: Market
    ledger: Ledger
    run_id: str
    on_round: Callable[[int, dict[str, float]], None] = field(default=lambda i, m: None)
    llm: Any = None  # the run's LLMClient when the team has LLM agents


def elicit(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Programmatic agents report their private information (one vectorised call)."""
    return {"step": runtime.context.market.elicit(state), "llm_answers": None}


class AgentTask(TypedDict):
    agent: str
    state: dict[str, Any]


async def llm_report(task: AgentTask, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One LLM agent's report (one ``Send`` per LLM agent; all run concurrently)."""
    ctx = runtime.context
    answer = await ctx.market.llm_report(ctx.llm, task["agent"], task["state"])
    return {"llm_answers": {f"report:{task['agent']}": answer}}


async def llm_act(task: AgentTask, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One LLM agent's action on its signal (one ``Send`` per LLM agent)."""
    ctx = runtime.context
    answer = await ctx.market.llm_act(ctx.llm, task["agent"], task["state"])
    return {"llm_answers": {f"act:{task['agent']}": answer}}


def _fan_out(node: str, after: str):
    def route(state: RoundState):
        agents = state.get("llm_agents") or []
        if not agents:
            return after
        view = {"round": state["round"], "step": state.get("step"), "market": state.get("market")}
        return [Send(node, {"agent": a, "state": view}) for a in agents]

    route.__name__ = f"fan_out_{node}"
    return route


def mechanism(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The mechanism turns reports (and current actions) into signals or an outcome."""
    step = runtime.context.market.price(state)
    fault_point("mechanism", state["round"])
    return {"step": step}


def act(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Agents act on the mechanism's signals."""
    return {"step": runtime.context.market.act(state)}


def settle(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Payments and the round's record (with the LLM agents' answers) go to the ledger in
    one transaction; the market's ``done`` ends the run."""
    ctx = runtime.context
    s = ctx.market.settle(state)
    llm, usage = llm_events(state.get("llm_answers") or {}, state.get("llm_usage"))
    result = ctx.ledger.write_round(ctx.run_id, state["round"], s.events + llm, s.transfers)
    ctx.on_round(state["round"], s.metrics)
    return {"market": s.state, "metrics": s.metrics, "last_hash": result.hash, "converged": s.done,
            "llm_usage": usage, "round": state["round"] + 1}


def next_round(state: RoundState) -> str:
    if state["converged"] or state["round"] >= state["max_rounds"]:
        return END
    return "elicit"


def build_graph(checkpointer=None):
    """Compile the round loop (optionally with a LangGraph checkpointer).

    ``elicit`` and ``act`` handle the programmatic population in one call each; when the
    team has LLM agents, each of them gets a ``Send`` to ``llm_report`` / ``llm_act`` (async,
    concurrent), and the next node runs once all of them have answered.
    """
    g = StateGraph(RoundState, context_schema=RunContext)
    g.add_node("elicit", elicit)
    g.add_node("llm_report", llm_report)
    g.add_node("mechanism", mechanism)
    g.add_node("act", act)
    g.add_node("llm_act", llm_act)
    g.add_node("settle", settle)
    g.add_edge(START, "elicit")
    g.add_conditional_edges("elicit", _fan_out("llm_report", "mechanism"), ["llm_report", "mechanism"])
    g.add_edge("llm_report", "mechanism")
    g.add_edge("mechanism", "act")
    g.add_conditional_edges("act", _fan_out("llm_act", "settle"), ["llm_act", "settle"])
    g.add_edge("llm_act", "settle")
    g.add_conditional_edges("settle", next_round, ["elicit", END])
    return g.compile(checkpointer=checkpointer)


NODES_PER_ROUND = 6  # supersteps per round, LLM fan-out included
