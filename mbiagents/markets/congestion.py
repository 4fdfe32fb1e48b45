"""Congestion (tolling) market: logit-Q learners choose routes under posted tolls.

``n`` agents each pick one of ``A`` routes per round. With ``L`` the load (number of agents)
of the chosen route ``a``, an agent's payoff is

    u_i = -(c1[a] L + c2[a] L^2) - tolls[a] L,

the DIML E2 congestion payoff (``mechanisms.games.diml_envs.congestion_mechanism``) with
``tau = -tolls``. **Sign of tolls**: ``tolls[a] > 0`` is a toll the user of route ``a`` pays
(``tolls[a] L``, agent -> treasury); ``tolls[a] < 0`` is a subsidy it receives
(treasury -> agent). The congestion cost itself is borne by the agents and is not money.

Round ``t`` (episode ``t // episode_length``, step ``t % episode_length``):

1. elicit: nothing to report (costs are public, tolls posted);
2. mechanism: the posted tolls are the signal;
3. act: every learner samples a route from ``(1 - eps) softmax(beta Q) + eps / A`` (``Q``
   reset to 0 at the start of every episode, so the first step is uniform);
4. settle: toll transfers, the actions event, and the learners' update
   ``Q <- (1 - alpha) Q + alpha u_cf`` on the counterfactual payoffs of every route.

Payments are a function of the logged actions and the tolls only, so ``mbi audit``
recomputes every transfer; the logged actions are the trajectories ``mbi infer`` fits.
"""

from __future__ import annotations

from typing import Any, TypedDict

import jax
import numpy as np

from mechanisms.games.diml_envs import CongestionParams, congestion_mechanism
from mbiagents.agents.policy import LogitQPopulation
from mbiagents.ledger.money import settled
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.ledger.payments import payment_transfers
from mbiagents.markets.base import Market, Recomputed, Settlement, welfare_gap
from mbiagents.scenario import CongestionScenario


def toll_payments(actions: np.ndarray, tolls: np.ndarray) -> np.ndarray:
    """What each agent pays: ``tolls[a_i] * L_{a_i}`` (negative: a subsidy it receives)."""
    a = np.asarray(actions, dtype=np.int64)
    loads = np.bincount(a, minlength=len(tolls))
    return np.asarray(tolls, np.float64)[a] * loads[a]


def route_costs(loads: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Total congestion cost of each route, ``L (c1 L + c2 L^2)``."""
    return loads * (c1 * loads + c2 * loads * loads)


def optimal_cost(n_agents: int, c1: np.ndarray, c2: np.ndarray) -> float:
    """Least total congestion cost over all route assignments: greedy on marginal cost
    (exact, as each route's total cost is convex in its load for ``c1, c2 >= 0``)."""
    loads = np.zeros(len(c1))
    for _ in range(n_agents):
        marginal = route_costs(loads + 1, c1, c2) - route_costs(loads, c1, c2)
        loads[int(np.argmin(marginal))] += 1
    return float(route_costs(loads, c1, c2).sum())


class LearnersQ(TypedDict):
    """Across rounds: the learners' ``Q`` tables, the last actions, payments and payoffs."""

    q: np.ndarray
    actions: np.ndarray
    payments: np.ndarray
    payoffs: np.ndarray


class RouteStep(TypedDict, total=False):
    signals: np.ndarray  # the posted tolls
    q: np.ndarray  # Q this round acts on (reset at an episode's start)
    next_actions: np.ndarray


class CongestionMarket(Market[LearnersQ, None]):
    game = "congestion"
    payment_kind = "toll"
    audit_reads_transfers = False  # payments compared from per-agent sums

    def __init__(self, scenario: CongestionScenario):
        super().__init__(scenario)
        g = scenario.game
        self.c1, self.c2 = np.asarray(g.c1, np.float64), np.asarray(g.c2, np.float64)
        self.tolls = np.asarray(g.tolls, np.float64)
        self.n_actions = len(self.tolls)
        self.episode_length = g.episode_length
        self.population = LogitQPopulation.from_specs(scenario.agents, self.n_actions, scenario.scenario.seed)
        mech = congestion_mechanism(len(self.agent_ids), self.n_actions)
        self.true_params = CongestionParams(self.c1, self.c2, -self.tolls)  # the DIML parameters of this game
        self._counterfactual = jax.jit(mech.counterfactual)

    # ---- the round ------------------------------------------------------------------
    def init_state(self) -> LearnersQ:
        n = len(self.agent_ids)
        return LearnersQ(q=self.population.reset(), actions=np.zeros(n, np.int64), payments=np.zeros(n),
                         payoffs=np.zeros(n))

    def price(self, state) -> RouteStep:
        return RouteStep(signals=self.tolls)

    def act(self, state) -> RouteStep:
        r = state["round"]
        q = self.population.reset() if r % self.episode_length == 0 else state["market"]["q"]
        return {**state["step"], "q": q, "next_actions": self.population.act(q, r)}

    def settle(self, state) -> Settlement[LearnersQ]:
        r, step = state["round"], state["step"]
        a = np.asarray(step["next_actions"], np.int64)
        t = toll_payments(a, self.tolls)
        loads = np.bincount(a, minlength=self.n_actions)
        welfare = -float(route_costs(loads, self.c1, self.c2).sum())
        u_cf = np.asarray(self._counterfactual(self.true_params, a))
        episode, step_index = divmod(r, self.episode_length)
        events = [
            EventRow("actions", {"episode": episode, "step": step_index, "a": a.tolist()}),
            EventRow("payments", {"t": t.tolist()}),
            EventRow("outcome", {"loads": loads.tolist(), "welfare": welfare}),
        ]
        return Settlement(
            events=events,
            transfers=payment_transfers(self.agent_ids, t, self.payment_kind),
            state=LearnersQ(q=self.population.learn(step["q"], u_cf), actions=a, payments=t,
                            payoffs=u_cf[np.arange(len(a)), a]),
            metrics={"welfare": welfare},
        )

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("actions", "payments", "outcome")

    def audit_round(self, a_: None, rec: RoundRecord) -> tuple[None, Recomputed]:
        """Tolls are a function of the round's logged actions alone (no audit state)."""
        logged = rec.payload("actions")
        a = np.asarray(logged["a"], np.int64)
        ok = (len(a) == len(self.agent_ids) and bool(np.all((a >= 0) & (a < self.n_actions)))
              and (logged["episode"], logged["step"]) == divmod(rec.index, self.episode_length))
        if not ok:
            return None, Recomputed(payments=np.zeros(len(self.agent_ids)), checks={
                "actions_valid": (False, f"actions {logged!r} out of range or misnumbered")})
        return None, Recomputed(payments=toll_payments(a, self.tolls), checks={"actions_valid": (True, "")})

    # ---- summary --------------------------------------------------------------------
    def summary(self, state, paid) -> dict[str, Any]:
        ms = state["market"]
        a = np.asarray(ms["actions"], np.int64)
        t = settled(ms["payments"])
        payoffs = np.asarray(ms["payoffs"])  # toll included
        loads = np.bincount(a, minlength=self.n_actions)
        w = -float(route_costs(loads, self.c1, self.c2).sum())
        w_star = -optimal_cost(len(a), self.c1, self.c2)
        agents = {
            aid: {"action": int(a[i]), "payment": float(t[i]), "utility": float(payoffs[i]),
                  "value": float(payoffs[i] + t[i]),
                  "total_paid": float(paid[i])}
            for i, aid in enumerate(self.agent_ids)
        }
        return {
            "welfare": w,
            "optimal_welfare": w_star,
            "welfare_gap": welfare_gap(w, w_star),
            "loads": loads.tolist(),
            "agents": agents,
            "budget": {"payments": float(t.sum()), "operator_cost": 0.0, "surplus": float(t.sum())},
        }
