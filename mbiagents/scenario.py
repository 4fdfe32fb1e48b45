"""Scenario files: TOML, validated by pydantic before anything runs.

A scenario has a ``[scenario]`` table (name, game, mechanism, rounds, seed, tolerance), a
``[game]`` table with the game's public parameters, and ``[[agents]]`` with each agent's
backend and private type. ``REGISTRY`` names the scenario model (and the market) of every
accepted ``(game, mechanism)``, so unknown keys, wrong types and out-of-range values fail
with the file and the field in one line, before a ledger is opened.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from mbiagents.errors import ScenarioError
from mbiagents.scenario_base import (  # noqa: F401  (re-exported)
    MAX_AGENTS, MAX_COUNT, MAX_MAGNITUDE, MAX_ROUNDS, MAX_SEED, AgentId, Count, NonNegative, Positive, Real, ScenarioBase, ScenarioMeta, Strict)
from mbiagents.scenario_incentives import PrincipalScenario, QuadraticScenario, RoutingScenario


class TeamGameSettings(Strict):
    """``[game]`` of the team game: congestion ``kappa`` in ``C(X) = kappa X^2 / 2``; ``step``:
    the agents' step rule (``mechanisms.dpm``): ``"clearing"`` (the mechanism broadcasts the
    exact clearing price move: one round to the optimum for every N), ``"newton"`` (one
    Newton step per round: rounds ~ log N at fixed kappa) or ``"fixed"`` (gradient play with
    ``1 / (b_i + kappa N)``, rounds that grow like N)."""

    congestion: Positive
    step: Literal["clearing", "newton", "fixed"] = "clearing"
    max_report: float = Field(1000.0, ge=1e-6, le=MAX_MAGNITUDE)  # bounds an LLM agent's reported value and curvature
    max_usage: float = Field(1000.0, ge=1e-6, le=MAX_MAGNITUDE)  # bounds an LLM agent's usage
    #: rounds whose payments one settlement nets: one transfer per agent every k rounds
    #: (every round's payment vector is still logged, hashed and recomputed by the audit)
    settlement_interval: int = Field(1, ge=1, le=MAX_ROUNDS)
    #: the operator's prior on each agent's type: an LLM agent's reported value (curvature)
    #: must lie within this factor of the value (curvature) the scenario gives it
    prior_ratio: float = Field(default=4.0, gt=1.0, le=1e6)


class PolicyAgentSpec(Strict):
    """Fields every agent has: id, backend, persona (LLM), policy and misreport factor.

    ``backend = "policy"`` agents follow ``policy``; ``backend = "llm"`` agents are asked
    by a language model (``persona`` goes into their prompt).
    """

    id: AgentId
    backend: Literal["policy", "llm"] = "policy"
    persona: str | None = None
    policy: Literal["truthful", "misreport"] = "truthful"
    misreport_factor: Positive | None = None

    @model_validator(mode="after")
    def _factor_matches_policy(self) -> "PolicyAgentSpec":
        if self.policy == "misreport" and self.misreport_factor is None:
            raise ValueError("policy 'misreport' needs misreport_factor")
        if self.policy == "truthful" and self.misreport_factor not in (None, 1.0):
            raise ValueError("misreport_factor is only for policy 'misreport'")
        return self


class TeamAgentSpec(PolicyAgentSpec):
    """One agent of the team game: private type ``(value a_i, curvature b_i)``."""

    value: Positive
    curvature: Positive
    step: Positive | None = None


class TeamPopulationSpec(Strict):
    """``[population]`` of the team game: ``size`` truthful policy agents, generated.

    Agent ``i`` is ``<id_prefix><i>`` (``a0``, ``a1``, ...); its type is drawn uniformly,
    ``value_i ~ U[value[0], value[1])`` then ``curvature_i ~ U[curvature[0], curvature[1])``,
    from NumPy's ``default_rng(seed)`` (PCG64), each as one vector of ``size`` draws; without
    a ``seed`` here, the scenario's (``[scenario] seed``, ``mbi run --seed``) draws it. The
    run header stores this table, not 10^6 agents, so the audit rebuilds the same
    population from it; round 0 logs the reported types as hashed array records, which
    the audit recomputes from (a NumPy that drew differently would show there).
    """

    size: int = Field(ge=1, le=MAX_AGENTS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    value: tuple[Positive, Positive]
    curvature: tuple[Positive, Positive]
    id_prefix: str = Field("a", min_length=1, max_length=32, pattern=r"^[A-Za-z_.-][A-Za-z0-9_.-]*$")

    @model_validator(mode="after")
    def _ranges(self) -> "TeamPopulationSpec":
        for name in ("value", "curvature"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: range [{lo}, {hi}] is empty (lower bound above the upper)")
        return self

    def ids(self) -> list[str]:
        """``<id_prefix>0 ... <id_prefix><size-1>``."""
        p = self.id_prefix
        return [f"{p}{i}" for i in range(self.size)]

    def types(self, scenario_seed: int = 0) -> tuple[Any, Any]:
        """``(value, curvature)``: two float64 vectors of ``size`` draws, value first, from
        ``seed`` (``scenario_seed`` when the table gives none)."""
        import numpy as np

        rng = np.random.default_rng(self.seed if self.seed is not None else scenario_seed)
        return rng.uniform(*self.value, self.size), rng.uniform(*self.curvature, self.size)


class TeamScenario(ScenarioBase):
    """A team sharing a congested resource, priced by the DPM.

    Agents are listed (``[[agents]]``) or generated (``[population]``, the DPM only),
    not both.
    """

    game: TeamGameSettings
    agents: list[TeamAgentSpec] = Field(default_factory=list)
    population: TeamPopulationSpec | None = None

    @model_validator(mode="after")
    def _agents_or_population(self) -> "TeamScenario":
        if (self.population is None) == (not self.agents):
            raise ValueError("agents: give [[agents]] or a [population], exactly one of them")
        if self.population is not None and self.scenario.mechanism != "dpm":
            raise ValueError(f"population: a generated population runs under mechanism 'dpm', "
                             f"not {self.scenario.mechanism!r}")
        return self

    def agent_ids(self) -> list[str]:
        return self.population.ids() if self.population is not None else super().agent_ids()


Cost = NonNegative


class TaskGameSettings(Strict):
    """``[game]`` of the task market: the public cost prior and the LLM bid bounds.

    Prior: agent ``i``'s cost of task ``j`` is ``Uniform[c_ij (1 - cost_spread), c_ij (1 +
    cost_spread)]`` around the scenario's listed cost ``c_ij`` (a task left out: cannot do
    it). AGV's expectations use it with ``samples`` Monte Carlo profiles; with
    ``redraw_costs`` the agents' private costs are drawn from it every round (seeded by the
    scenario seed and the round index), else they are the listed costs.
    """

    cost_spread: float = Field(0.25, ge=0, lt=1)
    samples: Count = 64
    redraw_costs: bool = False
    max_bid: float = Field(1000.0, ge=1e-6, le=MAX_MAGNITUDE)  # bounds an LLM agent's cost bid: [0, max_bid]


class TaskSpec(Strict):
    """A task on offer: public ``value``; offered in round ``round`` only (0 = the first
    round), or in every round when ``round`` is left out."""

    id: AgentId
    value: Positive
    description: str = ""
    round: int | None = Field(None, ge=0, le=MAX_ROUNDS)


class TaskAgentSpec(PolicyAgentSpec):
    """One agent of the task market: ``capacity`` tasks per round and a private cost per
    task it can do (``misreport`` scales every reported cost by ``misreport_factor``)."""

    capacity: Count = 1
    costs: dict[str, Cost] = Field(default_factory=dict)


class TaskScenario(ScenarioBase):
    """A task market: tasks procured from agents by VCG (``vcg``, ``vcg-fast``) or AGV."""

    game: TaskGameSettings = TaskGameSettings()
    tasks: list[TaskSpec] = Field(min_length=1)
    agents: list[TaskAgentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "TaskScenario":
        ids: set[str] = set()
        for j, t in enumerate(self.tasks):
            if t.id in ids:
                raise ValueError(f"tasks[{j}].id: duplicate task id {t.id!r}")
            ids.add(t.id)
            if t.round is not None and t.round >= self.scenario.rounds:
                raise ValueError(f"tasks[{j}].round: {t.round} is never played (rounds = {self.scenario.rounds})")
        for i, a in enumerate(self.agents):
            for tid in a.costs:
                if tid not in ids:
                    raise ValueError(f"agents[{i}].costs.{tid}: unknown task {tid!r}")
            if a.backend == "llm" and not a.persona:
                raise ValueError(f"agents[{i}].persona: an LLM agent needs a persona")
            if self.scenario.mechanism == "vcg-fast" and a.capacity != 1:
                raise ValueError(f"agents[{i}].capacity: mechanism 'vcg-fast' is unit demand (capacity 1); "
                                 "use 'vcg' for other capacities")
        return self


class CongestionGameSettings(Strict):
    """``[game]`` of the congestion (tolling) game: per-route costs and posted tolls.

    A user of route ``a`` carrying load ``L`` (agents on it) bears the cost
    ``c1[a] L + c2[a] L^2`` and pays the posted toll ``tolls[a] L`` to the treasury (a
    negative toll is a subsidy it receives). Learners reset every ``episode_length`` rounds.
    """

    c1: list[NonNegative] = Field(min_length=2, max_length=MAX_COUNT)
    c2: list[NonNegative] = Field(min_length=2, max_length=MAX_COUNT)
    tolls: list[Real] = Field(min_length=2, max_length=MAX_COUNT)
    episode_length: Count = 30

    @model_validator(mode="after")
    def _same_routes(self) -> "CongestionGameSettings":
        if not len(self.c1) == len(self.c2) == len(self.tolls):
            raise ValueError("c1, c2 and tolls need one entry per route (same length)")
        if min(self.c1 + self.c2) < 0:
            raise ValueError("route costs c1 and c2 must be >= 0")
        return self


class CongestionAgentSpec(Strict):
    """A logit-Q learner (``mechanisms.learning``): step ``alpha``, inverse temperature
    ``beta``, uniform exploration ``eps``."""

    id: AgentId
    backend: Literal["policy"] = "policy"
    policy: Literal["logit-q"] = "logit-q"
    alpha: float = Field(0.25, gt=0.0, le=1.0)
    beta: float = Field(3.0, ge=0.0, le=MAX_MAGNITUDE)
    eps: float = Field(0.06, gt=0.0, lt=1.0)


class CongestionScenario(ScenarioBase):
    """Agents learn routes under posted tolls (``game = "congestion"``, ``mechanism = "tolls"``)."""

    game: CongestionGameSettings
    agents: list[CongestionAgentSpec] = Field(min_length=1)


class TeamTasksSettings(Strict):
    """Public parameters: bids outside ``[0, max_bid]`` are rejected (logged)."""

    max_bid: float = Field(1e6, gt=0, allow_inf_nan=False)


class TeamTasksAgentSpec(Strict):
    """An agent as the run header records it: id, capacity and budget. Its costs are private
    (it bids them) and are not here."""

    id: AgentId
    capacity: int = Field(1, ge=1)
    grant: float | None = Field(None, ge=0, allow_inf_nan=False)
    on_exhausted: Literal["stop", "pause", "warn"] = "stop"


class TeamTaskSpec(Strict):
    """A task of a team TOML file (``mbiagents.Task``): id, description, value, acceptance."""

    id: AgentId
    description: str
    value: float = Field(gt=0, allow_inf_nan=False)
    acceptance: list[str] = Field(default_factory=list)


class TeamTasksScenario(ScenarioBase):
    """A team run from Python (``mbiagents.TaskMarket``) as its run header records it: the
    agents and their budgets; the tasks of each round are logged in the ledger (a TOML file
    may list the first tasks under ``[[tasks]]``)."""

    game: TeamTasksSettings = TeamTasksSettings()
    agents: list[TeamTasksAgentSpec] = Field(min_length=1)
    tasks: list[TeamTaskSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Game:
    """One accepted ``(game, mechanism)``: the scenario model that validates it and the
    market that runs it, named ``"module:Class"`` (markets sit above scenarios and load
    JAX; ``mbiagents.markets.build_market`` imports the class)."""

    scenario: type[ScenarioBase]
    market: str

    def market_class(self) -> type:
        module, _, name = self.market.partition(":")
        return getattr(importlib.import_module(module), name)


#: every ``(game, mechanism)`` a scenario may name; the parser accepts exactly these, and
#: a test builds the market of each
REGISTRY: dict[tuple[str, str], Game] = {
    ("team", "dpm"): Game(TeamScenario, "mbiagents.markets.team:TeamMarket"),
    ("team", "reinforce"): Game(TeamScenario, "mbiagents.markets.reinforce:ReinforceMarket"),
    ("congestion", "tolls"): Game(CongestionScenario, "mbiagents.markets.congestion:CongestionMarket"),
    ("assignment", "vcg"): Game(TaskScenario, "mbiagents.markets.tasks:TaskMarket"),
    ("assignment", "vcg-fast"): Game(TaskScenario, "mbiagents.markets.tasks:TaskMarket"),
    ("assignment", "agv"): Game(TaskScenario, "mbiagents.markets.tasks:TaskMarket"),
    ("team-tasks", "vcg"): Game(TeamTasksScenario, "mbiagents.markets.team_tasks:TeamTasksMarket"),
    ("team-tasks", "vcg-fast"): Game(TeamTasksScenario, "mbiagents.markets.team_tasks:TeamTasksMarket"),
    ("routing", "social-gradient"): Game(RoutingScenario, "mbiagents.markets.social_gradient:SocialGradientMarket"),
    ("quadratic", "social-gradient"): Game(QuadraticScenario, "mbiagents.markets.social_gradient:SocialGradientMarket"),
    ("principal-mdp", "two-phase"): Game(PrincipalScenario, "mbiagents.markets.principal:PrincipalMarket"),
}


def mechanisms_of(game: str) -> tuple[str, ...]:
    """The mechanisms that run ``game`` (empty: an unknown game)."""
    return tuple(m for g, m in REGISTRY if g == game)


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
    mechanisms = mechanisms_of(game) if isinstance(game, str) else ()
    if not mechanisms:
        known = ", ".join(sorted({g for g, _ in REGISTRY}))
        raise ScenarioError(f"{path}: scenario.game: unknown game {game!r} (known: {known})")
    mechanism = meta.get("mechanism")
    if mechanism not in mechanisms:
        raise ScenarioError(
            f"{path}: scenario.mechanism: {mechanism!r} does not run game {game!r} (use: {', '.join(mechanisms)})"
        )
    try:
        return REGISTRY[(game, mechanism)].scenario.model_validate(data)
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
    llm = data.get("llm")
    if isinstance(llm, dict) and isinstance(llm.get("prompts_dir"), str):
        # a scenario's templates live beside it: relative to the file, and inside its folder
        folder = p.resolve().parent
        pdir = (folder / llm["prompts_dir"]).resolve()
        if not pdir.is_relative_to(folder):
            raise ScenarioError(f"{p}: llm.prompts_dir: {llm['prompts_dir']!r} is outside the scenario's folder {folder}")
        data = {**data, "llm": {**llm, "prompts_dir": str(pdir)}}
    return parse_scenario(data, str(p))

