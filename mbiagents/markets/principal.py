"""The two-phase principal in the round loop (``game = "principal-mdp"``,
``mechanism = "two-phase"``): ``mechanisms.principal`` on the pollution MDP of
``mechanisms.games.principal_mdp``.

Round ``t`` (MDP state ``s_t`` going in, ``s_0 = 0``):

1. elicit: nothing is reported (the agent's reward is private and never asked for);
2. mechanism: the principal posts the menu ``tau[s, a]`` (``pr.principal_transfers``);
3. act: the Q-learning agent picks ``a_t`` (epsilon-greedy on its learned reward plus the
   menu), earns its private reward, the MDP moves to ``s_{t+1}``, the agent learns;
4. settle: the principal pays ``tau[s_t, a_t]`` (treasury -> agent, kind ``transfer``),
   observes ``(s_t, a_t)`` and advances its schedule (``pr.principal_update``).

The round's randomness is ``jax.random.split(PRNGKey(seed), T)[t]`` split like
``pr.simulate``, so a run reproduces ``pr.simulate(mdp, PRNGKey(seed), T, cfg)`` round for
round. The schedule's horizon ``T`` (epoch length ``ceil(sqrt T)``) is the run's round
limit (``--rounds`` overrides it and is recorded in the run's scenario).

Ledger per round: events ``menu`` (``tau``), ``step`` (``s``, ``a``, ``s_next`` and the
agent's realised private ``reward``, kept for replay/inference; the principal never uses
it) and ``outcome`` (social ``welfare`` ``r(s,a) - e(s)``, ``transfer`` paid). ``mbi audit``
replays the principal's schedule from the logged ``(s, a)`` and checks every menu, every
payment, the welfare and the state chain ``s_next(t) = s(t+1)``.

Summary: ``welfare`` is the average social welfare per round over the run (transfers
excluded, they are welfare-neutral), ``optimal_welfare`` the first-best gain ``g*``, and
``regret`` the welfare regret ``R(T) = sum_t (g* - w_t)`` with the slope of ``log R(t)`` on
``log t`` over the run (noisy for a single run and a small ``T``; the benchmark fits
``R(T)`` across horizons and seeds), next to the same figures for the unincentivised
learner on the same randomness (``pr.simulate(mode="none")``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np

from mechanisms import principal as pr
from mechanisms.games import principal_mdp as pm
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.ledger.payments import payment_transfers
from mbiagents.markets.base import Market, Recomputed, Settlement, welfare_gap


@partial(jax.jit, static_argnames=("cfg",))
def _menu(pst, cfg):
    return pr.principal_transfers(pst, cfg)


@partial(jax.jit, static_argnames=("eps0",))
def _agent(ast, s, menu, key, mdp, eps0):
    """The agent's round, exactly as in ``pr.simulate``: act, private reward, move, learn."""
    k_act, k_rew, k_next = jax.random.split(key, 3)
    a = pr.q_agent_act(ast, s, menu, k_act, eps0)
    r = pm.agent_reward(mdp, s, a, k_rew)
    s_next = pm.transition(mdp, s, a, k_next)
    return a, r, s_next, pr.q_agent_update(ast, s, a, r, s_next)


@partial(jax.jit, static_argnames=("cfg",))
def _principal(pst, s, a, menu, mdp, cfg):
    """Transfer paid ``menu[s, a]``, welfare ``w(s, a)`` and the principal's next state."""
    model = pr.PrincipalModel(mdp.P, mdp.externality)
    return menu[s, a], pm.welfare(mdp, s, a), pr.principal_update(pst, s, a, model, cfg)


def _slope(regret_curve: np.ndarray) -> float | None:
    """Slope of ``log R(t)`` on ``log t`` at 20 log-spaced t over the last 90% of the run
    (``None`` when undefined: fewer than 20 rounds, or a regret that is not positive)."""
    T = len(regret_curve)
    ts = np.unique(np.geomspace(max(1, T // 10), T, 20).astype(int))
    r = regret_curve[ts - 1]
    if T < 20 or np.any(r <= 0):
        return None
    return pr.regret_exponent(ts, r)


class PrincipalMarket(Market):
    game = "principal-mdp"
    payment_kind = "transfer"
    schedules_by_horizon = True  # the two-phase schedule (epoch length, bisection) is planned for T
    checkpointable = False  # PrincipalState / QAgentState records under extra

    def __init__(self, scenario):
        super().__init__(scenario)
        g = scenario.game
        self.mdp = pm.pollution(g.n_states, g.r_clean, g.r_dirty, g.externality, g.move, g.noise)
        self.horizon = scenario.scenario.rounds
        self.cfg = pr.default_config(self.horizon, g.bisect_steps, g.tau_max)
        self.eps0 = float(g.eps0)
        self.key = jax.random.PRNGKey(scenario.scenario.seed)
        self._keys = None
        self._audit: tuple[int, Any] | None = None  # (next round, principal state) of the audit replay

    @property
    def keys(self):
        if self._keys is None:
            self._keys = np.asarray(jax.random.split(self.key, self.horizon))  # host copy: no dispatch per round
        return self._keys

    def _init_principal(self):
        n_s, n_a = self.mdp.reward.shape
        return pr.principal_init(n_s, n_a, self.cfg)

    # ---- the round ------------------------------------------------------------------
    def initial_state(self) -> dict[str, Any]:
        n_s, n_a = self.mdp.reward.shape
        return {"reports": None, "actions": np.zeros(1), "paid_total": np.zeros(1),
                "extra": {"s": 0, "pst": self._init_principal(), "ast": pr.q_agent_init(n_s, n_a),
                          "welfare": np.zeros(self.horizon), "transfers": 0.0}}

    def elicit(self, state):
        return {}

    def price(self, state):
        return {"signals": _menu(state["extra"]["pst"], self.cfg)}

    def act(self, state):
        ex, t = state["extra"], state["round"]
        a, r, s_next, ast = _agent(ex["ast"], ex["s"], state["signals"], self.keys[t], self.mdp, self.eps0)
        a, r, s_next = jax.device_get((a, r, s_next))
        return {"next_actions": {"a": int(a), "reward": float(r), "s_next": int(s_next), "ast": ast}}

    def settle(self, state) -> Settlement:
        ex, t, nxt = state["extra"], state["round"], state["next_actions"]
        s, a = ex["s"], nxt["a"]
        paid, w, pst = _principal(ex["pst"], s, a, state["signals"], self.mdp, self.cfg)
        paid, w = (float(v) for v in jax.device_get((paid, w)))
        welfare = ex["welfare"]
        welfare[t] = w  # preallocated per-run buffer (the summary's regret curve)
        events = [
            EventRow("menu", {"tau": np.asarray(state["signals"]).tolist()}),
            EventRow("step", {"s": int(s), "a": a, "s_next": nxt["s_next"], "reward": nxt["reward"]}),
            EventRow("outcome", {"welfare": w, "transfer": paid}),
        ]
        pay = np.array([-paid])  # the agent is paid: a negative payment
        return Settlement(
            events=events,
            transfers=payment_transfers(self.agent_ids, pay, self.payment_kind),
            metrics={"welfare": w, "transfer": paid},
            updates={"actions": np.array([float(a)]), "payments": pay, "paid_total": state["paid_total"] + pay,
                     "extra": {**ex, "s": nxt["s_next"], "pst": pst, "ast": nxt["ast"], "welfare": welfare}},
        )

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("menu", "step", "outcome")

    def recompute(self, rounds: list[RoundRecord], index: int) -> Recomputed:
        if self._audit is None or self._audit[0] != index:  # replay the schedule up to this round
            pst = self._init_principal()
            for r in rounds[:index]:
                st = r.payload("step")
                pst = _principal(pst, st["s"], st["a"], _menu(pst, self.cfg), self.mdp, self.cfg)[2]
            self._audit = (index, pst)
        pst = self._audit[1]
        rec = rounds[index]
        st, out = rec.payload("step"), rec.payload("outcome")
        menu = _menu(pst, self.cfg)
        paid, w, pst_next = _principal(pst, st["s"], st["a"], menu, self.mdp, self.cfg)
        self._audit = (index + 1, pst_next)
        logged = np.asarray(rec.payload("menu")["tau"], np.float64)
        s_prev = rounds[index - 1].payload("step")["s_next"] if index else 0
        ok_menu = bool(np.allclose(logged, np.asarray(menu), rtol=0, atol=1e-12))
        ok_w = abs(float(w) - out["welfare"]) <= 1e-12
        return Recomputed(payments=np.array([-float(paid)]), checks={
            "menu_recompute": (ok_menu, "" if ok_menu else f"logged menu {logged.tolist()}, recomputed {np.asarray(menu).tolist()}"),
            "state_chain": (st["s"] == s_prev, "" if st["s"] == s_prev else f"s={st['s']} but the previous round moved to {s_prev}"),
            "welfare_recompute": (ok_w, "" if ok_w else f"logged welfare {out['welfare']!r}, recomputed {float(w)!r}"),
        })

    # ---- summary --------------------------------------------------------------------
    def summary(self, state) -> dict[str, Any]:
        T = int(state["round"])
        ex = state["extra"]
        w = np.asarray(ex["welfare"][:T])
        g = float(jax.jit(pm.first_best)(self.mdp)[1])
        regret = np.cumsum(g - w)
        base = jax.jit(pr.simulate, static_argnums=(2, 3, 4, 5))(self.mdp, self.key, self.horizon, self.cfg, "none", self.eps0)
        regret_none = np.cumsum(g - np.asarray(base.welfare)[:T])
        pst = ex["pst"]
        menu = np.asarray(_menu(pst, self.cfg))
        aid = self.agent_ids[0]
        paid = -float(state["paid_total"][0])
        mean_w = float(w.mean()) if T else 0.0
        return {
            "welfare": mean_w,  # average social welfare per round (transfers excluded)
            "optimal_welfare": g,  # first-best average welfare per round
            "welfare_gap": welfare_gap(mean_w, g),
            "agents": {aid: {"action": int(state["actions"][0]), "payment": float(state["payments"][0]) if T else 0.0,
                             "total_paid": -paid, "total_received": paid}},
            "incentives": {"menu": menu.tolist(), "estimated_minimal_transfers": np.asarray(pr.estimated_transfers(pst)).tolist(),
                           "target_policy": np.asarray(pst.target).tolist(), "steering": bool(pst.steering)},
            "regret": {
                "T": T,
                "total": float(regret[-1]) if T else 0.0,
                "exponent_in_run": _slope(regret),
                "no_incentives_total": float(regret_none[-1]) if T else 0.0,
                "no_incentives_exponent_in_run": _slope(regret_none),
                "note": "slope of log R(t) on log t within one run: noisy for small T; "
                        "benchmarks/bench_principal.py fits R(T) across horizons and seeds",
            },
        }
