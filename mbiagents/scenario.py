"""Scenario files: TOML, validated by pydantic before anything runs.

A scenario has a ``[scenario]`` table (name, game, mechanism, rounds, seed, tolerance), a
``[game]`` table with the game's public parameters, and ``[[agents]]`` with each agent's
backend and private type. Every game registers its own models here, so unknown keys,
wrong types and out-of-range values fail with the file and the field in one line, before
a ledger is opened.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from mbiagents.agents.settings import LLMSettings
from mbiagents.errors import ScenarioError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioMeta(Strict):
    """The ``[scenario]`` table."""

    name: str = Field(min_length=1)
    game: str
    mechanism: str
    rounds: PositiveInt = 100
    seed: int = 0
    tolerance: PositiveFloat = 1e-8
    description: str = ""


class TeamGameSettings(Strict):
    """``[game]`` of the team game: congestion ``kappa`` in ``C(X) = kappa X^2 / 2``."""

    congestion: PositiveFloat
    max_report: PositiveFloat = 1000.0  # bounds an LLM agent's reported value and curvature
    max_usage: PositiveFloat = 1000.0  # bounds an LLM agent's usage


class TeamAgentSpec(Strict):
    """One agent of the team game: private type ``(value a_i, curvature b_i)``.

    ``backend = "policy"`` agents follow ``policy``; ``backend = "llm"`` agents are asked
    by a language model (``persona`` goes into their prompt).
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    backend: Literal["policy", "llm"] = "policy"
    persona: str | None = None
    policy: Literal["truthful", "misreport"] = "truthful"
    value: PositiveFloat
    curvature: PositiveFloat
    misreport_factor: PositiveFloat | None = None
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _factor_matches_policy(self) -> "TeamAgentSpec":
        if self.policy == "misreport" and self.misreport_factor is None:
            raise ValueError("policy 'misreport' needs misreport_factor")
        if self.policy == "truthful" and self.misreport_factor not in (None, 1.0):
            raise ValueError("misreport_factor is only for policy 'misreport'")
        return self


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


class TeamScenario(ScenarioBase):
    """A team sharing a congested resource, priced by the DPM."""

    game: TeamGameSettings
    agents: list[TeamAgentSpec] = Field(min_length=1)


# game name -> (scenario model, mechanisms it supports)
GAMES: dict[str, tuple[type[ScenarioBase], tuple[str, ...]]] = {
    "team": (TeamScenario, ("dpm",)),
}


def register_game(name: str, model: type[ScenarioBase], mechanisms: tuple[str, ...]) -> None:
    """Register a game's scenario model and the mechanisms that can run it."""
    GAMES[name] = (model, mechanisms)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_error(path: str, err: ValidationError) -> ScenarioError:
    e = err.errors()[0]
    where = _loc(tuple(p for p in e["loc"] if p not in ("function-after",)))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return ScenarioError(f"{path}: {where}: {msg}{more}" if where else f"{path}: {msg}{more}")


def parse_scenario(data: dict[str, Any], path: str = "<scenario>") -> ScenarioBase:
    """Validate a scenario mapping; raise ``ScenarioError`` naming the file and field."""
    meta = data.get("scenario")
    if not isinstance(meta, dict):
        raise ScenarioError(f"{path}: scenario: missing [scenario] table")
    game = meta.get("game")
    if game not in GAMES:
        known = ", ".join(sorted(GAMES))
        raise ScenarioError(f"{path}: scenario.game: unknown game {game!r} (known: {known})")
    model, mechanisms = GAMES[game]
    mechanism = meta.get("mechanism")
    if mechanism not in mechanisms:
        raise ScenarioError(
            f"{path}: scenario.mechanism: {mechanism!r} does not run game {game!r} (use: {', '.join(mechanisms)})"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _first_error(path, err) from None


def load_scenario(path: str | Path) -> ScenarioBase:
    """Read and validate a TOML scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: cannot read scenario file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: invalid TOML: {exc}") from None
    return parse_scenario(data, str(p))


from mbiagents import scenario_incentives as _incentives  # noqa: E402,F401  (registers routing, quadratic, principal-mdp)
