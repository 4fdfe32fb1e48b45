"""Shared-capacity team market: the team game priced by the DPM with Clarke payments.

Round ``t`` (actions ``x^t`` going in, ``x^0 = 0``):

1. elicit: agents report ``theta_hat`` (logged when it changes; always in round 0);
2. mechanism: signals ``G = -dL/dx`` at ``x^t``, the projected residual and, under the
   ``clearing`` and ``newton`` step rules (``[game] step``), the public price move ``pi``
   (logged with ``G``);
3. act: agents move to ``x^{t+1}`` (policy agents: ``max(0, x + eta (G - pi))``);
4. settle: Clarke payments ``t_i(x^{t+1}; theta_hat)`` for the usage of this round, capped
   by each agent's reported value of its own usage (``dpm.capped_clarke_payments``), one
   transfer per agent (agent -> treasury), plus the outcome.

Hostile reports are harmless: an LLM agent's report must lie in its per-agent bounds from
the scenario's prior (``[game] prior_ratio`` around the type the scenario gives it), and
the cap makes every agent's payment at most what its own report says its usage is worth,
so a truthful agent never pays more than its usage is worth to it, whatever the others
report. The audit checks that (``individual_rationality``, a failing check).

With ``[game] settlement_interval = k`` the rounded payments accumulate per agent and one
netted transfer per agent settles them every ``k`` rounds and in the last round; every
round's payment vector is still logged and recomputed. Per-agent vectors (reports,
signals, actions, payments) are logged as array records (8 bytes per agent and field,
hashed), not JSON.

The run converges when the residual at ``x^t`` is at most the scenario's tolerance
(``Settlement.done`` of the round that computed it).
"""

from __future__ import annotations

from functools import cached_property, partial
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from mechanisms import dpm
from mechanisms.games import team
from mechanisms.learning import projected_gradient_norm, projected_gradient_play
from mbiagents.agents.games import Bounds, TeamAgentInfo, TeamReport, team_act, team_report
from mbiagents.agents.policy import TeamPopulation
from mbiagents.ledger.money import settled, to_minor_units
from mbiagents.ledger.payments import minor_transfers
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.markets.base import Market, Recomputed, Settlement, agent_rows, converged_below, welfare_gap
from mbiagents.scenario import TeamScenario


@partial(jax.jit, static_argnames=("rule",))
def _price(x, reports, kappa, rule="fixed"):
    g = dpm.team_signals(x, reports, kappa)
    return g, projected_gradient_norm(x, g), dpm.announced_price_move(x, g, reports, kappa, rule)


def _outcome(x, reports, kappa):
    """``(aggregate X, operator cost C(X), reported welfare)`` at ``x``."""
    agg = x.sum()
    return agg, team.congestion_cost(agg, kappa), team.welfare(x, reports, kappa)


@jax.jit
def _settle(x, reports, kappa):
    return dpm.capped_clarke_payments(x, reports, kappa), *_outcome(x, reports, kappa)


@jax.jit
def _audit_settle(x, reports, kappa, pivots):
    """``_settle`` and the values ``v_i(x_i)`` under the reports, in one array ``[t (N),
    v (N), aggregate, operator cost, reported welfare]`` (one copy to the host), with the
    pivot welfares ``W_{-i}(x*_{-i})`` of the reports given (the audit computes them when
    the reports change)."""
    t = dpm.capped_clarke_given_pivots(x, reports, kappa, pivots)
    return jnp.concatenate([t, team.values(x, reports), jnp.stack(_outcome(x, reports, kappa))])


#: rounds the audit recomputes in one compiled call (``TeamMarket.audit_rounds``)
AUDIT_WINDOW = 16


@partial(jax.jit, static_argnames=("rule",))
def _audit_rounds(x, x_prev, value, curvature, pivots, kappa, steps, rule="fixed"):
    """``K`` rounds in one call (``[K, N]`` arrays; a loop over the rounds, ``lax.map``, so
    that each round computes on ``[N]`` arrays as the run did): per round the signals and
    price move at ``x_prev`` (``_price``), the policy moves on them (``x_prev + eta (G - pi)``,
    projected) and ``_audit_settle`` at ``x`` under the reports ``(value, curvature)``."""
    def one(row):
        x, x_prev, a, b, p = row
        reports = team.TeamTypes(a, b)
        g, _, move = _price(x_prev, reports, kappa, rule)
        return g, move, projected_gradient_play(x_prev, g - move, steps), _audit_settle(x, reports, kappa, p)

    return jax.lax.map(one, (x, x_prev, value, curvature, pivots))


_welfare_rounds = jax.jit(jax.vmap(team.welfare, in_axes=(0, None, None)))
_values_rounds = jax.jit(jax.vmap(team.values, in_axes=(0, None)))


def _types(payload: dict[str, Any]) -> team.TeamTypes:
    return team.TeamTypes(np.asarray(payload["value"], np.float64), np.asarray(payload["curvature"], np.float64))


def _close(names: list[str], logged: np.ndarray, recomputed: np.ndarray, what: str,
           tol: float = 1e-9) -> tuple[bool, str]:
    """(ok, first mismatch) of logged against recomputed values, to ``tol`` (abs and rel:
    ``np.isclose``, whose finite case is written out for speed)."""
    d = np.abs(recomputed - logged)
    if (d <= tol + tol * np.abs(logged)).all() and np.isfinite(d).all():
        return True, ""
    ok = np.isclose(recomputed, logged, rtol=tol, atol=tol)
    if ok.all():
        return True, ""
    j = int(np.flatnonzero(~ok)[0])
    return False, f"{names[j]}: logged {what}={float(logged[j])!r}, recomputed {float(recomputed[j])!r}"


def _at_least(names: list[str], values: np.ndarray, bound: float, what: str, slack: float = 1e-9) -> tuple[bool, str]:
    """(ok, first violation) of ``values >= bound`` up to float ``slack``."""
    bad = values < bound - slack
    if not bad.any():
        return True, ""
    j = int(np.flatnonzero(bad)[0])
    return False, f"{names[j]}: {what} = {float(values[j])!r} < {bound}"


class TeamState(TypedDict):
    """The team market across rounds: usage ``x^t``, the last logged reports, the last
    round's payments, and the rounded payments not yet settled (minor units)."""

    actions: np.ndarray
    logged_reports: dict[str, np.ndarray] | None
    payments: np.ndarray
    unsettled: np.ndarray


class TeamStep(TypedDict, total=False):
    """One round in progress: reports, the signals and residual at ``x^t``, ``x^{t+1}``."""

    reports: dict[str, np.ndarray]
    signals: np.ndarray
    residual: float
    price_move: float  # the broadcast price move of the step rule (0 under ``fixed``)
    next_actions: np.ndarray


class TeamAudit(TypedDict):
    """The audit fold: the reports in force, their pivot welfares ``W_{-i}(x*_{-i})`` and
    the usage logged by the previous round."""

    reports: team.TeamTypes | None
    pivots: np.ndarray | None
    actions: np.ndarray | None


class TeamMarket(Market[TeamState, TeamAudit]):
    game = "team"
    payment_kind = "clarke"
    audit_reads_transfers = False  # payments compared from per-agent sums

    def __init__(self, scenario: TeamScenario):
        super().__init__(scenario)
        self.kappa = float(scenario.game.congestion)
        self.step_rule = scenario.game.step
        pop = scenario.population
        if pop is not None:  # generated: columns, no per-agent spec
            self.population = TeamPopulation.from_arrays(self.agent_ids, *pop.types(scenario.scenario.seed),
                                                         self.kappa, self.step_rule)
        else:
            self.population = TeamPopulation.from_specs(scenario.agents, self.kappa, self.step_rule)
        self.settlement_interval = scenario.game.settlement_interval
        g = scenario.game
        self.report_bounds = Bounds(lo=1e-9, hi=g.max_report)
        self.usage_bounds = Bounds(lo=0.0, hi=g.max_usage)

    @cached_property
    def index(self) -> dict[str, int]:
        """``{agent id: position}`` (LLM agents only ask for it)."""
        return {a: i for i, a in enumerate(self.agent_ids)}

    def value_bounds(self, i: int) -> Bounds:
        """Agent ``i``'s report bounds on its value: the scenario's prior, a factor
        ``prior_ratio`` around its type."""
        return self._prior(float(self.population.value[i]), self.scenario.game.prior_ratio)

    def curvature_bounds(self, i: int) -> Bounds:
        """As ``value_bounds``, for the curvature."""
        return self._prior(float(self.population.curvature[i]), self.scenario.game.prior_ratio)

    def _prior(self, typ: float, ratio: float) -> Bounds:
        hi = min(typ * ratio, self.report_bounds.hi)
        return Bounds(lo=min(max(typ / ratio, self.report_bounds.lo), hi), hi=hi)

    # ---- the round ------------------------------------------------------------------
    def init_state(self) -> TeamState:
        n = len(self.agent_ids)
        return TeamState(actions=np.zeros(n), logged_reports=None, payments=np.zeros(n),
                         unsettled=np.zeros(n, np.int64))

    def elicit(self, state) -> TeamStep:
        r = self.population.report(state["round"])
        return TeamStep(reports={"value": np.asarray(r.a), "curvature": np.asarray(r.b)})

    def price(self, state) -> TeamStep:
        reports = self._with_llm(state, "report", state["step"]["reports"])
        g, residual, move = _price(state["market"]["actions"], _types(reports), self.kappa, self.step_rule)
        return TeamStep(reports=reports, signals=np.asarray(g), residual=float(residual), price_move=float(move))

    def act(self, state) -> TeamStep:
        step = state["step"]
        return {**step, "next_actions": self.population.act(step["signals"], state["market"]["actions"],
                                                            step["price_move"])}

    # ---- LLM agents -----------------------------------------------------------------
    def _info(self, agent_id: str) -> TeamAgentInfo:
        spec = self.scenario.agents[self.index[agent_id]]
        return TeamAgentInfo(agent_id=agent_id, value=spec.value, curvature=spec.curvature, kappa=self.kappa,
                             n_agents=len(self.agent_ids), persona=spec.persona)

    async def llm_report(self, llm, agent_id, view):
        """Fallback (documented): the agent's previous accepted report, in round 0 its type."""
        i = self.index[agent_id]
        prev = view["market"]["logged_reports"] or view["step"]["reports"]
        vb, cb = self.value_bounds(i), self.curvature_bounds(i)
        fallback = TeamReport(value=vb.clamp(float(prev["value"][i])), curvature=cb.clamp(float(prev["curvature"][i])))
        return await team_report(llm, self._info(agent_id), value_bounds=vb, curvature_bounds=cb, fallback=fallback,
                                 round=view["round"])

    async def llm_act(self, llm, agent_id, view):
        """Fallback (documented): keep the current usage."""
        i = self.index[agent_id]
        x = view["market"]["actions"]
        return await team_act(llm, self._info(agent_id), signal=float(view["step"]["signals"][i]), usage=float(x[i]),
                              aggregate=float(np.sum(x)), usage_bounds=self.usage_bounds, round=view["round"])

    def _with_llm(self, state, step: str, values):
        answers = state.get("llm_answers") or {}
        if not answers:
            return values
        if step == "report":
            out = {k: np.array(v, dtype=np.float64) for k, v in values.items()}
            for key, ans in answers.items():
                if key.startswith("report:"):
                    i = self.index[key.split(":", 1)[1]]
                    out["value"][i], out["curvature"][i] = ans.value.value, ans.value.curvature
            return out
        out = np.array(values, dtype=np.float64)
        for key, ans in answers.items():
            if key.startswith("act:"):
                out[self.index[key.split(":", 1)[1]]] = ans.value.usage
        return out

    def settle(self, state) -> Settlement[TeamState]:
        step = state["step"]
        x = self._with_llm(state, "act", step["next_actions"])
        reports = step["reports"]
        t, agg, cost, w_rep = (np.asarray(v) for v in _settle(x, _types(reports), self.kappa))
        events = []
        logged = state["market"]["logged_reports"]
        changed = logged is None or any(not np.array_equal(reports[k], logged[k]) for k in reports)
        if changed:
            events.append(EventRow("reports", {k: np.asarray(v, np.float64) for k, v in reports.items()}))
        events += [
            EventRow("signals", {"G": np.asarray(step["signals"], np.float64), "residual": step["residual"],
                                 **self._logged_move(step["price_move"])}),
            EventRow("actions", {"x": x}),
            EventRow("payments", {"t": t}),
            EventRow("outcome", {"aggregate": float(agg), "operator_cost": float(cost), "reported_welfare": float(w_rep)}),
        ]
        true_w = float(team.welfare(x, self.population.true_types, self.kappa))
        done = converged_below(step["residual"], self.tolerance)
        unsettled = state["market"].get("unsettled", np.zeros(len(x), np.int64)) + to_minor_units(t)
        transfers = []
        if (state["round"] + 1) % self.settlement_interval == 0 or done or state["round"] + 1 >= state["max_rounds"]:
            transfers = minor_transfers(self.agent_ids, unsettled, self.payment_kind)  # settles the interval
            unsettled = np.zeros_like(unsettled)
        return Settlement(
            events=events,
            transfers=transfers,
            state=TeamState(actions=x, logged_reports=reports, payments=t, unsettled=unsettled),
            done=done,
            metrics={"welfare": true_w, "residual": step["residual"]},
        )

    def _logged_move(self, move: float) -> dict[str, float]:
        """The broadcast price move as logged: not under ``fixed`` (its logs are unchanged)."""
        return {"price_move": move} if self.step_rule != "fixed" else {}

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        base = ("signals", "actions", "payments", "outcome")
        return ("reports", *base) if index == 0 else base

    def audit_init(self) -> TeamAudit:
        return TeamAudit(reports=None, pivots=None, actions=None)

    def audit_round(self, a: TeamAudit, rec: RoundRecord) -> tuple[TeamAudit, Recomputed]:
        reports, pivots, x, x_prev = self._audit_inputs(a, rec)
        n = len(x)
        settling = _audit_settle(x, reports, self.kappa, pivots)  # dispatched first, read last
        priced = _price(x_prev, reports, self.kappa, self.step_rule)
        g, move = np.asarray(priced[0]), float(priced[2])
        actions_ok = self._policy_actions_match(x, x_prev, g, move)
        settled_ = np.asarray(settling)
        return (TeamAudit(reports=reports, pivots=pivots, actions=x),
                self._recomputed(rec, g, move, actions_ok, settled_[:n], settled_[n:2 * n], settled_[2 * n:]))

    def _audit_inputs(self, a: TeamAudit, rec: RoundRecord) -> tuple[team.TeamTypes, np.ndarray, np.ndarray, np.ndarray]:
        """What round ``rec`` is recomputed from: the reports in force, their pivot welfares,
        the logged usage ``x^{t+1}`` and the previous round's ``x^t``."""
        try:
            reports, pivots = _types(rec.payload("reports")), None  # logged when they change
        except KeyError:
            reports, pivots = a["reports"], a["pivots"]
        if reports is None:
            raise KeyError("reports")
        if pivots is None:  # W_-i(x*_-i) depends on the reports only: computed when they change
            pivots = np.asarray(team.leave_one_out_welfare(reports, self.kappa))
        x = np.asarray(rec.payload("actions")["x"], np.float64)
        return reports, pivots, x, (a["actions"] if a["actions"] is not None else np.zeros_like(x))

    def _recomputed(self, rec: RoundRecord, g: np.ndarray, move: float, actions_ok: tuple[bool, str],
                    t: np.ndarray, values: np.ndarray, outcome_: np.ndarray) -> Recomputed:
        """The round's checks from its recomputed signals ``g``, price move, payments ``t``,
        values ``v_i(x_i)`` and outcome ``(aggregate, operator cost, reported welfare)``."""
        signals = rec.payload("signals")
        outcome = rec.payload("outcome")
        # G and, under clearing and newton, the broadcast price move pi
        extra = ["price_move"] if self.step_rule != "fixed" else []
        logged_g = np.asarray(signals["G"], np.float64)
        checks = {
            "signals_recompute": (_close(self.agent_ids + extra, np.append(logged_g, [signals[k] for k in extra]),
                                         np.append(g, [move] * len(extra)), "G") if extra
                                  else _close(self.agent_ids, logged_g, g, "G")),
            # policy agents' moves, bit for bit, from the recomputed signals and price move
            "actions_recompute": actions_ok,
            "outcome_recompute": _close(["aggregate", "operator_cost", "reported_welfare"],
                                        np.asarray([outcome[k] for k in ("aggregate", "operator_cost",
                                                                         "reported_welfare")]),
                                        outcome_, "outcome"),
            # Clarke pivots never subsidise: t_i = W_-i(x*_-i) - W_-i(x) >= 0 at every x
            "budget_balance": _at_least(self.agent_ids, t, 0.0, "payment t_i"),
        }
        # IR under the reports (v_i - t_i >= 0) is guaranteed by the capped payments at every
        # round: a failing check (a truthful agent never pays more than its usage is worth)
        u = np.maximum(values, 0.0) - t
        checks["individual_rationality"] = _at_least(self.agent_ids, u, 0.0, "reported value max(v_i, 0) - t_i")
        netted = np.asarray(rec.payload("payments")["t"], np.float64) if self.settlement_interval > 1 else None
        return Recomputed(payments=t, checks=checks, logged_payments=netted)

    @property
    def audit_window(self) -> int:
        """Rounds ``audit_rounds`` recomputes in one call (``[K, N]`` arrays of at most 2^18 entries)."""
        return max(1, min(AUDIT_WINDOW, 2**18 // max(1, len(self.agent_ids))))

    def audit_rounds(self, a: TeamAudit, records: list[RoundRecord]) -> list[tuple[TeamAudit, Recomputed]] | None:
        """``audit_round`` over consecutive rounds in one compiled call (``_audit_rounds``,
        one shape: the window padded to ``audit_window``); each round's audit state after
        it and its recomputation. A round whose policy moves differ from the batched
        recomputation is recomputed alone (the policy check is bit for bit); ``None`` when
        a round's rows cannot be stacked (the caller then recomputes round by round)."""
        states, inputs = [], []
        try:
            for rec in records:
                reports, pivots, x, x_prev = self._audit_inputs(a, rec)
                states.append(a)
                a = TeamAudit(reports=reports, pivots=pivots, actions=x)
                inputs.append((x, x_prev, reports.a, reports.b, pivots))
            k = self.audit_window
            if not inputs or len(inputs) > k:
                return None
            inputs += [inputs[-1]] * (k - len(inputs))  # pad to the compiled shape
            stacked = [np.stack(col).astype(np.float64, copy=False) for col in zip(*inputs)]
        except (KeyError, ValueError, TypeError):
            return None
        if stacked[0].shape[1:] != (len(self.agent_ids),) or any(c.shape != stacked[0].shape for c in stacked):
            return None
        g, move, expected, settled_ = jax.device_get(_audit_rounds(*stacked, self.kappa, self.population.steps,
                                                                     self.step_rule))
        n, out = len(self.agent_ids), []
        for j, rec in enumerate(records):
            state = states[j + 1] if j + 1 < len(states) else a
            actions_ok = self._policy_moves_match(stacked[0][j], expected[j])
            if not actions_ok[0]:  # the exact check: the policy rule on this round's own signals
                out.append(self.audit_round(states[j], rec))
                continue
            out.append((state, self._recomputed(rec, g[j], float(move[j]), actions_ok, settled_[j, :n],
                                                settled_[j, n:2 * n], settled_[j, 2 * n:])))
        return out

    @cached_property
    def _policy_agents(self) -> np.ndarray:
        """Mask of the agents that follow the policy rule (not LLM agents)."""
        llm = set(self.llm_agent_ids)
        return np.array([a not in llm for a in self.agent_ids], dtype=bool)

    def _policy_actions_match(self, x: np.ndarray, x_prev: np.ndarray, g: np.ndarray, move: float) -> tuple[bool, str]:
        """(ok, first mismatch): each policy agent's logged action is exactly its rule's move."""
        return self._policy_moves_match(x, self.population.act(g, x_prev, move))

    def _policy_moves_match(self, x: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
        bad = self._policy_agents & (expected != x)
        if not bad.any():
            return True, ""
        j = int(np.flatnonzero(bad)[0])
        return False, f"{self.agent_ids[j]}: logged x={float(x[j])!r}, policy rule gives {float(expected[j])!r}"

    # ---- report -----------------------------------------------------------------------
    def report_data(self, rounds: list[RoundRecord]) -> dict[str, Any]:
        """Logged series plus true welfare and values: the agents' types are the scenario's.

        Round ``t``'s welfare is ``W(x^{t+1})`` of the usage its ``actions`` event logs,
        under the true types; the optimum is the closed-form ``W*``.
        """
        data = super().report_data(rounds)
        data["signal_label"] = "DPM signal G_i = -dL/dx_i"
        actions = data.get("actions")
        if not actions:
            return data
        x = np.column_stack([actions[a] for a in self.agent_ids]).astype(np.float64)  # [R, N]
        truth = self.population.true_types
        w = np.asarray(_welfare_rounds(x, truth, self.kappa))
        v = np.asarray(_values_rounds(x, truth))
        data["welfare"] = w.tolist()
        data["optimal_welfare"] = [float(team.optimal_welfare(truth, self.kappa))] * len(rounds)
        data["values"] = {a: v[:, i].tolist() for i, a in enumerate(self.agent_ids)}
        return data

    # ---- summary --------------------------------------------------------------------
    def summary(self, state, paid) -> dict[str, Any]:
        truth = self.population.true_types
        ms = state["market"]
        x = np.asarray(ms["actions"])
        # the money that moved: payments as settled in minor units
        t = settled(ms["payments"])
        v = np.asarray(team.values(x, truth))
        w = float(team.welfare(x, truth, self.kappa))
        w_star = float(team.optimal_welfare(truth, self.kappa))
        reports = ms["logged_reports"] or {"value": truth.a, "curvature": truth.b}
        agents = agent_rows(self.agent_ids, {"action": x, "payment": t, "utility": v - t, "value": v,
                                             "reported_value": reports["value"], "total_paid": paid})
        cost = float(team.congestion_cost(x.sum(), self.kappa))
        return {
            "welfare": w,
            "optimal_welfare": w_star,
            "welfare_gap": welfare_gap(w, w_star),
            "agents": agents,
            "budget": {"payments": float(t.sum()), "operator_cost": cost, "surplus": float(t.sum()) - cost},
        }
