"""Incentive-design environments for the social-gradient flow (arXiv 2604.11346).

Sign convention (mechanism-notes.md): an incentive is a price vector ``p`` added to each
agent's cost as ``p_i^T x_i`` (``p > 0`` a tax/toll, ``p < 0`` a subsidy). The agents'
equilibrium ``x*(p)`` solves the variational inequality of ``F(x) + p`` on the feasible set,
``F`` the agents' pseudo-gradient (stacked own-cost gradients), which the planner never sees.

Two games:

* ``ParallelLinks`` -- nonatomic routing of ``demand`` over parallel links with latencies
  ``l_e(x) = a_e + b_e x^{d_e}`` (``d_e >= 1``). Feasible set: the simplex
  ``{x >= 0, sum x = demand}``. Wardrop equilibrium = minimiser of the Beckmann potential
  ``sum_e int_0^{x_e} (l_e + p_e)``; social cost ``S(x) = sum_e x_e l_e(x_e)``; Pigouvian
  toll ``x_e l_e'(x_e) = d_e b_e x_e^{d_e}`` at the optimum. ``pigou()`` is demand 1, latencies
  ``x`` and ``1``: no toll -> all on the variable link, ``S = 1``; optimum ``1/2-1/2``,
  ``S = 3/4``, toll ``1/2`` on the variable link.
* ``QuadraticGame`` -- N agents, ``x_i`` real, private cost
  ``J_i(x) = q_i x_i^2 / 2 - r_i x_i + c x_i X`` (``X = sum_j x_j``), pseudo-gradient
  ``F_i = q_i x_i - r_i + c (X + x_i)``, Jacobian ``diag(q + c) + c 11^T`` (strongly monotone
  for ``q > 0, c >= 0``). Planner's social cost ``S(x) = sum_i (q_i x_i^2/2 - r_i x_i) +
  s X^2 / 2`` (a congestion/pollution weight ``s`` the agents do not internalise). Closed
  forms (derived here): optimum ``x_i = (r_i - s X)/q_i`` with
  ``X = (sum r/q) / (1 + s sum 1/q)``; equilibrium under ``p``:
  ``x_i = (r_i - p_i - c X)/(q_i + c)``, ``X = (sum (r-p)/(q+c)) / (1 + c sum 1/(q+c))``;
  optimal incentive ``p_i = s X° - c (X° + x°_i)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


# ----------------------------------------------------------------------------- routing


class ParallelLinks(NamedTuple):
    """Parallel-link network: latency ``l_e(x) = a_e + b_e x^{d_e}``, total ``demand``."""

    a: Array
    b: Array
    d: Array
    demand: Array


def pigou() -> ParallelLinks:
    """Pigou's network: demand 1, latencies ``x`` (link 0) and ``1`` (link 1)."""
    return ParallelLinks(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]), jnp.asarray(1.0))


def latency(x: Array, net: ParallelLinks) -> Array:
    """``l_e(x_e) = a_e + b_e x_e^{d_e}`` (the agents' pseudo-gradient on link e)."""
    return net.a + net.b * jnp.maximum(x, 0.0) ** net.d


def social_cost(x: Array, net: ParallelLinks) -> Array:
    """Total travel time ``S(x) = sum_e x_e l_e(x_e)`` (tolls are transfers, not counted)."""
    return jnp.sum(x * latency(x, net))


def social_cost_gradient(x: Array, net: ParallelLinks) -> Array:
    """``dS/dx_e = l_e(x_e) + x_e l_e'(x_e)``, via ``jax.grad`` (the planner's only model)."""
    return jax.grad(social_cost)(x, net)


def pigouvian_toll(x: Array, net: ParallelLinks) -> Array:
    """Marginal-externality toll ``x_e l_e'(x_e) = d_e b_e x_e^{d_e}``."""
    return net.d * net.b * jnp.maximum(x, 0.0) ** net.d


def project_simplex(v: Array, total: Array) -> Array:
    """Euclidean projection onto ``{x >= 0, sum x = total}`` (sort-based, differentiable a.e.)."""
    n = v.shape[0]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - total
    ks = jnp.arange(1, n + 1)
    cond = u - css / ks > 0
    rho = jnp.max(jnp.where(cond, ks, 0))
    theta = css[rho - 1] / rho
    return jnp.maximum(v - theta, 0.0)


def project_tangent(p: Array) -> Array:
    """Remove the component of ``p`` that no incentive can act on (a common shift of all
    link tolls leaves the single-commodity equilibrium unchanged): ``p - mean(p)``."""
    return p - jnp.mean(p)


def routing_equilibrium_step(x: Array, p: Array, net: ParallelLinks, eta: float) -> Array:
    """One round of projected gradient play of the (nonatomic) drivers:
    ``x <- Proj_simplex(x - eta (l(x) + p))``; its fixed points are the tolled Wardrop
    equilibria. Converges for ``eta < 2 / max_e sup l_e'``."""
    return project_simplex(x - eta * (latency(x, net) + p), net.demand)


def wardrop_equilibrium(
    net: ParallelLinks, p: Array, x0: Array | None = None, eta: float = 0.5, tol: float = 1e-13, max_iter: int = 100_000
) -> Array:
    """Tolled Wardrop equilibrium ``x*(p)`` by iterating ``routing_equilibrium_step`` to a fixed point."""
    n = net.a.shape[0]
    x0 = jnp.full((n,), net.demand / n) if x0 is None else x0

    def cond(c):
        x, prev, k = c
        return (jnp.max(jnp.abs(x - prev)) > tol) & (k < max_iter)

    def body(c):
        x, _, k = c
        return routing_equilibrium_step(x, p, net, eta), x, k + 1

    x, _, _ = jax.lax.while_loop(cond, body, (routing_equilibrium_step(x0, p, net, eta), x0, 1))
    return x


def routing_optimum(net: ParallelLinks, eta: float = 0.25, tol: float = 1e-13, max_iter: int = 100_000) -> Array:
    """System optimum ``argmin S`` on the simplex: the Wardrop equilibrium of the marginal-cost
    latencies, computed by projected gradient descent on ``S`` (a second, independent method)."""
    n = net.a.shape[0]

    def cond(c):
        x, prev, k = c
        return (jnp.max(jnp.abs(x - prev)) > tol) & (k < max_iter)

    def body(c):
        x, _, k = c
        return project_simplex(x - eta * social_cost_gradient(x, net), net.demand), x, k + 1

    x0 = jnp.full((n,), net.demand / n)
    x, _, _ = jax.lax.while_loop(cond, body, (x0, x0 + 1.0, 0))
    return x


# ----------------------------------------------------------------------- quadratic game


class QuadraticGame(NamedTuple):
    """Quadratic aggregative game: private ``q, r, c``; planner's congestion weight ``s``."""

    q: Array
    r: Array
    c: Array
    s: Array


def quadratic_pseudo_gradient(x: Array, game: QuadraticGame) -> Array:
    """Agents' own-cost gradients ``F_i = q_i x_i - r_i + c (X + x_i)`` (private)."""
    return game.q * x - game.r + game.c * (jnp.sum(x) + x)


def quadratic_social_cost(x: Array, game: QuadraticGame) -> Array:
    """``S(x) = sum_i (q_i x_i^2 / 2 - r_i x_i) + s X^2 / 2``."""
    return jnp.sum(0.5 * game.q * x * x - game.r * x) + 0.5 * game.s * jnp.sum(x) ** 2


def quadratic_social_gradient(x: Array, game: QuadraticGame) -> Array:
    """``dS/dx_i = q_i x_i - r_i + s X`` via ``jax.grad``."""
    return jax.grad(quadratic_social_cost)(x, game)


def quadratic_equilibrium(game: QuadraticGame, p: Array) -> Array:
    """Closed-form Nash equilibrium under incentives ``p``: solves ``F(x) + p = 0``, O(N)."""
    w = 1.0 / (game.q + game.c)
    agg = jnp.sum((game.r - p) * w) / (1.0 + game.c * jnp.sum(w))
    return (game.r - p - game.c * agg) * w


def quadratic_optimum(game: QuadraticGame) -> Array:
    """Closed-form social optimum ``argmin S``."""
    agg = jnp.sum(game.r / game.q) / (1.0 + game.s * jnp.sum(1.0 / game.q))
    return (game.r - game.s * agg) / game.q


def quadratic_optimal_incentive(game: QuadraticGame) -> Array:
    """The incentive that implements the optimum: ``p_i = -F_i(x°) = s X° - c (X° + x°_i)``."""
    return -quadratic_pseudo_gradient(quadratic_optimum(game), game)
