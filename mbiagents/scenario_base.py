"""The fields every scenario has: the ``[scenario]`` table, agent ids, ``[llm]``.

Imports only pydantic (and the pydantic-only ``mbiagents.llm_settings``): the game
modules (``mbiagents.scenario``, ``mbiagents.scenario_incentives``) build on it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from mbiagents.llm_settings import LLMSettings

#: an agent or task id: safe in account names, transfer ids and the hash encoding
AgentId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioMeta(Strict):
    """The ``[scenario]`` table."""

    name: str = Field(min_length=1)
    game: str
    mechanism: str
    rounds: PositiveInt = 100
    #: the round limit a run was started with when ``mbi run --rounds`` overrode ``rounds``
    #: (recorded so that ``--resume`` honours it); a scenario file leaves it out
    round_limit: PositiveInt | None = None
    seed: int = 0
    tolerance: PositiveFloat = 1e-8
    description: str = ""


class ScenarioBase(Strict):
    scenario: ScenarioMeta
    agents: list[Any] = Field(min_length=1)
    llm: LLMSettings | None = None  # the [llm] table: model endpoint of the LLM agents

    @model_validator(mode="after")
    def _unique_agent_ids(self) -> "ScenarioBase":
        seen: set[str] = set()
        for i, agent in enumerate(self.agents):
            if agent.id in seen:
                raise ValueError(f"agents[{i}].id: duplicate agent id {agent.id!r}")
            seen.add(agent.id)
        return self
