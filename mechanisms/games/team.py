"""Team resource-sharing game: N agents share a congested resource.

Agent ``i`` chooses usage ``x_i >= 0`` and has private type ``theta_i = (a_i, b_i)``,
both positive, with value ``v_i(x) = a_i x - b_i x^2 / 2``. The operator bears the
congestion cost ``C(X) = kappa X^2 / 2`` on the aggregate ``X = sum_j x_j``
(``kappa > 0`` public). Welfare ``W(x) = sum_i v_i(x_i) - C(X)``; team loss ``L = -W``.

The game is *aggregative*: every optimum (with or without any one agent) is fixed by a
scalar aggregate, found exactly on the piecewise-linear KKT map. With the agents sorted
once by ``a_i`` (O(N log N)), each of the N leave-one-out optima is a binary search over
the sorted breakpoints with O(1) prefix-sum evaluations, so all N Clarke pivots cost
O(N log N) in total, vectorised (no per-agent Python loop).

KKT conditions (derived here): ``x_i = max(0, (a_i - kappa X) / b_i)`` and ``X`` solves
``X = sum_i max(0, (a_i - kappa X) / b_i)``, whose right side decreases in ``X``; with the
active set ``A = {i : a_i > kappa X}``, ``X = (sum_A a_i/b_i) / (1 + kappa sum_A 1/b_i)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class TeamTypes(NamedTuple):
    """Types (true or reported) of the N agents: ``a`` marginal value at zero, ``b`` curvature."""

    a: Array
    b: Array


def values(x: Array, types: TeamTypes) -> Array:
    """Per-agent value ``v_i(x_i) = a_i x_i - b_i x_i^2 / 2``."""
    return types.a * x - 0.5 * types.b * x * x


def congestion_cost(aggregate: Array, kappa: float) -> Array:
    """Operator's congestion cost ``C(X) = kappa X^2 / 2``."""
    return 0.5 * kappa * aggregate * aggregate


def welfare(x: Array, types: TeamTypes, kappa: float) -> Array:
    """Team welfare ``W(x) = sum_i v_i(x_i) - C(sum_i x_i)``."""
    return jnp.sum(values(x, types)) - congestion_cost(jnp.sum(x), kappa)


def team_loss(x: Array, types: TeamTypes, kappa: float) -> Array:
    """Team loss ``L = -W``: the differentiable objective the DPM prices."""
    return -welfare(x, types, kappa)


def others_welfare(x: Array, types: TeamTypes, kappa: float) -> Array:
    """``W_{-i}(x) = sum_{j != i} v_j(x_j) - C(X)`` for every ``i`` (operator included), O(N)."""
    v = values(x, types)
    return jnp.sum(v) - v - congestion_cost(jnp.sum(x), kappa)


class _Sorted(NamedTuple):
    """Agents sorted by ``a`` descending with prefix sums over that order (index k = top k)."""

    order: Array  # sorted position -> agent index
    rank: Array  # agent index -> sorted position
    a_sorted: Array
    s_ab: Array  # prefix sums of a/b,   length N+1, s[0] = 0
    s_inv_b: Array  # prefix sums of 1/b
    s_aab: Array  # prefix sums of a^2/b


def _sort_types(types: TeamTypes) -> _Sorted:
    a, b = jnp.asarray(types.a), jnp.asarray(types.b)
    order = jnp.argsort(-a, stable=True)
    rank = jnp.empty_like(order).at[order].set(jnp.arange(order.shape[0]))
    a, b = a[order], b[order]
    zero = jnp.zeros((1,), a.dtype)

    def prefix(v: Array) -> Array:
        return jnp.concatenate([zero, jnp.cumsum(v)])

    return _Sorted(order, rank, a, prefix(a / b), prefix(1.0 / b), prefix(a * a / b))


def _aggregate_on_piece(k: Array, drop_ab: Array, drop_inv_b: Array, s: _Sorted, kappa: float):
    """Candidate aggregate when the active set is the top ``k`` minus the dropped agent."""
    sum_ab = s.s_ab[k] - drop_ab
    sum_inv_b = s.s_inv_b[k] - drop_inv_b
    return sum_ab / (1.0 + kappa * sum_inv_b)


def _solve_aggregate(s: _Sorted, kappa: float, drop: Array | None) -> Array:
    """Exact optimal aggregate(s), optionally with agent ``drop[q]`` removed for query ``q``.

    The active set is a prefix of the sorted order (minus the dropped agent). Piece ``k``
    (top k active) is consistent when ``a_(k) > kappa X_k >= a_(k+1)``; the excess map
    ``k -> a_(k) - kappa X_k`` is positive exactly for ``k <= k*``, so ``k*`` is found by
    binary search over ``k in [0, N]``.
    """
    n = s.a_sorted.shape[0]
    queries = 1 if drop is None else drop.shape[0]
    if drop is None:
        drop_rank = jnp.full((queries,), n + 1)
        drop_ab = jnp.zeros((queries,), s.s_ab.dtype)
        drop_inv_b = jnp.zeros((queries,), s.s_ab.dtype)
    else:
        drop_rank = s.rank[drop]
        drop_ab = s.s_ab[drop_rank + 1] - s.s_ab[drop_rank]
        drop_inv_b = s.s_inv_b[drop_rank + 1] - s.s_inv_b[drop_rank]

    def active_ok(k: Array) -> Array:
        # P(k): "the k-th remaining agent (1-based, sorted) joins the active set", i.e.
        # a_(k) > kappa X_{k-1}. At the dropped agent's position P(k) = P(k-1), so the
        # predicate stays a prefix of true values and binary search applies.
        kk = jnp.where(drop_rank == k - 1, k - 1, k)
        below = drop_rank < kk - 1
        x_prev = _aggregate_on_piece(
            jnp.maximum(kk - 1, 0), jnp.where(below, drop_ab, 0.0), jnp.where(below, drop_inv_b, 0.0), s, kappa
        )
        a_k = s.a_sorted[jnp.clip(kk - 1, 0, n - 1)]
        return (kk == 0) | (a_k > kappa * x_prev)

    # binary search for the largest k with active_ok(k) (monotone: true then false)
    lo = jnp.zeros((queries,), jnp.int32)
    hi = jnp.full((queries,), n, jnp.int32)

    def body(_, carry):
        lo, hi = carry
        mid = (lo + hi + 1) // 2
        ok = active_ok(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    steps = max(1, int(n).bit_length() + 1)
    lo, hi = jax.lax.fori_loop(0, steps, body, (lo, hi))
    k = lo
    in_set = drop_rank < k
    return _aggregate_on_piece(
        k, jnp.where(in_set, drop_ab, 0.0), jnp.where(in_set, drop_inv_b, 0.0), s, kappa
    )


@jax.jit
def optimal_aggregate(types: TeamTypes, kappa: float) -> Array:
    """Exact welfare-maximising aggregate ``X*`` (scalar)."""
    return _solve_aggregate(_sort_types(types), kappa, None)[0]


def usage_at_price(types: TeamTypes, price: Array) -> Array:
    """Best response to a congestion price: ``x_i = max(0, (a_i - price) / b_i)``."""
    return jnp.maximum(0.0, (types.a - price) / types.b)


@jax.jit
def optimal_usage(types: TeamTypes, kappa: float) -> Array:
    """Closed-form team optimum ``x*`` of ``max_x W(x), x >= 0``."""
    return usage_at_price(types, kappa * optimal_aggregate(types, kappa))


@jax.jit
def optimal_welfare(types: TeamTypes, kappa: float) -> Array:
    """``W(x*)``."""
    return welfare(optimal_usage(types, kappa), types, kappa)


@jax.jit
def leave_one_out_aggregates(types: TeamTypes, kappa: float) -> Array:
    """``X*_{-i}``: optimal aggregate of the team without agent ``i``, for every ``i``."""
    s = _sort_types(types)
    return _solve_aggregate(s, kappa, jnp.arange(types.a.shape[0]))


@jax.jit
def leave_one_out_welfare(types: TeamTypes, kappa: float) -> Array:
    """``W_{-i}(x*_{-i})``: best welfare of everybody but ``i`` (operator included), all ``i``.

    At the optimum without ``i`` every active ``j`` has ``x_j = (a_j - kappa X)/b_j`` and
    value ``(a_j^2 - kappa^2 X^2) / (2 b_j)``, so the sum over the active prefix is
    ``(S_{a^2/b} - kappa^2 X^2 S_{1/b}) / 2`` from prefix sums, O(1) per ``i``.
    """
    s = _sort_types(types)
    n = types.a.shape[0]
    agg = _solve_aggregate(s, kappa, jnp.arange(n))
    price = kappa * agg
    # active set without i: sorted agents with a > price, i removed
    k = jnp.searchsorted(-s.a_sorted, -price, side="left")  # count of a_sorted > price
    r = s.rank
    i_in = r < k
    own_aab = jnp.where(i_in, s.s_aab[r + 1] - s.s_aab[r], 0.0)
    own_inv_b = jnp.where(i_in, s.s_inv_b[r + 1] - s.s_inv_b[r], 0.0)
    sum_aab = s.s_aab[k] - own_aab
    sum_inv_b = s.s_inv_b[k] - own_inv_b
    value_sum = 0.5 * (sum_aab - price * price * sum_inv_b)
    return value_sum - congestion_cost(agg, kappa)
