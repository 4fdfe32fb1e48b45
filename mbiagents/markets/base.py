"""The Market interface between the round loop, the mechanisms and the ledger."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbiagents.ledger.store import TREASURY, EventRow, PaymentBatch, RoundRecord, TransferRow
from mbiagents.scenario import ScenarioBase


@dataclass
class Settlement:
    """What a round leaves in the ledger, plus the figures the loop reports."""

    events: list[EventRow]
    transfers: list[TransferRow | PaymentBatch]
    metrics: dict[str, float] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)  # state keys the settlement changes


@dataclass
class Recomputed:
    """A logged round recomputed from its reports and actions (for audit and replay)."""

    payments: np.ndarray  # float payments, what each agent pays (agent order)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)  # per-round checks that must hold
    info: dict[str, tuple[bool, str]] = field(default_factory=dict)  # properties reported, never failed
    #: the round's logged payment vector, set by a market that nets payments over
    #: ``Market.settlement_interval`` rounds (its transfers settle the sum of several rounds)
    logged_payments: np.ndarray | None = None


def welfare_gap(welfare: float, optimum: float) -> float:
    """Relative shortfall ``(W* - W) / |W*|`` of the summary (the absolute one when ``W* = 0``)."""
    return (optimum - welfare) / abs(optimum) if optimum else optimum - welfare


def llm_events(answers: dict[str, Any], usage: dict[str, dict[str, float]] | None) -> tuple[list[EventRow], dict]:
    """Ledger events of a round's LLM answers and the updated per-agent usage totals.

    ``answers`` maps ``"report:<agent>"`` / ``"act:<agent>"`` to an ``Answer`` or a list of
    them; each answer becomes one event ``llm_<step>`` of its agent (raw text, validation
    errors, tokens, fallback flag). Usage counts calls, tokens, cost and fallbacks.
    """
    usage = {k: dict(v) for k, v in (usage or {}).items()}
    events: list[EventRow] = []
    for key in sorted(answers):
        items = answers[key]
        for ans in items if isinstance(items, list) else [items]:
            events.append(EventRow(f"llm_{ans.step}", ans.model_dump(mode="json"), agent=ans.agent_id))
            u = usage.setdefault(ans.agent_id, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                "cost": 0.0, "fallbacks": 0})
            u["calls"] += len(ans.records)
            u["prompt_tokens"] += ans.prompt_tokens
            u["completion_tokens"] += ans.completion_tokens
            u["cost"] += ans.cost
            u["fallbacks"] += int(ans.used_fallback)
    return events, usage


class Market(ABC):
    """A game + mechanism + agents. Nodes of the round loop call these methods.

    State is a plain dict of numpy arrays and numbers (checkpointable); methods return the
    keys they update.
    """

    game: str
    payment_kind: str = "payment"
    n_actions: int | None = None  # number of discrete actions; None: continuous actions
    #: per-agent summary fields ``mbi run`` shows as table columns (in this order)
    summary_columns: tuple[str, ...] = ("action", "incentive", "payment", "utility", "total_paid")
    #: True when the mechanism's schedule depends on the horizon (``--rounds`` is then stored)
    schedules_by_horizon: bool = False
    #: False when the market keeps state the LangGraph checkpointer cannot serialise (JAX
    #: records under ``extra``): its runs keep no checkpoint and cannot be resumed
    checkpointable: bool = True
    #: rounds whose payments one settlement nets (one transfer per agent per interval)
    settlement_interval: int = 1

    def __init__(self, scenario: ScenarioBase):
        self.scenario = scenario
        self.agent_ids: list[str] = [a.id for a in scenario.agents]

    @property
    def mechanism(self) -> str:
        return self.scenario.scenario.mechanism

    @abstractmethod
    def initial_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def elicit(self, state: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def price(self, state: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def act(self, state: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def settle(self, state: dict[str, Any]) -> Settlement: ...

    def converged(self, state: dict[str, Any]) -> bool:
        return False

    # ---- LLM agents (one Send each; see mbiagents.graph) -------------------------------
    @property
    def llm_agent_ids(self) -> list[str]:
        return [a.id for a in self.scenario.agents if getattr(a, "backend", "policy") == "llm"]

    async def llm_report(self, llm: Any, agent_id: str, view: dict[str, Any]) -> Any:
        raise NotImplementedError(f"game {self.game!r} has no LLM report step")

    async def llm_act(self, llm: Any, agent_id: str, view: dict[str, Any]) -> Any:
        raise NotImplementedError(f"game {self.game!r} has no LLM act step")

    @abstractmethod
    def recompute(self, rounds: list[RoundRecord], index: int) -> Recomputed:
        """Recompute round ``rounds[index]`` from the logged rows of it and earlier rounds."""

    @abstractmethod
    def summary(self, state: dict[str, Any]) -> dict[str, Any]: ...

    def required_events(self, index: int) -> tuple[str, ...]:
        """Event kinds every complete round must hold."""
        return ()

    def extra_accounts(self) -> tuple[str, ...]:
        return ()

    def treasury(self) -> str:
        return TREASURY

    # ---- reports (``mbi report``) ---------------------------------------------------------
    def report_data(self, rounds: list[RoundRecord]) -> dict[str, Any]:
        """Per-round series that ``mbi report`` plots, read from the logged rounds alone.

        Every series has one entry per round of ``rounds`` (``nan`` where a round did not
        log it); a key is left out when the run has no such data, and its section of the
        report is then not drawn. Keys (all optional):

        - ``welfare``, ``optimal_welfare``: ``list[float]`` true welfare after each
          round's actions and the optimum it is measured against;
        - ``actions``, ``signals``: ``{agent: list[float]}``; ``signal_label``: ``str``;
        - ``values``: ``{agent: list[float]}`` each agent's true value of the round's
          outcome (utility = value - payment);
        - ``operator_cost``: ``list[float]`` what the operator bears each round;
        - ``assignment``: ``list[{task: agent | None}]``; ``reported_costs`` and
          ``true_costs``: ``list[{agent: {task: float}}]`` (``true_costs`` where known);
        - ``incentives``: ``{name: list[float]}`` and ``social_cost``: ``list[float]``
          (social-gradient and principal mechanisms).

        This default reads what a market logs under the conventional event names
        (``actions.x``, ``signals.G``, ``outcome.{welfare, optimal_welfare,
        operator_cost, assignment, incentives, social_cost}``, ``reports.costs`` with
        ``tasks.ids``); a market with private types overrides it to add true welfare.
        Payments, budget and LLM usage come from the ledger's transfers and ``llm_*``
        events and are not part of this mapping.
        """
        from mbiagents.markets.report_data import default_report_data

        return default_report_data(self.agent_ids, rounds)
