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
The run converges with the first round whose ``|P grad S(x)|_inf`` (computed at settlement)
is at most the scenario's tolerance (with an unused link at the optimum it never does; the
round limit ends the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from mechanisms import social_gradient as sg
from mechanisms.games import routing as rt
from mbiagents.ledger.money import settled
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.markets.report_data import _payload
from mbiagents.ledger.payments import payment_transfers
from mbiagents.markets.base import Market, Recomputed, Settlement, converged_below, welfare_gap


@dataclass(frozen=True)
class PlannedGame:
    """What the social-gradient market needs of its game: the social cost ``S(x, params)``,
    the tangent projection ``P``, how the planner's ``p`` is posted, the agents'
    equilibrium and gradient-play responses, and the optimum ``(x°, S(x°), reference
    incentive)``. Plain functions of arrays (hashable: a static argument of the jits)."""

    social_cost: Callable
    project: Callable
    post: Callable
    equilibrium: Callable  # (x, posted, params, eta) -> x
    gradient_step: Callable  # (x, posted, params, eta) -> x
    optimum: Callable  # params -> (x°, S(x°), reference incentive)
    initial_actions: Callable  # params, n -> x_0


def _routing_optimum(params):
    """Pigouvian tolls ``x l'(x)`` at ``x°``, shifted to a zero minimum."""
    xo = rt.routing_optimum(params)
    ref = rt.pigouvian_toll(xo, params)
    return xo, rt.social_cost(xo, params), ref - jnp.min(ref)


def _quadratic_optimum(params):
    xo = rt.quadratic_optimum(params)
    return xo, rt.quadratic_social_cost(xo, params), rt.quadratic_optimal_incentive(params)


ROUTING = PlannedGame(
    social_cost=rt.social_cost, project=rt.project_tangent, post=lambda p: p - jnp.min(p),
    equilibrium=lambda x, posted, params, eta: rt.wardrop_equilibrium(params, posted, x0=x, eta=eta),
    gradient_step=lambda x, posted, params, eta: rt.routing_equilibrium_step(x, posted, params, eta),
    optimum=_routing_optimum, initial_actions=lambda params, n: np.full(n, float(params.demand) / n))
QUADRATIC = PlannedGame(
    social_cost=rt.quadratic_social_cost, project=lambda v: v, post=lambda p: p,
    equilibrium=lambda x, posted, params, eta: rt.quadratic_equilibrium(params, posted),
    gradient_step=lambda x, posted, params, eta: x - eta * (rt.quadratic_pseudo_gradient(x, params) + posted),
    optimum=_quadratic_optimum, initial_actions=lambda params, n: np.zeros(n))


@partial(jax.jit, static_argnames=("game",))
def _post(p, game: PlannedGame):
    return game.post(p)


@partial(jax.jit, static_argnames=("game",))
def _plan(p, x, params, step, game: PlannedGame):
    """Posted incentives, payments ``posted * x``, ``S(x)``, next ``p`` and ``|P grad S|``."""
    posted = game.post(p)
    s, g = jax.value_and_grad(game.social_cost)(x, params)
    st = sg.social_gradient_step(sg.social_gradient_init(p), g, step, game.project)
    return posted, posted * x, s, st.p, st.grad_norm


@partial(jax.jit, static_argnames=("game", "response", "inner"))
def _respond(x, posted, params, eta, game: PlannedGame, response, inner):
    """The agents' move on the posted incentives (their own costs; the planner never sees them)."""
    if response == "equilibrium":
        return game.equilibrium(x, posted, params, eta)
    return jax.lax.fori_loop(0, inner, lambda _, z: game.gradient_step(z, posted, params, eta), x)


class PlannerState(TypedDict):
    """Across rounds: the agents' actions ``x_t``, the planner's ``p_t``, what was posted
    and paid last round."""

    actions: np.ndarray
    p: np.ndarray
    posted: np.ndarray | None
    payments: np.ndarray


class PlannerStep(TypedDict, total=False):
    signals: np.ndarray  # posted incentives
    next_actions: np.ndarray  # the agents' response x_{t+1}


class PlannerAudit(TypedDict):
    p_next: np.ndarray | None  # the planner's update logged by the previous round


class SocialGradientMarket(Market[PlannerState, PlannerAudit]):
    game = "routing"
    payment_kind = "incentive"
    audit_reads_transfers = False  # payments compared from per-agent sums

    def __init__(self, scenario):
        super().__init__(scenario)
        g = scenario.game
        self.game = scenario.scenario.game
        self.planned = ROUTING if self.game == "routing" else QUADRATIC
        self.step, self.response, self.eta, self.inner = g.step, g.response, g.eta, g.inner
        f64 = lambda k: jnp.asarray([getattr(a, k) for a in scenario.agents], jnp.float64)  # noqa: E731
        if self.game == "routing":
            self.params = rt.ParallelLinks(f64("a"), f64("b"), f64("degree"), jnp.asarray(g.demand, jnp.float64))
        else:
            n = len(scenario.agents)
            self.params = rt.QuadraticGame(f64("q"), f64("r"), jnp.full((n,), g.coupling), jnp.asarray(g.congestion))

    # ---- the round ------------------------------------------------------------------
    def init_state(self) -> PlannerState:
        n = len(self.agent_ids)
        return PlannerState(actions=self.planned.initial_actions(self.params, n), p=np.zeros(n), posted=None,
                            payments=np.zeros(n))

    def price(self, state) -> PlannerStep:
        return PlannerStep(signals=np.asarray(_post(jnp.asarray(state["market"]["p"]), self.planned)))

    def act(self, state) -> PlannerStep:
        step = state["step"]
        x = _respond(jnp.asarray(state["market"]["actions"]), jnp.asarray(step["signals"]), self.params, self.eta,
                     self.planned, self.response, self.inner)
        return {**step, "next_actions": np.asarray(x)}

    def settle(self, state) -> Settlement[PlannerState]:
        p, x = state["market"]["p"], state["step"]["next_actions"]
        posted, t, s, p_next, gnorm = (np.asarray(v) for v in _plan(p, x, self.params, self.step, self.planned))
        events = [
            EventRow("incentives", {"p": p.tolist(), "posted": posted.tolist()}),
            EventRow("actions", {"x": x.tolist()}),
            EventRow("social_cost", {"S": float(s), "grad_norm": float(gnorm)}),
            EventRow("planner", {"p_next": p_next.tolist()}),
        ]
        return Settlement(
            events=events,
            transfers=payment_transfers(self.agent_ids, t, self.payment_kind),
            state=PlannerState(actions=x, p=p_next, posted=posted, payments=t),
            done=converged_below(float(gnorm), self.tolerance),
            metrics={"social_cost": float(s), "grad_norm": float(gnorm)},
        )

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("incentives", "actions", "social_cost", "planner")

    def audit_init(self) -> PlannerAudit:
        return PlannerAudit(p_next=None)

    def audit_round(self, a: PlannerAudit, rec: RoundRecord) -> tuple[PlannerAudit, Recomputed]:
        inc = rec.payload("incentives")
        p = np.asarray(inc["p"], np.float64)
        x = np.asarray(rec.payload("actions")["x"], np.float64)
        posted, t, s, p_next, gnorm = (np.asarray(v) for v in _plan(p, x, self.params, self.step, self.planned))
        prev = a["p_next"] if a["p_next"] is not None else np.zeros_like(p)
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
        return PlannerAudit(p_next=logged_next), Recomputed(payments=t, checks=checks)

    # ---- summary --------------------------------------------------------------------
    def optimum(self) -> tuple[np.ndarray, float, np.ndarray]:
        """Social optimum ``x°``, ``S(x°)`` and the reference incentive: Pigouvian tolls
        ``x l'(x)`` at ``x°`` shifted to a zero minimum (routing); the closed-form optimal
        incentive (quadratic game)."""
        xo, so, ref = self.planned.optimum(self.params)
        return np.asarray(xo), float(so), np.asarray(ref)

    def summary(self, state, paid) -> dict[str, Any]:
        ms = state["market"]
        x = np.asarray(ms["actions"])
        s = float(self.planned.social_cost(jnp.asarray(x), self.params))
        xo, so, ref = self.optimum()
        posted = np.asarray(ms["posted"] if ms["posted"] is not None else _post(jnp.asarray(ms["p"]), self.planned))
        t = settled(ms["payments"])
        agents = {
            aid: {"action": float(x[i]), "incentive": float(posted[i]), "payment": float(t[i]),
                  "total_paid": float(paid[i]),
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
            "treasury_revenue": float(paid.sum()),
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
