"""Social-gradient incentive design -- Vasileiou, Zhang, Zhang 2026, "Incentive Design
without Hypergradients: A Social-Gradient Method" (arXiv 2604.11346; see
``papers/mechanism-notes.md`` for what is stated there and what is derived here).

Setting and sign convention: agent ``i`` minimises ``J_i(x) + p_i^T x_i`` (``p_i > 0`` a tax
or toll on ``x_i``, ``p_i < 0`` a subsidy); the agents play (or learn) an equilibrium
``x*(p)``; the planner wants to minimise a social cost ``S(x)`` it can evaluate, without
knowing the ``J_i``. Incentives are transfers and are not part of ``S``.

The flow (stated in the paper):  ``dp/dt = P(grad_x S(x*(p)))``, with ``P`` the projection
onto the directions incentives can act on (identity for unconstrained actions; removal of
the per-commodity mean in routing, where a common toll shift changes nothing).

Descent property (derived here, linear incentives, game strongly monotone with modulus
``mu`` and Jacobian ``H`` of the pseudo-gradient): ``dx*/dp = -H^{-1}``, so
``grad Phi = -H^{-T} grad S`` for ``Phi(p) = S(x*(p))`` and along the flow
``dPhi/dt = -grad S^T H^{-1} grad S <= -(mu / ||H||^2) ||grad S||^2 < 0``: the social cost
decreases whatever the agents' costs. Fixed points: ``P grad S(x*) = 0``, i.e. the social
optimum over what incentives can reach (for strongly convex ``S`` the unique optimum).

Discretisation (``social_gradient_step``): ``p_{k+1} = p_k + alpha P grad S(x*(p_k))``.
Step condition (derived, descent lemma on ``Phi``, which is ``L_S / sigma_min(H)^2``-smooth):
``0 < alpha < 2 mu sigma_min(H)^2 / (||H||^2 L_S)``; sufficient ``alpha < 2 mu^3 / (L_H^2 L_S)``.
Pigou: the toll difference obeys ``tau <- tau + alpha (1 - 2 tau)``, contracting for ``alpha < 1``.

Two-timescale version (``two_timescale_step``): agents run any learning rule that tracks
``x*(p)`` (e.g. projected gradient play, ``mechanisms.learning``) with step ``eta_k`` on the
fast timescale while ``p`` moves with ``alpha_k`` on the slow one, using the *current*
joint action: ``x_{k+1} = learn(x_k, p_k)``, ``p_{k+1} = p_k + alpha_k P grad S(x_{k+1})``.
Conditions (stated by the paper for the flow limit; standard two-timescale stochastic
approximation, Borkar): ``sum alpha_k = inf``, ``alpha_k / eta_k -> 0``, agents' dynamics
for fixed ``p`` contracting to ``x*(p)`` uniformly over a compact safe set of ``p``. With
constant steps (used here): ``eta`` inside the agents' contraction region and
``alpha << eta mu`` (the slow drift must be small against the agents' contraction rate);
the error of the constant-step scheme is ``O(alpha / (eta mu))`` in transients and zero at
the fixed point, which is the same as the flow's.

Baseline (``hypergradient``): implicit differentiation through the equilibrium fixed point
``x = T(x, p)``: ``grad Phi = (dT/dp)^T (I - dT/dx)^{-T} grad S``, which needs ``T``, i.e. the
agents' *true* costs. Matrix-free (GMRES on vector-Jacobian products), O(N) per product.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.sparse.linalg import gmres

Array = jax.Array
Projection = Callable[[Array], Array]


def _identity(v: Array) -> Array:
    return v


class SocialGradientState(NamedTuple):
    """Planner's state: incentives ``p``, rounds taken, last ``||P grad S||_inf``."""

    p: Array
    rounds: Array
    grad_norm: Array


def social_gradient_init(p0: Array) -> SocialGradientState:
    """Start the planner at incentives ``p0`` (``grad_norm`` = inf until the first step)."""
    return SocialGradientState(jnp.asarray(p0), jnp.asarray(0), jnp.asarray(jnp.inf))


def social_gradient_step(
    state: SocialGradientState, social_grad: Array, step: Array | float, project: Projection = _identity
) -> SocialGradientState:
    """One planner round: ``p <- p + alpha P(grad_x S(x))``, ``grad_x S`` evaluated at the
    agents' observed joint action ``x`` (equilibrium or current learning iterate).

    Args:
      state: planner state.
      social_grad: ``grad_x S(x)`` at the observed joint action, same shape as ``p``.
      step: ``alpha`` (scalar or per-coordinate), see the module docstring for the bound.
      project: ``P``, the projection onto reachable incentive directions.
    Returns:
      the new state; ``state.p`` is the incentive to post next round.
    """
    g = project(social_grad)
    return SocialGradientState(state.p + step * g, state.rounds + 1, jnp.max(jnp.abs(g)))


class FlowTrace(NamedTuple):
    """Per-round trace of a flow: incentives, joint action, social cost."""

    p: Array
    x: Array
    social_cost: Array


def social_gradient_flow(
    p0: Array,
    equilibrium: Callable[[Array], Array],
    social_cost: Callable[[Array], Array],
    step: Array | float,
    rounds: int,
    project: Projection = _identity,
) -> tuple[SocialGradientState, FlowTrace]:
    """Discretised flow with observed equilibria: each round the agents respond with
    ``x = equilibrium(p)`` and the planner takes ``social_gradient_step``. ``lax.scan``."""

    def body(state, _):
        x = equilibrium(state.p)
        s, g = jax.value_and_grad(social_cost)(x)
        return social_gradient_step(state, g, step, project), FlowTrace(state.p, x, s)

    return jax.lax.scan(body, social_gradient_init(p0), None, length=rounds)


class TwoTimescaleState(NamedTuple):
    """Joint state: agents' current actions ``x`` and the planner's state."""

    x: Array
    planner: SocialGradientState


def two_timescale_init(x0: Array, p0: Array) -> TwoTimescaleState:
    return TwoTimescaleState(jnp.asarray(x0), social_gradient_init(p0))


def two_timescale_step(
    state: TwoTimescaleState,
    learn: Callable[[Array, Array], Array],
    social_grad: Callable[[Array], Array],
    alpha: Array | float,
    project: Projection = _identity,
    inner: int = 1,
) -> TwoTimescaleState:
    """One round: ``inner`` agent learning steps ``x <- learn(x, p)`` (fast timescale, the
    agents' own rule and costs), then one planner step at the new joint action (slow)."""
    x = jax.lax.fori_loop(0, inner, lambda _, z: learn(z, state.planner.p), state.x)
    return TwoTimescaleState(x, social_gradient_step(state.planner, social_grad(x), alpha, project))


def two_timescale_run(
    state: TwoTimescaleState,
    learn: Callable[[Array, Array], Array],
    social_cost: Callable[[Array], Array],
    alpha: Array | float,
    rounds: int,
    project: Projection = _identity,
    inner: int = 1,
) -> tuple[TwoTimescaleState, FlowTrace]:
    """``rounds`` of ``two_timescale_step`` under ``lax.scan`` with the trace."""

    def body(s, _):
        s2 = two_timescale_step(s, learn, jax.grad(social_cost), alpha, project, inner)
        return s2, FlowTrace(s2.planner.p, s2.x, social_cost(s2.x))

    return jax.lax.scan(body, state, None, length=rounds)


# ------------------------------------------------------------------ hypergradient baseline


def hypergradient(
    p: Array,
    x_star: Array,
    fixed_point_map: Callable[[Array, Array], Array],
    social_cost: Callable[[Array], Array],
    tol: float = 1e-12,
) -> Array:
    """``grad_p S(x*(p))`` by the implicit function theorem at ``x* = T(x*, p)``:
    solve ``(I - dT/dx)^T lam = grad S(x*)`` (GMRES on VJPs), return ``(dT/dp)^T lam``.
    ``T`` encodes the agents' true costs -- the knowledge the social gradient does without."""
    g = jax.grad(social_cost)(x_star)
    _, vjp_x = jax.vjp(lambda z: fixed_point_map(z, p), x_star)
    lam, _ = gmres(lambda v: v - vjp_x(v)[0], g, tol=tol, atol=0.0, restart=min(50, g.shape[0]), maxiter=50)
    _, vjp_p = jax.vjp(lambda q: fixed_point_map(x_star, q), p)
    return vjp_p(lam)[0]


def hypergradient_flow(
    p0: Array,
    equilibrium: Callable[[Array], Array],
    fixed_point_map: Callable[[Array, Array], Array],
    social_cost: Callable[[Array], Array],
    step: Array | float,
    rounds: int,
) -> tuple[Array, FlowTrace]:
    """Hypergradient descent ``p <- p - beta grad Phi(p)`` (MPEC baseline), ``lax.scan``."""

    def body(p, _):
        x = equilibrium(p)
        hg = hypergradient(p, x, fixed_point_map, social_cost)
        return p - step * hg, FlowTrace(p, x, social_cost(x))

    return jax.lax.scan(body, jnp.asarray(p0), None, length=rounds)
