"""The round loop as a LangGraph ``StateGraph``: elicit -> mechanism -> act -> settle.

The graph is the program: each node is a small function of the state, and whether another
round runs is the conditional edge after ``settle``. Non-state dependencies (the market,
the ledger, the run id, a progress callback) travel in the run's ``RunContext``.

Programmatic agents are one vectorised population node; the mechanism node is one jitted
JAX call for all agents; ``settle`` writes the whole round in one ledger transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from mbiagents.faults import fault_point
from mbiagents.ledger.store import Ledger
from mbiagents.markets.base import Market


class RoundState(TypedDict, total=False):
    """Loop state (numpy arrays and numbers; market-specific keys ride along)."""

    round: int
    max_rounds: int
    reports: Any
    signals: Any
    residual: float
    actions: Any
    next_actions: Any
    payments: Any
    logged_reports: Any
    paid_total: Any
    operator_cost: float
    outcome: Any
    metrics: dict[str, float]
    converged: bool
    last_hash: str
    extra: dict[str, Any]


@dataclass
class RunContext:
    market: Market
    ledger: Ledger
    run_id: str
    on_round: Callable[[int, dict[str, float]], None] = field(default=lambda i, m: None)


def elicit(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Agents report their private information."""
    return runtime.context.market.elicit(state)


def mechanism(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The mechanism turns reports (and current actions) into signals or an outcome."""
    out = runtime.context.market.price(state)
    fault_point("mechanism", state["round"])
    return out


def act(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Agents act on the mechanism's signals."""
    return runtime.context.market.act(state)


def settle(state: RoundState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Payments and the round's record go to the ledger in one transaction."""
    ctx = runtime.context
    s = ctx.market.settle(state)
    result = ctx.ledger.write_round(ctx.run_id, state["round"], s.events, s.transfers)
    ctx.on_round(state["round"], s.metrics)
    converged = ctx.market.converged(state)
    return {**s.updates, "metrics": s.metrics, "last_hash": result.hash, "converged": converged,
            "round": state["round"] + 1}


def next_round(state: RoundState) -> str:
    if state["converged"] or state["round"] >= state["max_rounds"]:
        return END
    return "elicit"


def build_graph(checkpointer=None):
    """Compile the round loop (optionally with a LangGraph checkpointer)."""
    g = StateGraph(RoundState, context_schema=RunContext)
    g.add_node("elicit", elicit)
    g.add_node("mechanism", mechanism)
    g.add_node("act", act)
    g.add_node("settle", settle)
    g.add_edge(START, "elicit")
    g.add_edge("elicit", "mechanism")
    g.add_edge("mechanism", "act")
    g.add_edge("act", "settle")
    g.add_conditional_edges("settle", next_round, ["elicit", END])
    return g.compile(checkpointer=checkpointer)


NODES_PER_ROUND = 4
