"""Answer models, prompts and ask-helpers for the two LLM games.

1. **Team / shared-capacity game** (DPM). Agent ``i`` has private value ``a_i`` and
   curvature ``b_i`` (worth ``a_i x - b_i x^2/2`` for usage ``x >= 0``); congestion
   ``kappa X^2/2`` on the total. REPORT: :func:`team_report` -> :class:`TeamReport`
   ``(value, curvature)``. ACT: :func:`team_act` gives the DPM price signal
   ``G_i = a_i - b_i x_i - kappa X`` and the current usage -> :class:`TeamAction` ``usage``.
2. **Task market** (VCG procurement). Agent has a persona and private cost per task
   (None = cannot do). REPORT: :func:`task_bid` -> :class:`TaskBids` (a number or null per
   task). DELIVER: :func:`task_deliver` -> :class:`Deliverable` text. A deliverable is
   stored as an event; it never moves money.

Only numbers that pass the answer model (JSON numbers, finite, inside the caller's
:class:`Bounds`, no unknown fields) leave these helpers as non-fallback values.

Fallbacks (documented defaults): REPORT steps have no default — the caller must pass one
(e.g. the previous report, or a non-participation report); ACT keeps the current usage
(clamped into the bounds); task bids default to ``null`` for every task (abstain);
DELIVER defaults to an empty text.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the openai SDK loads only when an LLM agent asks (policy runs and audits skip it)
    from .llm import Answer, LLMClient
from .prompts import render

#: Max. characters of a deliverable text.
DELIVERABLE_MAX_CHARS = 2000

DEFAULT_TEAM_PAYMENT_RULE = (
    "each round you receive the value of your usage plus a transfer equal to the others' "
    "value minus the congestion cost, minus an amount that does not depend on anything you do. "
    "So your net payoff is the team's welfare plus a constant: you earn most by reporting your "
    "true value and curvature and by using the resource as the team's welfare requires."
)
DEFAULT_TASK_PAYMENT_RULE = (
    "for each task you win, the Clarke pivot payment described above; nothing for a task you do not win."
)


class Bounds(BaseModel):
    """Closed interval ``[lo, hi]`` a numeric answer must lie in (given by the scenario)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)
    lo: float
    hi: float

    @model_validator(mode="after")
    def _ordered(self) -> "Bounds":
        if self.lo > self.hi:
            raise ValueError(f"empty bounds [{self.lo}, {self.hi}]")
        return self

    def clamp(self, x: float) -> float:
        return min(max(x, self.lo), self.hi)


def _num(bounds: Bounds, description: str) -> Any:
    """A strict JSON number inside ``bounds`` (no strings, no booleans, finite)."""
    return Annotated[float, Field(strict=True, ge=bounds.lo, le=bounds.hi, description=description)]


class StrictAnswer(BaseModel):
    """Base of answer models: unknown fields, NaN and Infinity are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


# ---------------------------------------------------------------------- team game
class TeamReport(StrictAnswer):
    """Reported type ``(a_i, b_i)`` of the team game."""

    value: float
    curvature: float


class TeamAction(StrictAnswer):
    """New usage ``x_i >= 0`` of the team game."""

    usage: float


@functools.lru_cache(maxsize=8192)  # one per agent with per-agent bounds
def team_report_model(value_bounds: Bounds, curvature_bounds: Bounds) -> type[TeamReport]:
    """:class:`TeamReport` with the scenario's bounds in its schema and validation."""
    return create_model(
        "TeamReport",
        __base__=TeamReport,
        value=(_num(value_bounds, "your value a"), ...),
        curvature=(_num(curvature_bounds, "your curvature b"), ...),
    )


@functools.lru_cache(maxsize=256)
def team_action_model(usage_bounds: Bounds) -> type[TeamAction]:
    """:class:`TeamAction` with the usage bounds (``lo >= 0``)."""
    if usage_bounds.lo < 0:
        raise ValueError("usage must be >= 0")
    return create_model("TeamAction", __base__=TeamAction, usage=(_num(usage_bounds, "your new usage x"), ...))


@dataclass(frozen=True)
class TeamAgentInfo:
    """What a team-game agent privately knows, and the public parameters."""

    agent_id: str
    value: float
    curvature: float
    kappa: float
    n_agents: int
    persona: str | None = None
    payment_rule: str = DEFAULT_TEAM_PAYMENT_RULE


@functools.lru_cache(maxsize=1024)
def _schema_text(schema: type[BaseModel]) -> str:
    """The answer model's JSON schema as the system prompt shows it (built once per model)."""
    from .llm import json_schema

    return json.dumps(json_schema(schema), separators=(",", ":"))


@functools.lru_cache(maxsize=4096)  # one per agent and answer model: the same every round and step
def _system_prompt(prompts_dir: Path | None, agent_id: str, persona: str | None, schema: type[BaseModel]) -> str:
    """``system.md`` for an agent (templates are deterministic: rendered once per agent and model)."""
    return render("system.md", {"agent_id": agent_id, "persona": persona, "schema": _schema_text(schema)}, prompts_dir)


def _messages(llm: LLMClient, template: str, ctx: dict[str, Any], schema: type[BaseModel]) -> list[dict[str, str]]:
    pdir = llm.settings.prompts_dir
    agent_id, persona = ctx["agent_id"], ctx.get("persona")
    if isinstance(agent_id, str) and (persona is None or isinstance(persona, str)):
        system = _system_prompt(pdir, agent_id, persona, schema)
    else:
        system = render("system.md", {"agent_id": agent_id, "persona": persona, "schema": _schema_text(schema)}, pdir)
    return [{"role": "system", "content": system}, {"role": "user", "content": render(template, ctx, pdir)}]


def team_report_messages(llm: LLMClient, info: TeamAgentInfo, value_bounds: Bounds, curvature_bounds: Bounds, *, round: int = 0) -> tuple[list[dict[str, str]], type[TeamReport]]:
    schema = team_report_model(value_bounds, curvature_bounds)
    ctx = dict(vars(info), round=round, value_bounds=value_bounds, curvature_bounds=curvature_bounds)
    return _messages(llm, "team_report.md", ctx, schema), schema


async def team_report(
    llm: LLMClient,
    info: TeamAgentInfo,
    *,
    value_bounds: Bounds,
    curvature_bounds: Bounds,
    fallback: TeamReport,
    round: int = 0,
) -> Answer[TeamReport]:
    """REPORT step of the team game: ask for ``(value, curvature)`` inside the bounds."""
    messages, schema = team_report_messages(llm, info, value_bounds, curvature_bounds, round=round)
    return await llm.ask(agent_id=info.agent_id, step="report", messages=messages, schema=schema, fallback=fallback)


async def team_act(
    llm: LLMClient,
    info: TeamAgentInfo,
    *,
    signal: float,
    usage: float,
    aggregate: float,
    usage_bounds: Bounds,
    fallback: TeamAction | None = None,
    round: int = 0,
) -> Answer[TeamAction]:
    """ACT step: give the DPM signal ``G_i`` and current usage, ask for the new usage.

    Fallback default: keep the current usage (clamped into ``usage_bounds``).
    """
    schema = team_action_model(usage_bounds)
    if fallback is None:
        fallback = TeamAction(usage=usage_bounds.clamp(usage))
    ctx = dict(vars(info), round=round, signal=signal, usage=usage, aggregate=aggregate, usage_bounds=usage_bounds)
    messages = _messages(llm, "team_act.md", ctx, schema)
    return await llm.ask(agent_id=info.agent_id, step="act", messages=messages, schema=schema, fallback=fallback)


# ---------------------------------------------------------------------- task market
class Task(BaseModel):
    """A task on offer (public)."""

    model_config = ConfigDict(frozen=True)
    id: str = Field(min_length=1, max_length=64)
    description: str


class TaskBids(StrictAnswer):
    """Cost bid per task (None = cannot do). Fields are aliased by task id."""

    task_ids: ClassVar[tuple[str, ...]] = ()

    def bids(self) -> dict[str, float | None]:
        """``{task_id: bid or None}`` in task order."""
        dumped = self.model_dump(by_alias=True)
        return {tid: dumped[tid] for tid in self.task_ids}


def task_bids_model(tasks: Sequence[Task], cost_bounds: Bounds) -> type[TaskBids]:
    """A :class:`TaskBids` model with one required field per task: number in bounds, or null."""
    return _task_bids_model(tuple(tasks), cost_bounds)


@functools.lru_cache(maxsize=256)
def _task_bids_model(tasks: tuple[Task, ...], cost_bounds: Bounds) -> type[TaskBids]:
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("task ids must be unique")
    fields: dict[str, Any] = {}
    for i, t in enumerate(tasks):
        fields[f"t{i}"] = (Optional[_num(cost_bounds, f"your cost bid for {t.id}, or null")], Field(..., alias=t.id))
    model = create_model("TaskBids", __base__=TaskBids, **fields)
    model.task_ids = tuple(ids)
    return model


def abstain(model: type[TaskBids]) -> TaskBids:
    """All-null bids (the default fallback)."""
    return model.model_validate({tid: None for tid in model.task_ids})


@dataclass(frozen=True)
class TaskAgentInfo:
    """A task-market agent: persona and private cost per task id (None = cannot do)."""

    agent_id: str
    persona: str
    costs: Mapping[str, float | None] = field(default_factory=dict)
    n_agents: int = 1
    payment_rule: str = DEFAULT_TASK_PAYMENT_RULE


async def task_bid(
    llm: LLMClient,
    info: TaskAgentInfo,
    tasks: Sequence[Task],
    *,
    cost_bounds: Bounds,
    fallback: TaskBids | None = None,
    round: int = 0,
) -> Answer[TaskBids]:
    """REPORT step of the task market: a cost bid (or null) per task.

    Fallback default: null for every task (the agent abstains).
    """
    schema = task_bids_model(tasks, cost_bounds)
    if fallback is None:
        fallback = abstain(schema)
    ctx = dict(vars(info), round=round, tasks=list(tasks), cost_bounds=cost_bounds)
    messages = _messages(llm, "task_report.md", ctx, schema)
    return await llm.ask(agent_id=info.agent_id, step="report", messages=messages, schema=schema, fallback=fallback)


class Deliverable(StrictAnswer):
    """The assigned agent's work product. Stored as an event; never moves money."""

    text: str = Field(max_length=DELIVERABLE_MAX_CHARS)


async def task_deliver(
    llm: LLMClient,
    info: TaskAgentInfo,
    task: Task,
    *,
    payment: float | None = None,
    fallback: Deliverable | None = None,
    round: int = 0,
) -> Answer[Deliverable]:
    """DELIVER step: the winner of ``task`` writes a short deliverable (default fallback: empty text)."""
    if fallback is None:
        fallback = Deliverable(text="")
    if payment is not None and not math.isfinite(payment):
        raise ValueError("payment must be finite")
    ctx = dict(vars(info), round=round, task=task, payment=payment, max_chars=DELIVERABLE_MAX_CHARS)
    messages = _messages(llm, "task_deliver.md", ctx, Deliverable)
    return await llm.ask(agent_id=info.agent_id, step="deliver", messages=messages, schema=Deliverable, fallback=fallback)
