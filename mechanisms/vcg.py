"""VCG with the Clarke pivot for the task market (procurement), ``mechanisms.games.assignment``.

Outcome: the reported-welfare-maximising assignment ``A*``. Agent ``i`` *receives*

    p_i = c_i(A*) + W*(N) - W*(N \\ {i}),

its reported cost of what it was assigned plus its marginal contribution to team welfare
(classical VCG / Clarke pivot, stated in mechanism-notes.md; procurement sign). Truthful
utility ``u_i = p_i - c_i(A*) = W*(N) - W*(N\\{i}) >= 0``: DSIC and ex-post IR; the team
pays ``sum_i p_i``, not budget balanced.

Sign convention. Functions here return ``received`` = ``p_i`` (money *to* the agent). In
mbiagents a "payment" is what the agent *pays*: use ``ledger_payments(result) = -p_i``.

Two ways to get all ``W*(N\\{i})``:

* ``clarke_pivot_payments``: reference, ``N + 1`` assignment solves, any capacities.
* ``unit_demand_payments``: ``k_i = 1``; one assignment solve plus one single-sink
  shortest-path computation (derived here, standard assignment-game sensitivity): on the
  residual graph of the optimal matching (task ``j`` -> agent ``a`` not matched to ``j``
  with length ``-(V_j - c_aj)``; matched agent ``a`` -> its task with length
  ``+(V_j - c_aj)``; every task and every idle agent -> sink ``T`` with length 0), removing
  agent ``i`` (matched to ``j``) frees task ``j``, and the best re-optimisation is the
  best alternating path from ``j``: ``W*(N\\{i}) = W*(N) - (V_j - c_ij) - d(j)`` with
  ``d(j) <= 0`` the shortest distance from ``j`` to ``T``. Optimality of the matching
  means no negative cycle, and a shortest path from ``j`` never enters ``i`` (its only
  exit leads back to ``j``), so one Bellman-Ford pass towards ``T`` prices every agent:
  ``p_i = V_j + d(j)``. The Bellman-Ford runs in JAX (``lax.while_loop``, dense
  ``[N, M]`` relaxations, stops when nothing changes, at most ``N + M + 1`` sweeps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mechanisms.games import assignment

Array = jax.Array


class VCGResult(NamedTuple):
    """VCG outcome: ``assignment [M]``, ``welfare`` ``W*(N)``, ``leave_one_out_welfare [N]``
    ``W*(N\\{i})``, and ``received [N]`` ``p_i`` (what each agent is paid; >= its cost)."""

    assignment: Array
    welfare: Array
    leave_one_out_welfare: Array
    received: Array


def ledger_payments(result: VCGResult) -> Array:
    """mbiagents sign: what each agent *pays*, ``-p_i``."""
    return -result.received


def _received(costs: Array, assign: Array, w: Array, loo: Array) -> Array:
    return assignment.agent_costs(costs, assign) + w - loo


@jax.jit
def clarke_pivot_payments(costs: Array, values: Array, capacities: Array) -> VCGResult:
    """Reference VCG: ``p_i = c_i(A*) + W*(N) - W*(N\\{i})`` from ``N + 1`` assignment solves
    (agent ``i`` removed by setting its costs to ``+inf``)."""
    costs = jnp.asarray(costs, jnp.float64)
    n = costs.shape[0]
    assign = assignment.optimal_assignment(costs, values, capacities)
    w = assignment.welfare(costs, values, assign)

    def without(i: Array) -> Array:
        return assignment.optimal_welfare(costs.at[i].set(jnp.inf), values, capacities)

    loo = jax.vmap(without)(jnp.arange(n))
    return VCGResult(assign, w, loo, _received(costs, assign, w, loo))


@jax.jit
def leave_one_out_gains(costs: Array, values: Array, assign: Array) -> Array:
    """``W*(N) - W*(N\\{i})`` for every agent, unit demand, given an optimal ``assign``:
    matched ``i`` (task ``j``) gets ``(V_j - c_ij) + d(j)``, idle agents 0 (Bellman-Ford
    on the residual graph, see the module docstring)."""
    costs = jnp.asarray(costs, jnp.float64)
    n, m = costs.shape
    p = assignment.profits(costs, values)  # [N, M]
    agents = jnp.arange(n)
    x = assign[None, :] == agents[:, None]  # matching edges
    edge = (p > 0) & ~x  # task -> agent (non-matching)
    matched = jnp.any(x, axis=1)
    task_of = jnp.argmax(x, axis=1)  # valid where matched
    w_match = jnp.where(matched, p[agents, task_of], 0.0)

    def agent_dist(d_task: Array) -> Array:
        return jnp.where(matched, w_match + d_task[task_of], 0.0)

    def relax(d_task: Array) -> Array:
        via = jnp.min(jnp.where(edge, agent_dist(d_task)[:, None] - p, jnp.inf), axis=0, initial=jnp.inf)
        return jnp.minimum(d_task, via)

    def cond(state):
        _, it, changed = state
        return changed & (it <= n + m)

    def body(state):
        d, it, _ = state
        new = relax(d)
        return new, it + 1, jnp.any(new < d)

    d, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros(m), jnp.asarray(0), jnp.asarray(True)))
    return jnp.where(matched, w_match + d[task_of], 0.0)


@jax.jit
def unit_demand_payments(costs: Array, values: Array) -> VCGResult:
    """Fast VCG for unit demand (``k_i = 1``): one assignment solve + one Bellman-Ford.

    Equal to ``clarke_pivot_payments(costs, values, ones)`` (tests check to 1e-9).
    """
    costs = jnp.asarray(costs, jnp.float64)
    n = costs.shape[0]
    assign = assignment.optimal_assignment(costs, values, jnp.ones(n, jnp.int64))
    w = assignment.welfare(costs, values, assign)
    gains = leave_one_out_gains(costs, values, assign)
    loo = w - gains
    return VCGResult(assign, w, loo, _received(costs, assign, w, loo))


def vcg(costs: Array, values: Array, capacities: Array | None = None) -> VCGResult:
    """VCG payments: the unit-demand fast path when ``capacities`` is ``None`` (every
    ``k_i = 1``), the reference ``N + 1`` solves otherwise."""
    if capacities is None:
        return unit_demand_payments(costs, values)
    return clarke_pivot_payments(costs, values, capacities)


def utilities(reports: Array, true_costs: Array, values: Array, capacities: Array | None = None) -> Array:
    """Realised ``u_i = p_i - c_i(A*; true)`` when VCG runs on ``reports`` (for
    ``properties.dsic_violation``; ``capacities=None`` = unit demand)."""
    r = vcg(reports, values, capacities)
    return r.received - assignment.agent_costs(true_costs, r.assignment)
