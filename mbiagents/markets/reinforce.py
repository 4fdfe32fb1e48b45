"""The model-free baseline on the team game through the same round loop
(``game = "team"``, ``mechanism = "reinforce"``): ``mechanisms.rl`` (independent REINFORCE,
Gaussian policies, per-agent baselines, Adam), the comparison behind MBI's "DPM is ~50x
faster than model-free RL" (``benchmarks/bench_rl_vs_dpm.py`` times both).

No mechanism, no reports, no payments: each round every agent plays one sample
``x_i = max(0, mu_i + sigma eps_i)``, the team reward ``R = W(x)`` is broadcast, and every
agent takes a REINFORCE step (``rl.reinforce_step``; randomness from ``PRNGKey(seed)``).
Hyperparameters are the benchmark's tuned choice (Adam ``lr = 0.1``, ``sigma = 0.3``,
baseline rate 0.05). The run converges with the first round whose welfare of the mean
policy reaches 99% of the optimum (the benchmark's target; the harness knows ``W*``, the
agents do not).

Ledger per round: events ``actions`` (the sample ``x``), ``reward`` (``R``) and ``policy``
(new ``mu``, ``W(mu)``); no transfers. ``mbi audit`` replays the learners from the seed and
the scenario's types and checks every logged sample, reward and policy (``policy_recompute``).
"""

from __future__ import annotations

from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mechanisms import rl
from mechanisms.games import team
from mbiagents.errors import ScenarioError
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.markets.base import Market, Recomputed, Settlement, welfare_gap

LR, SIGMA, BASELINE_RATE, TARGET = 0.1, 0.3, 0.05, 0.99
_OPT = optax.adam(LR)


@jax.jit
def _round(state, types, kappa):
    """The round's sample, reward and the learners' next state (``rl.reinforce_round``)."""
    return rl.reinforce_round(state, types, kappa, _OPT, SIGMA, BASELINE_RATE)


class LearnersState(TypedDict):
    """Across rounds: the learners (a JAX record: not checkpointable) and their mean policy."""

    rl: rl.ReinforceState
    actions: np.ndarray  # mean policy mu


class LearnersStep(TypedDict, total=False):
    x: np.ndarray  # the round's joint sample
    reward: float
    rl: rl.ReinforceState  # the learners after their step


class ReinforceMarket(Market[LearnersState, rl.ReinforceState]):
    game = "team"
    checkpointable = False  # the learners' JAX/optax state is part of the market state
    payment_kind = "none"
    audit_reads_transfers = False  # payments compared from per-agent sums

    def __init__(self, scenario):
        super().__init__(scenario)
        for i, a in enumerate(scenario.agents):
            if a.backend != "policy" or a.policy != "truthful":
                raise ScenarioError(f"agents[{i}].policy: mechanism 'reinforce' runs only truthful policy agents")
        self.kappa = float(scenario.game.congestion)
        self.types = team.TeamTypes(jnp.asarray([a.value for a in scenario.agents], jnp.float64),
                                    jnp.asarray([a.curvature for a in scenario.agents], jnp.float64))
        self.w_star = float(team.optimal_welfare(self.types, self.kappa))

    def _learners(self) -> rl.ReinforceState:
        n = len(self.agent_ids)
        return rl.reinforce_init(jnp.zeros(n), _OPT, jax.random.PRNGKey(self.scenario.scenario.seed), self.types, self.kappa)

    def init_state(self) -> LearnersState:
        return LearnersState(rl=self._learners(), actions=np.zeros(len(self.agent_ids)))

    def price(self, state) -> LearnersStep:
        return LearnersStep()

    def act(self, state) -> LearnersStep:
        x, r, nxt = _round(state["market"]["rl"], self.types, self.kappa)
        return LearnersStep(x=np.asarray(x), reward=float(r), rl=nxt)

    def settle(self, state) -> Settlement[LearnersState]:
        step = state["step"]
        mu, w = np.asarray(step["rl"].mu), float(step["rl"].mean_welfare)
        events = [EventRow("actions", {"x": step["x"].tolist()}), EventRow("reward", {"R": step["reward"]}),
                  EventRow("policy", {"mu": mu.tolist(), "mean_welfare": w})]
        return Settlement(events=events, transfers=[], state=LearnersState(rl=step["rl"], actions=mu),
                          done=w >= TARGET * self.w_star, metrics={"welfare": w, "reward": step["reward"]})

    def required_events(self, index: int) -> tuple[str, ...]:
        return ("actions", "reward", "policy")

    def audit_init(self) -> rl.ReinforceState:
        """The learners replayed from the seed (they depend on no logged row)."""
        return self._learners()

    def audit_round(self, a: rl.ReinforceState, rec: RoundRecord) -> tuple[rl.ReinforceState, Recomputed]:
        x, r, nxt = _round(a, self.types, self.kappa)
        ok = (np.allclose(rec.payload("actions")["x"], np.asarray(x), rtol=1e-12, atol=1e-12)
              and abs(rec.payload("reward")["R"] - float(r)) <= 1e-12
              and np.allclose(rec.payload("policy")["mu"], np.asarray(nxt.mu), rtol=1e-12, atol=1e-12))
        detail = "" if ok else "logged sample, reward or policy differs from the replayed learners"
        return nxt, Recomputed(payments=np.zeros(len(self.agent_ids)), checks={"policy_recompute": (ok, detail)})

    def summary(self, state, paid) -> dict[str, Any]:
        mu = np.asarray(state["market"]["actions"])
        w = float(team.welfare(jnp.asarray(mu), self.types, self.kappa))
        return {
            "welfare": w,  # welfare of the mean policy
            "optimal_welfare": self.w_star,
            "welfare_gap": welfare_gap(w, self.w_star),
            "target_welfare": TARGET * self.w_star,
            "agents": {aid: {"action": float(mu[i]), "payment": 0.0, "total_paid": float(paid[i])}
                       for i, aid in enumerate(self.agent_ids)},
        }
