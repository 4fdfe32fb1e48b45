"""The model-free baseline on the team game through the same round loop
(``game = "team"``, ``mechanism = "reinforce"``): ``mechanisms.rl`` (independent REINFORCE,
Gaussian policies, per-agent baselines, Adam), the comparison behind MBI's "DPM is ~50x
faster than model-free RL" (``benchmarks/bench_rl_vs_dpm.py`` times both).

No mechanism, no reports, no payments: each round every agent plays one sample
``x_i = max(0, mu_i + sigma eps_i)``, the team reward ``R = W(x)`` is broadcast, and every
agent takes a REINFORCE step (``rl.reinforce_step``; randomness from ``PRNGKey(seed)``).
Hyperparameters are the benchmark's tuned choice (Adam ``lr = 0.1``, ``sigma = 0.3``,
baseline rate 0.05). The run converges when the welfare of the mean policy reaches 99% of
the optimum (the benchmark's target; the harness knows ``W*``, the agents do not).

Ledger per round: events ``actions`` (the sample ``x``), ``reward`` (``R``) and ``policy``
(new ``mu``, ``W(mu)``); no transfers. ``mbi audit`` replays the learners from the seed and
the scenario's types and checks every logged sample, reward and policy (``policy_recompute``).
"""

from __future__ import annotations

from typing import Any

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
    """The joint sample ``x`` and reward of this round (the key ``rl.reinforce_step`` uses), and
    the learners' next state."""
    _, sub = jax.random.split(state.key)
    x = jnp.maximum(0.0, state.mu + SIGMA * jax.random.normal(sub, state.mu.shape))
    return x, team.welfare(x, types, kappa), rl.reinforce_step(state, types, kappa, _OPT, SIGMA, BASELINE_RATE)


class ReinforceMarket(Market):
    game = "team"
    checkpointable = False  # the learners' JAX/optax state rides under extra
    payment_kind = "none"

    def __init__(self, scenario):
        super().__init__(scenario)
        for i, a in enumerate(scenario.agents):
            if a.backend != "policy" or a.policy != "truthful":
                raise ScenarioError(f"agents[{i}].policy: mechanism 'reinforce' runs only truthful policy agents")
        self.kappa = float(scenario.game.congestion)
        self.types = team.TeamTypes(jnp.asarray([a.value for a in scenario.agents], jnp.float64),
                                    jnp.asarray([a.curvature for a in scenario.agents], jnp.float64))
        self.w_star = float(team.optimal_welfare(self.types, self.kappa))
        self._audit: tuple[int, Any] | None = None

    def _init(self):
        n = len(self.agent_ids)
        return rl.reinforce_init(jnp.zeros(n), _OPT, jax.random.PRNGKey(self.scenario.scenario.seed), self.types, self.kappa)

    def initial_state(self) -> dict[str, Any]:
        return {"reports": None, "actions": np.zeros(len(self.agent_ids)), "extra": {"rl": self._init()}}

    def elicit(self, state):
        return {}

    def price(self, state):
        return {}

    def act(self, state):
        x, r, nxt = _round(state["extra"]["rl"], self.types, self.kappa)
        return {"next_actions": {"x": np.asarray(x), "reward": float(r), "rl": nxt}}

    def settle(self, state) -> Settlement:
        nxt = state["next_actions"]
        mu, w = np.asarray(nxt["rl"].mu), float(nxt["rl"].mean_welfare)
        events = [EventRow("actions", {"x": nxt["x"].tolist()}), EventRow("reward", {"R": nxt["reward"]}),
                  EventRow("policy", {"mu": mu.tolist(), "mean_welfare": w})]
        return Settlement(events=events, transfers=[], metrics={"welfare": w, "reward": nxt["reward"]},
                          updates={"actions": mu, "residual": w, "extra": {"rl": nxt["rl"]}})

    def converged(self, state) -> bool:
        return state.get("residual", -np.inf) >= TARGET * self.w_star

    def required_events(self, index: int) -> tuple[str, ...]:
        return ("actions", "reward", "policy")

    def recompute(self, rounds: list[RoundRecord], index: int) -> Recomputed:
        if self._audit is None or self._audit[0] != index:  # replay the learners up to this round
            st = self._init()
            for _ in range(index):
                st = _round(st, self.types, self.kappa)[2]
            self._audit = (index, st)
        x, r, nxt = _round(self._audit[1], self.types, self.kappa)
        self._audit = (index + 1, nxt)
        rec = rounds[index]
        ok = (np.allclose(rec.payload("actions")["x"], np.asarray(x), rtol=1e-12, atol=1e-12)
              and abs(rec.payload("reward")["R"] - float(r)) <= 1e-12
              and np.allclose(rec.payload("policy")["mu"], np.asarray(nxt.mu), rtol=1e-12, atol=1e-12))
        detail = "" if ok else "logged sample, reward or policy differs from the replayed learners"
        return Recomputed(payments=np.zeros(len(self.agent_ids)), checks={"policy_recompute": (ok, detail)})

    def summary(self, state) -> dict[str, Any]:
        mu = np.asarray(state["actions"])
        w = float(team.welfare(jnp.asarray(mu), self.types, self.kappa))
        return {
            "welfare": w,  # welfare of the mean policy
            "optimal_welfare": self.w_star,
            "welfare_gap": welfare_gap(w, self.w_star),
            "target_welfare": TARGET * self.w_star,
            "agents": {aid: {"action": float(mu[i]), "payment": 0.0} for i, aid in enumerate(self.agent_ids)},
        }
