"""Small typed objects of the team API: tasks, budgets, verdicts, what a round returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mbiagents.scenario import AgentId

ExhaustionPolicy = Literal["stop", "pause", "warn"]


class Task(BaseModel):
    """A task on offer: what to do, how it is judged, and what it is worth to the team.

    ``value`` is public (the mechanism awards a task only where the winner's bid is below
    it); ``acceptance`` is what the verifier checks, shown to the agents as is.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: AgentId
    description: str
    value: float = Field(gt=0, allow_inf_nan=False)
    acceptance: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict, description="structured inputs of the task (JSON)")


class Budget(BaseModel):
    """An agent's account: funded by ``grant`` (units) and by its posted earnings; every
    priced model or tool call is reserved before it runs and charged its actual cost.

    When a reservation does not fit: ``stop`` ends the agent's work on the task (it is not
    delivered, so not paid); ``warn`` shrinks the reservation to what is left (a model call
    gets fewer ``max_tokens``), and stops only when nothing is left; ``pause`` asks for a
    top-up through LangGraph ``interrupt()`` (resume with ``Command(resume=amount)``; 0 or
    ``None``: stop). Each case logs a ``budget_exceeded`` event.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    grant: float = Field(ge=0, allow_inf_nan=False)
    on_exhausted: ExhaustionPolicy = "stop"


class Verdict(BaseModel):
    """A verifier's judgement of one deliverable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accepted: bool
    reason: str = ""
