"""Differentiable Price Mechanism (DPM) -- MBI, Grassi 2025 (arXiv 2512.20688).

The mechanism holds a differentiable team loss ``L(x; theta_hat)`` built from the agents'
reports and sends each agent ``G_i = -dL/dx_i`` at the current joint action: all N signals
come from one reverse-mode pass (``jax.grad``), O(N) per round, no per-agent loop.

Payments (team game, ``mechanisms.games.team``): agent ``i`` is charged the Clarke pivot
(VCG) payment at the outcome,

    t_i = W_{-i}(x*_{-i}) - W_{-i}(x),

``W_{-i}`` the welfare of everybody but ``i`` (operator included) valued with the others'
reports, ``x*_{-i}`` their optimum without ``i``. Then ``u_i = v_i(x_i) - t_i =
W(x) - W_{-i}(x*_{-i})``: team welfare minus a term ``i`` cannot affect (Groves), and
``du_i/dx_i = G_i`` under truthful reports.

What is and is not equal (VCG equivalence, derived here; tests in tests/mechanisms):

* Outcome: the DPM fixed point (``G_i = 0`` or ``x_i = 0, G_i <= 0``) is the KKT point of
  ``max W``: the decentralised outcome equals the closed-form optimum, the VCG outcome.
* Marginal incentives: ``dt_i/dx_i = -dW_{-i}/dx_i = kappa X`` = the externality price
  ``p_i = v_i'(x_i) - G_i``, at every ``x``. So the Clarke payment and the gradient price
  give the same incentive at the margin.
* Totals: integrating the price along agent ``i``'s own coordinate with the others held at
  the outcome gives ``E_i = C(X) - C(X - x_i)`` (``marginal_price_payment``), and
  ``t_i = E_i + R_i`` with the pivot term ``R_i = W_{-i}(x*_{-i}) - W_{-i}(0, x_{-i}) >= 0``,
  which does not depend on ``x_i``. Totals are not equal: they differ by exactly ``R_i``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mechanisms.games import team
from mechanisms.learning import projected_gradient_norm, projected_gradient_play

Array = jax.Array


def price_signals(loss: Callable[..., Array], x: Array, *params) -> Array:
    """DPM signals ``G = -grad_x L(x, *params)``: one backward pass for all agents."""
    return -jax.grad(loss)(x, *params)


def team_signals(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """``G_i = -dL/dx_i = a_i - b_i x_i - kappa X`` of the team game, via ``jax.grad``."""
    return price_signals(team.team_loss, x, reports, kappa)


def externality_prices(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """The part of ``G_i`` that is not ``i``'s own marginal value: ``p_i = v_i'(x_i) - G_i``."""
    own = jax.grad(lambda z: jnp.sum(team.values(z, reports)))(x)
    return own - team_signals(x, reports, kappa)


@jax.jit
def clarke_pivot_payments(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """Clarke pivot payments ``t_i = W_{-i}(x*_{-i}) - W_{-i}(x)`` (what ``i`` pays), all i.

    Non-negative for every ``x >= 0`` (the congestion cost only rises with ``x_i``).
    """
    return team.leave_one_out_welfare(reports, kappa) - team.others_welfare(x, reports, kappa)


def marginal_price_payment(x: Array, kappa: float) -> Array:
    """``E_i = int_0^{x_i} p_i(s, x_{-i}) ds = C(X) - C(X - x_i)``: the gradient price
    accumulated along ``i``'s own coordinate with the others at the outcome."""
    total = jnp.sum(x)
    return team.congestion_cost(total, kappa) - team.congestion_cost(total - x, kappa)


def default_steps(reports: team.TeamTypes, kappa: float) -> Array:
    """Safe per-agent steps ``eta_i = 1 / (b_i + kappa N)`` for gradient play."""
    return 1.0 / (reports.b + kappa * reports.a.shape[0])


class DPMState(NamedTuple):
    """State of the DPM price/best-response loop."""

    x: Array
    signals: Array
    rounds: Array
    residual: Array


def dpm_init(x0: Array, reports: team.TeamTypes, kappa: float) -> DPMState:
    g = team_signals(x0, reports, kappa)
    return DPMState(x0, g, jnp.asarray(0), projected_gradient_norm(x0, g))


def dpm_step(state: DPMState, reports: team.TeamTypes, kappa: float, steps: Array) -> DPMState:
    """One round: agents move along their signals, the mechanism re-prices."""
    x = projected_gradient_play(state.x, state.signals, steps)
    g = team_signals(x, reports, kappa)
    return DPMState(x, g, state.rounds + 1, projected_gradient_norm(x, g))


def dpm_solve(
    reports: team.TeamTypes, kappa: float, steps: Array, x0: Array, tol: float = 1e-10, max_rounds: int = 10_000
) -> DPMState:
    """Iterate ``dpm_step`` until the projected signal is ``<= tol`` or ``max_rounds``."""

    def cond(s: DPMState) -> Array:
        return (s.residual > tol) & (s.rounds < max_rounds)

    return jax.lax.while_loop(cond, lambda s: dpm_step(s, reports, kappa, steps), dpm_init(x0, reports, kappa))


def team_outcome(reports: team.TeamTypes, kappa: float) -> Array:
    """The direct mechanism's outcome: the DPM fixed point, i.e. the closed-form optimum."""
    return team.optimal_usage(reports, kappa)


@jax.jit
def team_utilities(reports: team.TeamTypes, true_types: team.TeamTypes, kappa: float) -> Array:
    """Realised utility ``u_i = v_i(x_i; theta_i) - t_i`` when the DPM runs to its fixed point on
    ``reports`` and charges Clarke payments (for ``properties.dsic_violation``)."""
    x = team_outcome(reports, kappa)
    return team.values(x, true_types) - clarke_pivot_payments(x, reports, kappa)


@jax.jit
def team_dsic_violation(true_types: team.TeamTypes, deviations: team.TeamTypes, kappa: float):
    """``properties.dsic_violation`` of the DPM/Clarke team mechanism (others truthful)."""
    from mechanisms import properties

    return properties.dsic_violation(lambda r, t: team_utilities(r, t, kappa), true_types, deviations)


def capped_clarke_payments(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """Clarke payments capped by what each agent's own report justifies (what ``i`` pays):

        t_i = min( W_{-i}(x*_{-i}) - W_{-i}(x),  max(v_i(x_i; theta_hat_i), 0) ).

    Guarantees at every ``x >= 0`` (not only at the optimum): no subsidy (``t_i >= 0``) and
    individual rationality under the reports (``v_i(x_i; theta_hat_i) - t_i >= 0``), so an
    agent that reports truthfully never loses by taking part, whatever the others report;
    in particular an agent using nothing pays nothing. Where the Clarke pivot is already IR,
    e.g. at the reported optimum ``x*(theta_hat)`` (Clarke 1971; Groves 1973), the payments
    are Clarke's. Why the cap is needed: reports and usage are separate steps, so others
    who report a huge value and then use nothing would otherwise make ``W_{-i}(x*_{-i})``
    large and charge the honest agents for an externality that never happens.
    """
    return jnp.minimum(clarke_pivot_payments(x, reports, kappa), jnp.maximum(team.values(x, reports), 0.0))
