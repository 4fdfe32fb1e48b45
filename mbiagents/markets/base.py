"""The contract between the round loop, the mechanisms and the ledger: small protocols.

A market is four small protocols over explicit state (the shape of optax: records of
functions, state passed in and returned, never hidden in the object):

- ``RoundSteps`` (the loop, ``mbiagents.graph``): ``init_state() -> S``;
  ``elicit(state) -> step``, ``price(state) -> step``, ``act(state) -> step`` build the
  round's record ``state["step"]``; ``settle(state) -> Settlement`` returns the events,
  the transfers, the market's next state ``S`` and ``done`` (converged), decided where
  the convergence figure is computed;
- ``AuditSteps`` (``mbiagents.verify``): ``audit_init() -> A`` and
  ``audit_round(a, record) -> (a, Recomputed)`` fold over the logged rounds; whatever a
  round's recomputation needs from earlier rounds travels in ``A``;
- ``Presentation`` (``mbi run``, ``mbi report``): ``summary(state, paid)`` with the money
  each agent paid as the ledger holds it, and ``report_data(rounds)``;
- ``LLMSteps`` (one LangGraph ``Send`` per LLM agent): ``llm_report``, ``llm_act``.

``S`` and the step record are each market's own ``TypedDict`` of numpy arrays and
numbers, so the LangGraph checkpointer stores them (a market whose state holds JAX
records says ``checkpointable = False``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from mbiagents.ledger.money import from_minor_units
from mbiagents.ledger.store import EventRow, PaymentBatch, RoundRecord, TransferRow, agent_account
from mbiagents.scenario import ScenarioBase

S = TypeVar("S")  # a market's own state (a TypedDict)
A = TypeVar("A")  # a market's audit state


@dataclass
class Settlement(Generic[S]):
    """What a round leaves in the ledger, the market's next state and whether it is done."""

    events: list[EventRow]
    transfers: list[TransferRow | PaymentBatch]
    state: S
    done: bool = False  # the run converged with this round (its stopping figure met the tolerance)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Recomputed:
    """A logged round recomputed from its reports and actions (for audit and replay)."""

    payments: np.ndarray  # float payments, what each agent pays (agent order)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)  # per-round checks that must hold
    info: dict[str, tuple[bool, str]] = field(default_factory=dict)  # properties reported, never failed
    #: the round's logged payment vector, set by a market that nets payments over
    #: ``Market.settlement_interval`` rounds (its transfers settle the sum of several rounds)
    logged_payments: np.ndarray | None = None


def ledger_paid(agent_ids: list[str], balances: dict[str, int]) -> np.ndarray:
    """What each agent paid over the run, in units, from the ledger's balances (the one
    source of truth for money: ``-balance`` of its account, exact to the minor unit)."""
    minor = np.fromiter(map(balances.get, map(agent_account, agent_ids), repeat(0)), np.int64, len(agent_ids))
    return np.asarray(from_minor_units(-minor), np.float64)


def agent_rows(agent_ids: list[str], columns: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{agent id: {field: float}}`` from per-agent columns, built column-wise (one
    ``tolist`` per field, no NumPy scalar per agent and field)."""
    keys = tuple(columns)
    values = [np.asarray(v, np.float64).tolist() for v in columns.values()]
    return {aid: dict(zip(keys, row)) for aid, *row in zip(agent_ids, *values)}


def converged_below(residual: float, tolerance: float) -> bool:
    """The stopping rule of a residual: done once it is at most the scenario's tolerance."""
    return bool(residual <= tolerance)


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


class RoundSteps(Protocol[S]):
    """The round as the loop runs it: elicit -> mechanism (``price``) -> act -> settle."""

    def init_state(self) -> S: ...
    def elicit(self, state: dict[str, Any]) -> dict[str, Any]: ...
    def price(self, state: dict[str, Any]) -> dict[str, Any]: ...
    def act(self, state: dict[str, Any]) -> dict[str, Any]: ...
    def settle(self, state: dict[str, Any]) -> Settlement[S]: ...


class AuditSteps(Protocol[A]):
    """Recomputing logged rounds in order: ``a = audit_init()``, then per round
    ``a, recomputed = audit_round(a, record)``. A market may also recompute up to
    ``audit_window`` consecutive rounds in one call, ``audit_rounds(a, records)`` ->
    ``[(a after the round, recomputed), ...]`` (the same results; ``None`` declines, and the
    audit goes round by round): the team market does (``TeamMarket.audit_rounds``)."""

    agent_ids: list[str]
    payment_kind: str
    settlement_interval: int  # rounds one netted settlement covers (1: every round settles)
    audit_reads_transfers: bool  # False: ``audit_round`` reads no ``RoundRecord.transfers``

    def required_events(self, index: int) -> tuple[str, ...]: ...
    def audit_init(self) -> A: ...
    def audit_round(self, a: A, record: RoundRecord) -> tuple[A, Recomputed]: ...


class Presentation(Protocol):
    """What ``mbi run`` prints and ``mbi report`` plots."""

    summary_columns: tuple[str, ...]

    def summary(self, state: dict[str, Any], paid: np.ndarray) -> dict[str, Any]: ...
    def report_data(self, rounds: list[RoundRecord]) -> dict[str, Any]: ...


class LLMSteps(Protocol):
    """The LLM agents' steps, one ``Send`` each (``view``: the round, the step record and
    the market state)."""

    llm_agent_ids: list[str]

    async def llm_report(self, llm: Any, agent_id: str, view: dict[str, Any]) -> Any: ...
    async def llm_act(self, llm: Any, agent_id: str, view: dict[str, Any]) -> Any: ...


class Market(ABC, Generic[S, A]):
    """A game + mechanism + agents: the four protocols above, over one scenario.

    Subclasses implement ``init_state``, the round steps, ``settle``, ``audit_init``,
    ``audit_round`` and ``summary``; the LLM steps only when the game has LLM agents.
    """

    game: str
    payment_kind: str = "payment"
    n_actions: int | None = None  # number of discrete actions; None: continuous actions
    #: per-agent summary fields ``mbi run`` shows as table columns (in this order)
    summary_columns: tuple[str, ...] = ("action", "incentive", "payment", "utility", "total_paid")
    #: True when the mechanism's schedule depends on the horizon (``--rounds`` is then stored)
    schedules_by_horizon: bool = False
    #: False when the market's state holds records the LangGraph checkpointer cannot
    #: serialise (JAX pytrees): its runs keep no checkpoint and cannot be resumed
    checkpointable: bool = True
    #: rounds whose payments one settlement nets (one transfer per agent per interval)
    settlement_interval: int = 1
    #: False when ``audit_round`` reads no transfer rows (``RoundRecord.transfers``): the
    #: audit compares its payments with per-agent sums and may leave the rows to its digest helper
    audit_reads_transfers: bool = True

    def __init__(self, scenario: ScenarioBase):
        self.scenario = scenario
        self.agent_ids: list[str] = scenario.agent_ids()

    @property
    def mechanism(self) -> str:
        return self.scenario.scenario.mechanism

    @property
    def tolerance(self) -> float:
        return self.scenario.scenario.tolerance

    # ---- RoundSteps -----------------------------------------------------------------------
    @abstractmethod
    def init_state(self) -> S: ...

    def elicit(self, state: dict[str, Any]) -> dict[str, Any]:
        """The round's reports (default: nothing is reported)."""
        return {}

    @abstractmethod
    def price(self, state: dict[str, Any]) -> dict[str, Any]: ...

    def act(self, state: dict[str, Any]) -> dict[str, Any]:
        """The agents' actions on the signals (default: the step record unchanged)."""
        return state["step"]

    @abstractmethod
    def settle(self, state: dict[str, Any]) -> Settlement[S]: ...

    # ---- AuditSteps -----------------------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        """Event kinds every complete round must hold."""
        return ()

    def fixed_payloads(self, index: int) -> dict[str, dict[str, Any]]:
        """Event payload fields of round ``index`` that the scenario fixes (e.g. the tasks on
        offer and their values): ``{kind: {field: value}}``. The audit checks the logged
        round against them, the scenario itself being covered by the signed header."""
        return {}

    def audit_init(self) -> A:
        """The audit state before round 0 (default: none; rounds recompute on their own)."""
        return None  # type: ignore[return-value]

    @abstractmethod
    def audit_round(self, a: A, record: RoundRecord) -> tuple[A, Recomputed]:
        """Recompute the logged round ``record`` given what earlier rounds left in ``a``."""

    # ---- LLMSteps -------------------------------------------------------------------------
    @property
    def llm_agent_ids(self) -> list[str]:
        return [a.id for a in self.scenario.agents if getattr(a, "backend", "policy") == "llm"]

    async def llm_report(self, llm: Any, agent_id: str, view: dict[str, Any]) -> Any:
        raise NotImplementedError(f"game {self.game!r} has no LLM report step")

    async def llm_act(self, llm: Any, agent_id: str, view: dict[str, Any]) -> Any:
        raise NotImplementedError(f"game {self.game!r} has no LLM act step")

    # ---- Presentation ---------------------------------------------------------------------
    @abstractmethod
    def summary(self, state: dict[str, Any], paid: np.ndarray) -> dict[str, Any]:
        """The run's summary from the final loop state; ``paid``: what each agent paid over
        the run (units), read from the ledger's balances (``ledger_paid``)."""

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
