"""Task market: tasks procured from agents with private costs, by VCG or AGV.

Every round is one independent procurement auction over the tasks offered in it (tasks
with ``round = r`` in round ``r`` only, tasks without ``round`` in every round):

1. elicit: every agent reports a cost per task (``null``/``inf`` = cannot do it). Policy
   agents report their private costs, a ``misreport`` agent every cost times
   ``misreport_factor``; each LLM agent bids through ``task_bid`` (one ``Send`` each).
   A bid on a task the agent cannot do is ignored (the scenario says who can do what);
   an LLM agent whose answer fails validation (after the re-asks) abstains: ``null`` for
   every task (the documented fallback of ``task_bid``).
2. mechanism: the reported-welfare-maximising assignment and the payments, ``t_i`` = what
   agent ``i`` pays (negative: it is paid):

   * ``vcg``: Clarke pivot, ``N + 1`` assignment solves, any capacities
     (``mechanisms.vcg.clarke_pivot_payments``);
   * ``vcg-fast``: the same payments for unit demand, one solve plus one Bellman-Ford
     (``mechanisms.vcg.unit_demand_payments``; the scenario must give every capacity 1);
   * ``agv``: expected-externality payments (``mechanisms.bayesian.agv_payments``) with
     the scenario's prior and ``samples`` Monte Carlo profiles drawn with the PRNG key
     ``fold_in(fold_in(PRNGKey(seed), round), 1)``; the payments sum to zero and settle
     by ``budget_balanced_payments`` so that every round balances exactly in the ledger.

3. act: each assigned LLM agent writes its deliverable through ``task_deliver`` (an event;
   it never moves money). Policy agents just do their tasks.
4. settle: one transfer per agent between the treasury and the agent, and the events
   ``tasks``, ``reports``, ``outcome``, ``payments`` (plus the LLM calls).

Private costs: the scenario's listed costs, or with ``[game] redraw_costs = true`` a draw
per round from the public prior ``Uniform[c (1 - cost_spread), c (1 + cost_spread)]``
with the key ``fold_in(fold_in(PRNGKey(seed), round), 0)``.

Summary (``mbi run``): per agent the tasks done over the run, their true cost, the total
payment and ``utility = -cost - payment``; a misreporting agent also gets
``utility_if_truthful``, the utility it would have had reporting its true costs (the
others' reports unchanged). ``welfare``/``optimal_welfare`` are summed over the rounds
(true costs); ``assignment`` is the last round's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from mechanisms import bayesian, properties, vcg
from mechanisms.games import assignment as game
from mbiagents.agents.games import Bounds, Task, TaskAgentInfo, task_bid, task_deliver
from mbiagents.ledger.money import settled
from mbiagents.ledger.store import EventRow, RoundRecord
from mbiagents.ledger.payments import budget_balanced_payments, payment_transfers, signed_minor_from_transfers
from mbiagents.markets.base import Market, Recomputed, Settlement, welfare_gap
from mbiagents.scenario import TaskScenario, TaskSpec

BRUTE_FORCE_LIMIT = 20_000  # (N+1)^M profiles up to which the audit checks efficiency by enumeration
DSIC_LIMIT = 48  # N * M up to which the audit runs the VCG deviation search
DSIC_FACTORS = np.array([0.5, 0.9, 1.1, 2.0])


@dataclass
class RoundOutcome:
    assignment: np.ndarray  # [M] agent index doing each task, -1 = not done
    payments: np.ndarray  # [N] what each agent pays (negative: it is paid)
    reported_welfare: float


def encode_costs(costs: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(c) else float(c) for c in row] for row in np.asarray(costs)]


def decode_costs(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.inf if c is None else float(c) for c in row] for row in rows], dtype=np.float64)


class TaskTotals(TypedDict):
    """Across rounds: per agent the true cost of its tasks, the tasks it did, its utility
    and its utility had it reported truthfully; welfare and optimum summed; the last
    round's assignment."""

    cost: np.ndarray
    tasks: list[list[str]]
    welfare: float
    optimum: float
    truthful_utility: np.ndarray
    utility: np.ndarray
    assignment: dict[str, str | None]


class AuctionStep(TypedDict, total=False):
    reports: np.ndarray  # reported costs [N, M] (inf: cannot / abstains)
    outcome: dict[str, Any]  # assignment {task: agent | None}, payments, reported_welfare


class TaskMarket(Market[TaskTotals, None]):
    game = "assignment"
    summary_columns = ("tasks", "cost", "payment", "utility", "utility_if_truthful")

    def __init__(self, scenario: TaskScenario):
        super().__init__(scenario)
        self.index = {a: i for i, a in enumerate(self.agent_ids)}
        self.capacities = np.array([a.capacity for a in scenario.agents], dtype=np.int64)
        self.factors = np.array([a.misreport_factor or 1.0 for a in scenario.agents], dtype=np.float64)
        self.is_llm = np.array([a.backend == "llm" for a in scenario.agents])
        self.bid_bounds = Bounds(lo=0.0, hi=scenario.game.max_bid)
        self._true: dict[int, np.ndarray] = {}

    # ---- the round's public data and private costs ------------------------------------
    def round_tasks(self, r: int) -> list[TaskSpec]:
        return [t for t in self.scenario.tasks if t.round is None or t.round == r]

    def values(self, r: int) -> np.ndarray:
        return np.array([t.value for t in self.round_tasks(r)], dtype=np.float64)

    def listed_costs(self, r: int) -> np.ndarray:
        tasks = self.round_tasks(r)
        return np.array([[a.costs.get(t.id, np.inf) for t in tasks] for a in self.scenario.agents],
                        dtype=np.float64).reshape(len(self.agent_ids), len(tasks))

    def prior(self, r: int) -> bayesian.UniformCostPrior:
        """The public prior of round ``r``'s costs: ``Uniform[c (1 - s), c (1 + s)]``."""
        c, s = self.listed_costs(r), self.scenario.game.cost_spread
        return bayesian.UniformCostPrior(np.where(np.isfinite(c), c * (1 - s), np.inf), c * (1 + s))

    def key(self, r: int, stream: int) -> jax.Array:
        """PRNG key of round ``r``: stream 0 draws the private costs, stream 1 AGV's samples."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.scenario.scenario.seed), r), stream)

    def true_costs(self, r: int) -> np.ndarray:
        if r not in self._true:
            c = self.listed_costs(r)
            if self.scenario.game.redraw_costs and c.size:
                c = np.asarray(bayesian.sample_costs(self.key(r, 0), self.prior(r), 1)[0], dtype=np.float64)
            self._true[r] = c
        return self._true[r]

    # ---- the mechanism -----------------------------------------------------------------
    def run_mechanism(self, reports: np.ndarray, r: int) -> RoundOutcome:
        """Assignment and payments of round ``r`` from the reported costs ``[N, M]``."""
        n, m = reports.shape
        values = self.values(r)
        if reports.shape != (len(self.agent_ids), len(values)):
            raise ValueError(f"reports have shape {reports.shape}, round {r} needs {(n, len(values))}")
        if m == 0:
            return RoundOutcome(np.zeros(0, np.int64), np.zeros(n), 0.0)
        if self.mechanism == "agv":
            assign = np.asarray(game.optimal_assignment(reports, values, self.capacities))
            g = self.scenario.game
            t = bayesian.agv_payments(reports, values, self.capacities, self.prior(r), self.key(r, 1), g.samples)
            t = budget_balanced_payments(np.asarray(t))
        else:
            res = (vcg.unit_demand_payments(reports, values) if self.mechanism == "vcg-fast"
                   else vcg.clarke_pivot_payments(reports, values, self.capacities))
            assign, t = np.asarray(res.assignment), np.asarray(vcg.ledger_payments(res))
        w = float(game.welfare(reports, values, assign))
        return RoundOutcome(assign.astype(np.int64), np.asarray(t, np.float64), w)

    def assignment_map(self, r: int, assign: np.ndarray) -> dict[str, str | None]:
        return {t.id: (self.agent_ids[a] if a >= 0 else None) for t, a in zip(self.round_tasks(r), assign.tolist())}

    # ---- the round ------------------------------------------------------------------
    def init_state(self) -> TaskTotals:
        n = len(self.agent_ids)
        return TaskTotals(cost=np.zeros(n), tasks=[[] for _ in range(n)], welfare=0.0, optimum=0.0,
                          truthful_utility=np.zeros(n), utility=np.zeros(n), assignment={})

    def elicit(self, state) -> AuctionStep:
        r = state["round"]
        reports = self.true_costs(r) * self.factors[:, None]
        reports[self.is_llm] = np.inf  # LLM agents abstain unless their bid validates
        return AuctionStep(reports=reports)

    def price(self, state) -> AuctionStep:
        r = state["round"]
        reports = np.array(state["step"]["reports"], dtype=np.float64)
        tasks = self.round_tasks(r)
        for key, ans in (state.get("llm_answers") or {}).items():
            if key.startswith("report:"):
                bids = ans.value.bids()
                reports[self.index[key.split(":", 1)[1]]] = [np.inf if bids[t.id] is None else bids[t.id]
                                                             for t in tasks]
        reports = np.where(np.isfinite(self.true_costs(r)), reports, np.inf)  # who can do what is public
        out = self.run_mechanism(reports, r)
        return AuctionStep(reports=reports, outcome={"assignment": self.assignment_map(r, out.assignment),
                                                     "payments": out.payments.tolist(),
                                                     "reported_welfare": out.reported_welfare})

    # ---- LLM agents -----------------------------------------------------------------
    def _info(self, agent_id: str, r: int) -> TaskAgentInfo:
        i = self.index[agent_id]
        spec = self.scenario.agents[i]
        costs = {t.id: (float(c) if np.isfinite(c) else None) for t, c in zip(self.round_tasks(r), self.true_costs(r)[i])}
        return TaskAgentInfo(agent_id=agent_id, persona=spec.persona or "", costs=costs, n_agents=len(self.agent_ids))

    def _tasks(self, r: int) -> list[Task]:
        return [Task(id=t.id, description=t.description or t.id) for t in self.round_tasks(r)]

    async def llm_report(self, llm, agent_id, view):
        """Bid a cost per task; fallback (documented in ``task_bid``): abstain on every task."""
        r = view["round"]
        return await task_bid(llm, self._info(agent_id, r), self._tasks(r), cost_bounds=self.bid_bounds, round=r)

    async def llm_act(self, llm, agent_id, view):
        """Deliverables of the agent's assigned tasks (none: no call); fallback: empty text."""
        r = view["round"]
        outcome = view["step"]["outcome"]
        won = [t for t in self._tasks(r) if outcome["assignment"].get(t.id) == agent_id]
        received = -outcome["payments"][self.index[agent_id]]
        info = self._info(agent_id, r)
        return list(await asyncio.gather(*(
            task_deliver(llm, info, t, payment=received if len(won) == 1 else None, round=r) for t in won)))

    # ---- settlement -----------------------------------------------------------------
    def _utility(self, reports: np.ndarray, r: int, i: int) -> float:
        out = self.run_mechanism(reports, r)
        t = settled(out.payments)
        return float(-np.sum(self.true_costs(r)[i, out.assignment == i]) - t[i])

    def settle(self, state) -> Settlement[TaskTotals]:
        r = state["round"]
        reports, outcome = state["step"]["reports"], state["step"]["outcome"]
        true = self.true_costs(r)
        values = self.values(r)
        assign = np.array([self.index[a] if a is not None else -1 for a in outcome["assignment"].values()],
                          dtype=np.int64)
        t = np.asarray(outcome["payments"], np.float64)
        paid = settled(t)
        n = len(self.agent_ids)
        cost = np.array([np.sum(true[i, assign == i]) for i in range(n)])
        welfare = float(np.sum(values[assign >= 0]) - cost.sum())
        optimum = float(game.welfare(true, values, game.solve_host(true, values, self.capacities))) if values.size else 0.0
        utility = -cost - paid
        truthful = utility.copy()
        for i in np.flatnonzero(self.factors != 1.0):
            honest = reports.copy()
            honest[i] = true[i]
            truthful[i] = self._utility(honest, r, i)
        ms = state["market"]
        tasks_done = [list(ts) + [tid for tid, a in outcome["assignment"].items() if a == aid]
                      for ts, aid in zip(ms["tasks"], self.agent_ids)]
        totals = TaskTotals(cost=ms["cost"] + cost, tasks=tasks_done, welfare=ms["welfare"] + welfare,
                            optimum=ms["optimum"] + optimum, truthful_utility=ms["truthful_utility"] + truthful,
                            utility=ms["utility"] + utility, assignment=outcome["assignment"])
        events = [
            EventRow("tasks", {"ids": [tk.id for tk in self.round_tasks(r)], "values": values.tolist()}),
            EventRow("reports", {"costs": encode_costs(reports)}),
            EventRow("outcome", {"assignment": outcome["assignment"], "reported_welfare": outcome["reported_welfare"],
                                 "welfare": welfare, "optimal_welfare": optimum}),
            EventRow("payments", {"t": t.tolist()}),
        ]
        return Settlement(
            events=events,
            transfers=payment_transfers(self.agent_ids, t, self.payment_kind),
            state=totals,
            metrics={"welfare": welfare, "optimal_welfare": optimum, "paid_out": float(-paid.sum())},
        )

    # ---- audit and replay -----------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("tasks", "reports", "outcome", "payments")

    def audit_round(self, a: None, rec: RoundRecord) -> tuple[None, Recomputed]:
        """Every round is an independent auction: recomputed from its own rows (no audit state)."""
        r = rec.index
        expected = [t.id for t in self.round_tasks(r)]
        logged_tasks = rec.payload("tasks")["ids"]
        reports = decode_costs(rec.payload("reports")["costs"]).reshape(len(self.agent_ids), len(logged_tasks))
        out = self.run_mechanism(reports, r)
        checks: dict[str, tuple[bool, str]] = {}
        checks["tasks_recompute"] = (logged_tasks == expected,
                                     "" if logged_tasks == expected else f"logged tasks {logged_tasks}, scenario {expected}")
        logged_assign = rec.payload("outcome")["assignment"]
        mine = self.assignment_map(r, out.assignment)
        checks["assignment_recompute"] = (logged_assign == mine,
                                          "" if logged_assign == mine else f"logged {logged_assign}, recomputed {mine}")
        scale = 1e-9 * (1.0 + float(np.max(np.abs(out.payments), initial=0.0)))
        if self.mechanism == "agv":
            net = int(signed_minor_from_transfers(self.agent_ids, rec.transfers, self.payment_kind).sum())
            checks["budget_balance"] = (net == 0, "" if net == 0 else f"agents paid {net} minor units net, not 0")
        else:
            u = -np.array([np.sum(reports[i, out.assignment == i]) for i in range(len(self.agent_ids))]) - out.payments
            ir = properties.ir_violation(u)
            ok = float(ir.amount) <= scale
            checks["ir"] = (ok, "" if ok else f"agent {self.agent_ids[int(ir.where)]}: utility {float(ir.witness)!r} < 0")
            n, m = reports.shape
            if 0 < n * m <= DSIC_LIMIT:
                checks["dsic_search"] = self._dsic(reports, r)
        n, m = reports.shape
        if 0 < m and (n + 1) ** m <= BRUTE_FORCE_LIMIT:
            best, _ = game.brute_force_optimum(reports, self.values(r), self.capacities)
            ok = out.reported_welfare >= best - 1e-9 * (1.0 + abs(best))
            checks["efficiency"] = (ok, "" if ok else f"reported welfare {out.reported_welfare!r} < optimum {best!r}")
        return None, Recomputed(payments=out.payments, checks=checks)

    def _dsic(self, reports: np.ndarray, r: int) -> tuple[bool, str]:
        """Deviation search (``properties.deviation_gains`` on ``vcg.utilities``): no agent
        gains, valued at its reported costs, by scaling its report by any of
        ``DSIC_FACTORS`` (others fixed). ``N * K`` mechanism calls."""
        values = self.values(r)
        capacities = None if self.mechanism == "vcg-fast" else self.capacities
        deviations = reports[:, None, :] * DSIC_FACTORS[None, :, None]  # [N, K, M]
        gains, _ = properties.deviation_gains(lambda rep, true: vcg.utilities(rep, true, values, capacities),
                                              jnp.asarray(reports), jnp.asarray(deviations))
        gains = np.asarray(gains)
        i, k = np.unravel_index(int(np.argmax(gains)), gains.shape)
        if gains[i, k] > 1e-9 * (1.0 + float(np.max(values))):
            return False, f"agent {self.agent_ids[i]} gains {float(gains[i, k])!r} by reporting {DSIC_FACTORS[k]} x its costs"
        return True, ""

    # ---- summary --------------------------------------------------------------------
    def summary(self, state, paid) -> dict[str, Any]:
        ex = state["market"]
        agents: dict[str, dict[str, Any]] = {}
        for i, aid in enumerate(self.agent_ids):
            row: dict[str, Any] = {"tasks": ex["tasks"][i], "cost": float(ex["cost"][i]), "payment": float(paid[i]),
                                   "utility": float(-ex["cost"][i] - paid[i]), "total_paid": float(paid[i])}
            if self.factors[i] != 1.0:
                row["utility_if_truthful"] = float(ex["truthful_utility"][i])
            agents[aid] = row
        w, w_star = float(ex["welfare"]), float(ex["optimum"])
        value_done = w + float(np.sum(ex["cost"]))
        return {
            "welfare": w,
            "optimal_welfare": w_star,
            "welfare_gap": welfare_gap(w, w_star),
            "assignment": ex["assignment"],
            "agents": agents,
            "budget": {"payments": round(float(paid.sum()), 6), "task_value": value_done,
                       "surplus": value_done + float(paid.sum())},
        }
