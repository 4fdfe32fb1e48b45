"""Social-gradient incentive design in the round loop (``mechanism = "social-gradient"``):
parallel-link routing (``game = "routing"``) and the quadratic aggregative game
(``game = "quadratic"``), ``mechanisms.social_gradient`` on ``mechanisms.games.routing``.

The planner never sees the agents' costs. Round ``t`` (planner incentives ``p_t``, joint
action ``x_t`` going in; ``p_0 = 0``, ``x_0`` an even split of the demand / zeros):

1. elicit: nothing is reported (the agents are programmatic and private);
2. mechanism: the planner posts incentives ``posted(p_t)``;
3. act: agents respond to the posted incentives: the (tolled Wardrop / Nash) equilibrium,
   or ``inner`` steps of their own gradient play (two-timescale);
4. settle: each agent pays ``posted_i x_i`` on its new action (a tax/toll to the treasury;
   negative = a subsidy from the treasury); the planner observes ``x`` and moves
   ``p_{t+1} = p_t + alpha P grad S(x)`` (``sg.social_gradient_step``).

Who pays (routing): agent ``i`` of a routing scenario is the nonatomic user population of
link ``i``; its account pays the link's toll times the link's flow. Posted tolls are the
planner's ``p`` shifted so the smallest is zero (a common shift changes no route choice;
the planner's own ``p`` has mean zero, ``P`` removes the mean): Pigou converges to the toll
``1/2`` on the variable link, ``0`` on the constant one. Quadratic game: ``posted = p``.

Ledger per round: events ``incentives`` (``p``, ``posted``), ``actions`` (``x``),
``social_cost`` (``S(x)``, ``|P grad S|``), ``planner`` (``p_next``); one transfer per agent
(kind ``incentive``). ``mbi audit`` recomputes the posted incentives, the payments, the
social cost and the planner's update from the logged actions, and checks the chain
``p_next(t) = p(t+1)``, ``p(0) = 0``. Welfare is ``-S(x)`` (sign: higher is better).
The run converges when ``|P grad S(x)|_inf`` is at most the scenario's tolerance (with an
unused link at the optimum it never does; the round limit ends the run).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mechanisms import social_gradient as sg
from mechanisms.games import routing as rt
from mbiagents.ledger.money import settled
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.markets.report_data import _payload
from mbiagents.ledger.payments import payment_transfers
from mbiagents.markets.base import Market, Recomputed, Settlement, welfare_gap


def _game_fns(game: str):
    if game == "routing":
        return rt.social_cost, rt.project_tangent, lambda p: p - jnp.min(p)
    return rt.quadratic_social_cost, (lambda v: v), (lambda p: p)


@partial(jax.jit, static_argnames=("game",))
def _post(p, game):
    return _game_fns(game)[2](p)


@partial(jax.jit, static_argnames=("game",))
def _plan(p, x, params, step, game):
    """Posted incentives, payments ``posted * x``, ``S(x)``, next ``p`` and ``|P grad S|``."""
    cost, project, post = _game_fns(game)
    posted = post(p)
    s, g = jax.value_and_grad(cost)(x, params)
    st = sg.social_gradient_step(sg.social_gradient_init(p), g, step, project)
    return posted, posted * x, s, st.p, st.grad_norm


@partial(jax.jit, static_argnames=("game", "response", "inner"))
def _respond(x, posted, params, eta, game, response, inner):
    """The agents' move on the posted incentives (their own costs; the planner never sees them)."""
    if game == "routing":
        if response == "equilibrium":
            return rt.wardrop_equilibrium(params, posted, x0=x, eta=eta)
        return jax.lax.fori_loop(0, inner, lambda _, z: rt.routing_equilibrium_step(z, posted, params, eta), x)
    if response == "equilibrium":
        return rt.quadratic_equilibrium(params, posted)
    return jax.lax.fori_loop(0, inner, lambda _, z: z - eta * (rt.quadratic_pseudo_gradient(z, params) + posted), x)


class SocialGradientMarket(Market):
    game = "routing"
    payment_kind = "incentive"

    def __init__(self, scenario):
        super().__init__(scenario)
        g = scenario.game
        self.game = scenario.scenario.game
        self.step, self.response, self.eta, self.inner = g.step, g.response, g.eta, g.inner
        f64 = lambda k: jnp.asarray([getattr(a, k) for a in scenario.agents], jnp.float64)  # noqa: E731
        if self.game == "routing":
            self.params = rt.ParallelLinks(f64("a"), f64("b"), f64("degree"), jnp.asarray(g.demand, jnp.float64))
        else:
            n = len(scenario.agents)
            self.params = rt.QuadraticGame(f64("q"), f64("r"), jnp.full((n,), g.coupling), jnp.asarray(g.congestion))

    # ---- the round ------------------------------------------------------------------
    def initial_state(self) -> dict[str, Any]:
        n = len(self.agent_ids)
        x0 = np.full(n, float(self.params.demand) / n) if self.game == "routing" else np.zeros(n)
        return {"actions": x0, "reports": None, "paid_total": np.zeros(n), "extra": {"p": np.zeros(n)}}

    def elicit(self, state):
        return {}

    def price(self, state):
        return {"signals": np.asarray(_post(jnp.asarray(state["extra"]["p"]), self.game))}

    def act(self, state):
        x = _respond(jnp.asarray(state["actions"]), jnp.asarray(state["signals"]), self.params, self.eta,
                     self.game, self.response, self.inner)
        return {"next_actions": np.asarray(x)}

    def settle(self, state) -> Settlement:
        p, x = state["extra"]["p"], state["next_actions"]
        posted, t, s, p_next, gnorm = (np.asarray(v) for v in _plan(p, x, self.params, self.step, self.game))
        events = [
            EventRow("incentives", {"p": p.tolist(), "posted": posted.tolist()}),
            EventRow("actions", {"x": x.tolist()}),
            EventRow("social_cost", {"S": float(s), "grad_norm": float(gnorm)}),
            EventRow("planner", {"p_next": p_next.tolist()}),
        ]
        return Settlement(
            events=events,
            transfers=payment_transfers(self.agent_ids, t, self.payment_kind),
            metrics={"social_cost": float(s), "grad_norm": float(gnorm)},
            updates={"actions": x, "payments": t, "paid_total": state["paid_total"] + t, "residual": float(gnorm),
                     "extra": {**state["extra"], "p": p_next, "posted": posted}},
        )

    def converged(self, state) -> bool:
        return state.get("residual", np.inf) <= self.scenario.scenario.tolerance

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("incentives", "actions", "social_cost", "planner")

    def recompute(self, rounds: list[RoundRecord], index: int) -> Recomputed:
        rec = rounds[index]
        inc = rec.payload("incentives")
        p = np.asarray(inc["p"], np.float64)
        x = np.asarray(rec.payload("actions")["x"], np.float64)
        posted, t, s, p_next, gnorm = (np.asarray(v) for v in _plan(p, x, self.params, self.step, self.game))
        prev = np.asarray(rounds[index - 1].payload("planner")["p_next"], np.float64) if index else np.zeros_like(p)
        logged_next = np.asarray(rec.payload("planner")["p_next"], np.float64)
        close = partial(np.allclose, rtol=1e-9, atol=1e-12)
        checks = {
            "incentive_chain": (close(p, prev), "" if close(p, prev) else f"p={p.tolist()} but the previous "
                                f"round's update gave {prev.tolist()}"),
            "incentive_update": (close(p_next, logged_next), "" if close(p_next, logged_next) else
                                 f"logged p_next={logged_next.tolist()}, recomputed {p_next.tolist()}"),
            "posted_recompute": (close(posted, inc["posted"]), "" if close(posted, inc["posted"]) else
                                 f"logged posted={inc['posted']}, recomputed {posted.tolist()}"),
        }
        s_log = rec.payload("social_cost")["S"]
        checks["social_cost_recompute"] = (close(s, s_log), "" if close(s, s_log) else f"logged S={s_log!r}, recomputed {float(s)!r}")
        return Recomputed(payments=t, checks=checks)

    # ---- summary --------------------------------------------------------------------
    def optimum(self) -> tuple[np.ndarray, float, np.ndarray]:
        """Social optimum ``x°``, ``S(x°)`` and the reference incentive: Pigouvian tolls
        ``x l'(x)`` at ``x°`` shifted to a zero minimum (routing); the closed-form optimal
        incentive (quadratic game)."""
        if self.game == "routing":
            xo = rt.routing_optimum(self.params)
            ref = rt.pigouvian_toll(xo, self.params)
            return np.asarray(xo), float(rt.social_cost(xo, self.params)), np.asarray(ref - jnp.min(ref))
        xo = rt.quadratic_optimum(self.params)
        return (np.asarray(xo), float(rt.quadratic_social_cost(xo, self.params)),
                np.asarray(rt.quadratic_optimal_incentive(self.params)))

    def summary(self, state) -> dict[str, Any]:
        x = np.asarray(state["actions"])
        cost = _game_fns(self.game)[0]
        s = float(cost(jnp.asarray(x), self.params))
        xo, so, ref = self.optimum()
        posted = np.asarray(state["extra"].get("posted", _post(jnp.asarray(state["extra"]["p"]), self.game)))
        t = settled(state.get("payments", np.zeros_like(x)))
        agents = {
            aid: {"action": float(x[i]), "incentive": float(posted[i]), "payment": float(t[i]),
                  "total_paid": float(settled(state["paid_total"][i])),
                  "optimal_action": float(xo[i])}
            for i, aid in enumerate(self.agent_ids)
        }
        return {
            "welfare": -s,  # welfare = -social cost (transfers excluded)
            "optimal_welfare": -so,
            "welfare_gap": welfare_gap(-s, -so),
            "social_cost": s,
            "optimal_social_cost": so,
            "agents": agents,
            "incentives": {aid: float(posted[i]) for i, aid in enumerate(self.agent_ids)},
            "reference_incentives": {aid: float(ref[i]) for i, aid in enumerate(self.agent_ids)},
            "treasury_revenue": float(settled(state["paid_total"]).sum()),
        }

    # ---- report -----------------------------------------------------------------------
    def report_data(self, rounds: list[RoundRecord]) -> dict[str, Any]:
        """Logged series plus the planner's posted incentives and the social cost per round;
        welfare is ``-S(x)`` against ``-S*`` of the closed-form optimum."""
        data = super().report_data(rounds)
        nan = float("nan")
        posted = [(_payload(rec, "incentives") or {}).get("posted") for rec in rounds]
        data["incentives"] = {aid: [p[i] if p is not None else nan for p in posted]
                              for i, aid in enumerate(self.agent_ids)}
        social = [(_payload(rec, "social_cost") or {}).get("S", nan) for rec in rounds]
        data["social_cost"] = social
        so = self.optimum()[1]
        data["welfare"] = [-v for v in social]
        data["optimal_welfare"] = [-so] * len(rounds)
        return data
