"""Task assignment game: N agents, M tasks, private costs, public task values.

Agent ``i`` privately knows its cost ``c_ij >= 0`` for task ``j`` (``+inf``: cannot do it)
and has a public capacity ``k_i`` (tasks per round). Task ``j`` has a public value ``V_j``
and is done only if its doer's cost is strictly below ``V_j``. An outcome is an integer
vector ``assign[M]``: the agent doing task ``j``, or ``-1`` when it is not done. Welfare
``W = sum_{j done} (V_j - c_{assign_j, j})``.

The optimum is a linear assignment problem, solved by scipy's ``linear_sum_assignment``
(JAX has no assignment solver) on an expanded matrix: agent ``i`` repeated
``min(k_i, M)`` times (one row per slot), one column per task, entries the profits
``max(0, V_j - c_ij)`` (0 where ``c_ij = inf`` or ``c_ij >= V_j``). A zero-profit pair is
read as "not done": this is the "dummy not-done option per task" with zero profit folded
into the matrix (any optional assignment extends to a full rectangular one of equal
profit and back), so the matrix stays ``sum_i k_i x M``.

``optimal_assignment`` calls the solver through ``jax.pure_callback`` (vmapped
sequentially), so it composes with ``jit`` and ``vmap``; ``solve_host`` is the plain numpy
function underneath, for hot host-side loops.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

Array = jax.Array


class AssignmentInstance(NamedTuple):
    """One round of the task market: ``costs [N, M]`` (``+inf`` = cannot do), ``values [M]``,
    ``capacities [N]`` (integers, tasks per round)."""

    costs: Array
    values: Array
    capacities: Array


def profits(costs: Array, values: Array) -> Array:
    """``max(0, V_j - c_ij)``: 0 where the pair is infeasible (``inf``) or unprofitable."""
    gain = values[None, :] - costs
    return jnp.where(jnp.isfinite(costs) & (gain > 0), gain, 0.0)


def _profits_np(costs: np.ndarray, values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        gain = values[None, :] - costs
    return np.where(np.isfinite(costs) & (gain > 0), gain, 0.0)


def solve_host(costs: np.ndarray, values: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    """Optimal ``assign[M]`` (agent index or -1) on the host, numpy in and out."""
    costs = np.asarray(costs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    n, m = costs.shape
    assign = np.full(m, -1, dtype=np.int64)
    slots = np.repeat(np.arange(n), np.minimum(np.asarray(capacities, dtype=np.int64), m).clip(0))
    if slots.size == 0 or m == 0:
        return assign
    p = _profits_np(costs, values)[slots]
    rows, cols = linear_sum_assignment(p, maximize=True)
    done = p[rows, cols] > 0
    assign[cols[done]] = slots[rows[done]]
    return assign


@jax.jit
def optimal_assignment(costs: Array, values: Array, capacities: Array) -> Array:
    """Welfare-maximising ``assign[M]`` (agent doing each task, ``-1`` = not done).

    scipy ``linear_sum_assignment`` through ``jax.pure_callback``: jit- and vmap-able
    (a vmap runs the solves one after another).
    """
    costs = jnp.asarray(costs, jnp.float64)
    out = jax.ShapeDtypeStruct((costs.shape[-1],), jnp.int64)
    host = lambda c, v, k: solve_host(np.asarray(c), np.asarray(v), np.asarray(k))  # noqa: E731
    return jax.pure_callback(host, out, costs, jnp.asarray(values, jnp.float64), jnp.asarray(capacities),
                             vmap_method="sequential")


def assignment_matrix(assign: Array, n: int) -> Array:
    """0/1 matrix ``x[N, M]`` with ``x_ij = 1`` iff agent ``i`` does task ``j``."""
    return (assign[None, :] == jnp.arange(n)[:, None]).astype(jnp.float64)


def agent_costs(costs: Array, assign: Array) -> Array:
    """``c_i(A) = sum_{j: assign_j = i} c_ij`` for every agent (0 for an idle agent)."""
    x = assignment_matrix(assign, costs.shape[0])
    return jnp.sum(jnp.where(x > 0, costs, 0.0), axis=1)


def task_values_done(values: Array, assign: Array) -> Array:
    """``sum_{j done} V_j``: the team's gross value of the outcome."""
    return jnp.sum(jnp.where(assign >= 0, values, 0.0))


def welfare(costs: Array, values: Array, assign: Array) -> Array:
    """``W(A) = sum_{j done} (V_j - c_{A_j j})`` (``-inf`` if an infeasible pair is used)."""
    return task_values_done(values, assign) - jnp.sum(agent_costs(costs, assign))


def optimal_welfare(costs: Array, values: Array, capacities: Array) -> Array:
    """``W*(N) = W(A*)``."""
    return welfare(costs, values, optimal_assignment(costs, values, capacities))


def brute_force_optimum(costs: np.ndarray, values: np.ndarray, capacities: np.ndarray) -> tuple[float, np.ndarray]:
    """Best welfare and an optimal ``assign`` by enumerating all ``(N+1)^M`` task-to-agent
    maps that respect capacities (small instances only; independent of the solver)."""
    costs = np.asarray(costs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    n, m = costs.shape
    best, best_assign = 0.0, np.full(m, -1, dtype=np.int64)
    for choice in itertools.product(range(-1, n), repeat=m):
        a = np.array(choice, dtype=np.int64)
        if np.any(np.bincount(a[a >= 0], minlength=n) > np.asarray(capacities)):
            continue
        done = a >= 0
        c = costs[a[done], np.flatnonzero(done)]
        if not np.all(np.isfinite(c)):
            continue
        w = float(np.sum(values[done] - c))
        if w > best:
            best, best_assign = w, a
    return best, best_assign


def example_instance() -> AssignmentInstance:
    """A hand-checkable unit-demand instance: 4 agents, 3 tasks (agent 3 cannot do task 0).

    Optimum: agent 0 -> task 0 (10 - 5), agent 1 -> task 1 (8 - 3), agent 2 -> task 2
    (6 - 2): ``W* = 14``; agent 3 is idle. Without agent 0 the best is 1 -> 0, 3 -> 1,
    2 -> 2 (``W = 12.8``), so agent 0's marginal contribution is only 1.2: scaling its
    costs by 1.3 loses it task 0.
    """
    inf = jnp.inf
    costs = jnp.array([[5.0, 6.0, 5.0], [6.0, 3.0, 4.0], [9.0, 7.0, 2.0], [inf, 3.2, 3.5]])
    return AssignmentInstance(costs, jnp.array([10.0, 8.0, 6.0]), jnp.ones(4, jnp.int64))
