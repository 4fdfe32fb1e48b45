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
from typing import Any, TypedDict

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


_agent = jax.jit(pr.agent_round, static_argnames=("eps0",))  # the agent's round, as in pr.simulate


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


class PrincipalState(TypedDict):
    """Across rounds (JAX records: not checkpointable): the MDP state ``s``, the principal
    and the agent, each round's welfare (a buffer of the horizon), the last action and payment."""

    s: int
    pst: pr.PrincipalState
    ast: pr.QAgentState
    welfare: np.ndarray
    actions: np.ndarray
    payments: np.ndarray


class PrincipalStep(TypedDict, total=False):
    signals: Any  # the posted menu tau[s, a]
    a: int
    reward: float
    s_next: int
    ast: pr.QAgentState  # the agent after learning


class PrincipalAudit(TypedDict):
    pst: pr.PrincipalState  # the schedule replayed from the logged (s, a) of earlier rounds
    s_next: int  # the state the previous round logged it moved to


class PrincipalMarket(Market[PrincipalState, PrincipalAudit]):
    game = "principal-mdp"
    payment_kind = "transfer"
    audit_reads_transfers = False  # payments compared from per-agent sums
    schedules_by_horizon = True  # the two-phase schedule (epoch length, bisection) is planned for T
    checkpointable = False  # PrincipalState / QAgentState records in the market state

    def __init__(self, scenario):
        super().__init__(scenario)
        g = scenario.game
        self.mdp = pm.pollution(g.n_states, g.r_clean, g.r_dirty, g.externality, g.move, g.noise)
        self.horizon = scenario.scenario.rounds
        self.cfg = pr.default_config(self.horizon, g.bisect_steps, g.tau_max)
        self.eps0 = float(g.eps0)
        self.key = jax.random.PRNGKey(scenario.scenario.seed)
        self._keys = None

    @property
    def keys(self):
        if self._keys is None:
            self._keys = np.asarray(jax.random.split(self.key, self.horizon))  # host copy: no dispatch per round
        return self._keys

    def _init_principal(self):
        n_s, n_a = self.mdp.reward.shape
        return pr.principal_init(n_s, n_a, self.cfg)

    # ---- the round ------------------------------------------------------------------
    def init_state(self) -> PrincipalState:
        n_s, n_a = self.mdp.reward.shape
        return PrincipalState(s=0, pst=self._init_principal(), ast=pr.q_agent_init(n_s, n_a),
                              welfare=np.zeros(self.horizon), actions=np.zeros(1), payments=np.zeros(1))

    def price(self, state) -> PrincipalStep:
        return PrincipalStep(signals=_menu(state["market"]["pst"], self.cfg))

    def act(self, state) -> PrincipalStep:
        ms, t, step = state["market"], state["round"], state["step"]
        a, r, s_next, ast = _agent(ms["ast"], ms["s"], step["signals"], self.keys[t], self.mdp, self.eps0)
        a, r, s_next = jax.device_get((a, r, s_next))
        return {**step, "a": int(a), "reward": float(r), "s_next": int(s_next), "ast": ast}

    def settle(self, state) -> Settlement[PrincipalState]:
        ms, t, step = state["market"], state["round"], state["step"]
        s, a = ms["s"], step["a"]
        paid, w, pst = _principal(ms["pst"], s, a, step["signals"], self.mdp, self.cfg)
        paid, w = (float(v) for v in jax.device_get((paid, w)))
        welfare = ms["welfare"]
        welfare[t] = w  # preallocated per-run buffer (the summary's regret curve)
        events = [
            EventRow("menu", {"tau": np.asarray(step["signals"]).tolist()}),
            EventRow("step", {"s": int(s), "a": a, "s_next": step["s_next"], "reward": step["reward"]}),
            EventRow("outcome", {"welfare": w, "transfer": paid}),
        ]
        pay = np.array([-paid])  # the agent is paid: a negative payment
        return Settlement(
            events=events,
            transfers=payment_transfers(self.agent_ids, pay, self.payment_kind),
            state=PrincipalState(s=step["s_next"], pst=pst, ast=step["ast"], welfare=welfare,
                                 actions=np.array([float(a)]), payments=pay),
            metrics={"welfare": w, "transfer": paid},
        )

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("menu", "step", "outcome")

    def audit_init(self) -> PrincipalAudit:
        return PrincipalAudit(pst=self._init_principal(), s_next=0)

    def audit_round(self, a: PrincipalAudit, rec: RoundRecord) -> tuple[PrincipalAudit, Recomputed]:
        st, out = rec.payload("step"), rec.payload("outcome")
        menu = _menu(a["pst"], self.cfg)
        paid, w, pst_next = _principal(a["pst"], st["s"], st["a"], menu, self.mdp, self.cfg)
        logged = np.asarray(rec.payload("menu")["tau"], np.float64)
        s_prev = a["s_next"]
        ok_menu = bool(np.allclose(logged, np.asarray(menu), rtol=0, atol=1e-12))
        ok_w = abs(float(w) - out["welfare"]) <= 1e-12
        return PrincipalAudit(pst=pst_next, s_next=st["s_next"]), Recomputed(payments=np.array([-float(paid)]), checks={
            "menu_recompute": (ok_menu, "" if ok_menu else f"logged menu {logged.tolist()}, recomputed {np.asarray(menu).tolist()}"),
            "state_chain": (st["s"] == s_prev, "" if st["s"] == s_prev else f"s={st['s']} but the previous round moved to {s_prev}"),
            "welfare_recompute": (ok_w, "" if ok_w else f"logged welfare {out['welfare']!r}, recomputed {float(w)!r}"),
        })

    # ---- summary --------------------------------------------------------------------
    def summary(self, state, paid) -> dict[str, Any]:
        T = int(state["round"])
        ms = state["market"]
        w = np.asarray(ms["welfare"][:T])
        g = float(jax.jit(pm.first_best)(self.mdp)[1])
        regret = np.cumsum(g - w)
        base = jax.jit(pr.simulate, static_argnums=(2, 3, 4, 5))(self.mdp, self.key, self.horizon, self.cfg, "none", self.eps0)
        regret_none = np.cumsum(g - np.asarray(base.welfare)[:T])
        pst = ms["pst"]
        menu = np.asarray(_menu(pst, self.cfg))
        aid = self.agent_ids[0]
        received = -float(paid[0])
        mean_w = float(w.mean()) if T else 0.0
        return {
            "welfare": mean_w,  # average social welfare per round (transfers excluded)
            "optimal_welfare": g,  # first-best average welfare per round
            "welfare_gap": welfare_gap(mean_w, g),
            "agents": {aid: {"action": int(ms["actions"][0]), "payment": float(ms["payments"][0]) if T else 0.0,
                             "total_paid": float(paid[0]), "total_received": received}},
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
