"""Scenario models of the incentive-design games (issue 6): the social-gradient planner on
routing and on the quadratic aggregative game, and the two-phase principal on the
principal-agent MDP, listed in ``mbiagents.scenario.REGISTRY``.

Formats (``examples/pigou_tolling.toml``, ``examples/quadratic_tax.toml``,
``examples/principal.toml``):

* ``game = "routing"``, ``mechanism = "social-gradient"``: ``[game]`` has ``demand`` and the
  planner/agent dynamics (below); each ``[[agents]]`` is the nonatomic user population of
  one parallel link with latency ``a + b x^degree``; that population's account pays the
  link's toll on its flow.
* ``game = "quadratic"``, ``mechanism = "social-gradient"``: ``[game]`` has the coupling
  ``coupling`` (``c``), the planner's congestion weight ``congestion`` (``s``) and the
  dynamics; each ``[[agents]]`` has private ``q`` and ``r`` (cost ``q x^2/2 - r x + c x X``).
* Dynamics of both (``[game]``): ``step`` (the planner's ``alpha``), ``response``:
  ``"equilibrium"`` (agents play the equilibrium of the posted incentives) or ``"gradient"``
  (``inner`` steps of gradient play with step ``eta`` per round: two-timescale).
* ``game = "principal-mdp"``, ``mechanism = "two-phase"``: ``[game]`` has the pollution MDP
  (``n_states``, ``r_clean``, ``r_dirty``, ``externality``, ``move``, ``noise``) and the
  schedule (``bisect_steps``, ``tau_max``, ``eps0``); exactly one ``[[agents]]``, the
  Q-learner. The schedule's horizon ``T`` is the run's round limit.
* ``game = "team"``, ``mechanism = "reinforce"``: the team game's own scenario, run by the
  model-free baseline (``mbiagents.markets.reinforce``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from mbiagents.scenario_base import AgentId, ScenarioBase, Strict


class PlannerDynamics(Strict):
    """Planner step and the agents' response rule (shared by the social-gradient games)."""

    step: PositiveFloat = 0.25
    response: Literal["equilibrium", "gradient"] = "equilibrium"
    eta: PositiveFloat = 0.5
    inner: PositiveInt = 1


class RoutingGameSettings(PlannerDynamics):
    """``[game]`` of parallel-link routing: total ``demand`` (nonatomic)."""

    demand: PositiveFloat


class LinkSpec(Strict):
    """One parallel link's user population: latency ``a + b x^degree`` (``degree >= 1``)."""

    id: AgentId
    backend: Literal["policy"] = "policy"
    a: NonNegativeFloat = 0.0
    b: NonNegativeFloat = 0.0
    degree: float = Field(default=1.0, ge=1.0)


class RoutingScenario(ScenarioBase):
    """Tolling parallel links with the social-gradient flow."""

    game: RoutingGameSettings
    agents: list[LinkSpec] = Field(min_length=2)


class QuadraticGameSettings(PlannerDynamics):
    """``[game]`` of the quadratic aggregative game: coupling ``c`` and congestion ``s``."""

    coupling: NonNegativeFloat = 0.0
    congestion: NonNegativeFloat = 1.0
    step: PositiveFloat = 0.1


class QuadraticAgentSpec(Strict):
    """One agent: private cost ``q x^2/2 - r x + c x X`` (``q > 0``)."""

    id: AgentId
    backend: Literal["policy"] = "policy"
    q: PositiveFloat
    r: float


class QuadraticScenario(ScenarioBase):
    """Taxing/subsidising a quadratic aggregative game with the social-gradient flow."""

    game: QuadraticGameSettings
    agents: list[QuadraticAgentSpec] = Field(min_length=1)


class PrincipalGameSettings(Strict):
    """``[game]`` of the pollution MDP and the two-phase schedule."""

    n_states: int = Field(default=5, ge=2, le=100)
    r_clean: float = 0.6
    r_dirty: float = 1.0
    externality: NonNegativeFloat = 0.5
    move: float = Field(default=0.8, gt=0.0, le=1.0)
    noise: NonNegativeFloat = 0.1
    bisect_steps: int = Field(default=6, ge=1, le=20)
    tau_max: PositiveFloat = 2.0
    eps0: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _dirty_pays_more(self) -> "PrincipalGameSettings":
        if self.r_dirty - self.r_clean > self.tau_max:
            raise ValueError("tau_max must be at least r_dirty - r_clean (the bracket must hold the minimal transfer)")
        return self


class PrincipalAgentSpec(Strict):
    """The learning agent: an epsilon-greedy Q-learner on its private reward + transfers."""

    id: AgentId
    backend: Literal["policy"] = "policy"
    policy: Literal["q-learning"] = "q-learning"


class PrincipalScenario(ScenarioBase):
    """A principal steering a Q-learning agent in an MDP with a stateful externality."""

    game: PrincipalGameSettings
    agents: list[PrincipalAgentSpec] = Field(min_length=1, max_length=1)

