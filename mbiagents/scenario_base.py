"""The fields every scenario has: the ``[scenario]`` table, agent ids, ``[llm]``.

Imports only pydantic (and the pydantic-only ``mbiagents.llm_settings``): the game
modules (``mbiagents.scenario``, ``mbiagents.scenario_incentives``) build on it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mbiagents.llm_settings import LLMSettings

#: an agent or task id: safe in account names, transfer ids and the hash encoding
AgentId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]

# ---- bounds of every numeric scenario field (README "Scenario bounds") ----------------------
#: the largest magnitude of any real-valued parameter (values, costs, curvatures, tolls, demand, ...)
MAX_MAGNITUDE = 1e6
#: the smallest strictly positive parameter (no denormals such as 1e-308)
MIN_POSITIVE = 1e-9
MAX_ROUNDS = 1_000_000
MAX_AGENTS = 1_000_000
#: LLM agents per team: each is one model call per step; more is a fan-out no endpoint serves
MAX_LLM_AGENTS = 64
MAX_COUNT = 100_000  # sample counts, capacities, episode lengths, inner steps
MAX_SEED = 2**63 - 1  # seeds are int64

Real = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Positive = Annotated[float, Field(ge=MIN_POSITIVE, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioMeta(Strict):
    """The ``[scenario]`` table."""

    name: str = Field(min_length=1)
    game: str
    mechanism: str
    rounds: int = Field(100, ge=1, le=MAX_ROUNDS)
    #: the round limit a run was started with when ``mbi run --rounds`` overrode ``rounds``
    #: (recorded so that ``--resume`` honours it); a scenario file leaves it out
    round_limit: int | None = Field(None, ge=1, le=MAX_ROUNDS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    tolerance: float = Field(1e-8, gt=0.0, le=1.0, allow_inf_nan=False)
    description: str = ""


class ScenarioBase(Strict):
    scenario: ScenarioMeta
    agents: list[Any] = Field(min_length=1)
    llm: LLMSettings | None = None  # the [llm] table: model endpoint of the LLM agents

    @model_validator(mode="after")
    def _unique_agent_ids(self) -> "ScenarioBase":
        if len(self.agents) > MAX_AGENTS:
            raise ValueError(f"agents: {len(self.agents)} agents, at most {MAX_AGENTS}")
        n_llm = sum(getattr(a, "backend", "policy") == "llm" for a in self.agents)
        if n_llm > MAX_LLM_AGENTS:
            raise ValueError(f"agents: {n_llm} LLM agents, at most {MAX_LLM_AGENTS} per team")
        seen: set[str] = set()
        for i, agent in enumerate(self.agents):
            if agent.id in seen:
                raise ValueError(f"agents[{i}].id: duplicate agent id {agent.id!r}")
            seen.add(agent.id)
        return self

    def agent_ids(self) -> list[str]:
        """The agents' ids in account order (a game with a generated population overrides this)."""
        return [a.id for a in self.agents]
