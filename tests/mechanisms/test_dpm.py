"""DPM: signals, convergence to the optimum, Clarke payments and the VCG equivalence."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mechanisms  # noqa: F401
from mechanisms import dpm, properties
from mechanisms.games import team

from tests.mechanisms.test_team import brute_force_optimum, profiles

KAPPA = 0.5
TYPES = team.TeamTypes(jnp.array([4.0, 3.0, 2.5, 1.0]), jnp.array([1.0, 0.5, 2.0, 1.0]))


def test_signals_are_minus_loss_gradient_in_closed_form():
    x = jnp.array([0.5, 1.0, 0.0, 2.0])
    g = np.asarray(dpm.team_signals(x, TYPES, KAPPA))
    expected = np.asarray(TYPES.a) - np.asarray(TYPES.b) * np.asarray(x) - KAPPA * float(x.sum())
    np.testing.assert_allclose(g, expected, atol=1e-12)


def test_gradient_play_converges_to_closed_form_optimum():
    state = dpm.dpm_solve(TYPES, KAPPA, dpm.default_steps(TYPES, KAPPA), jnp.zeros(4), tol=1e-12)
    assert float(state.residual) <= 1e-12
    np.testing.assert_allclose(state.x, team.optimal_usage(TYPES, KAPPA), atol=1e-10)
    w, w_star = float(team.welfare(state.x, TYPES, KAPPA)), float(team.optimal_welfare(TYPES, KAPPA))
    assert abs(w - w_star) <= 1e-9 * abs(w_star)


def test_clarke_payments_match_brute_force_reoptimisation():
    a, b = np.asarray(TYPES.a), np.asarray(TYPES.b)
    x = np.asarray(team.optimal_usage(TYPES, KAPPA))
    t = np.asarray(dpm.clarke_pivot_payments(jnp.asarray(x), TYPES, KAPPA))
    for i in range(4):
        mask = np.arange(4) != i
        w_without_i, _ = brute_force_optimum(a, b, KAPPA, mask)
        others_now = np.sum((a * x - 0.5 * b * x * x)[mask]) - 0.5 * KAPPA * x.sum() ** 2
        assert t[i] == pytest.approx(w_without_i - others_now, abs=1e-8)


def test_marginal_payment_equals_externality_price_everywhere():
    x = jnp.array([0.3, 2.0, 0.1, 0.7])
    dt = jnp.diagonal(jax.jacfwd(lambda z: dpm.clarke_pivot_payments(z, TYPES, KAPPA))(x))
    np.testing.assert_allclose(dt, dpm.externality_prices(x, TYPES, KAPPA), atol=1e-12)
    np.testing.assert_allclose(dt, KAPPA * float(x.sum()), atol=1e-12)


def test_clarke_total_is_price_integral_plus_pivot_term():
    x = team.optimal_usage(TYPES, KAPPA)
    t = np.asarray(dpm.clarke_pivot_payments(x, TYPES, KAPPA))
    e = np.asarray(dpm.marginal_price_payment(x, KAPPA))
    # pivot term R_i = W_{-i}(x*_{-i}) - W_{-i}(0, x_{-i}), computed independently
    for i in range(4):
        x0 = x.at[i].set(0.0)
        r_i = float(team.leave_one_out_welfare(TYPES, KAPPA)[i] - team.others_welfare(x0, TYPES, KAPPA)[i])
        assert r_i >= -1e-12
        assert t[i] == pytest.approx(e[i] + r_i, abs=1e-10)


def test_truthful_utility_is_team_welfare_minus_pivot():
    u = dpm.team_utilities(TYPES, TYPES, KAPPA)
    w = team.optimal_welfare(TYPES, KAPPA)
    np.testing.assert_allclose(u, w - team.leave_one_out_welfare(TYPES, KAPPA), atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(profiles)
def test_dsic_and_ir_on_random_profiles(profile):
    a, b, kappa = (jnp.array(profile[0]), jnp.array(profile[1]), profile[2])
    types = team.TeamTypes(a, b)
    grid = properties.multiplicative_grid(types, jnp.array([0.3, 0.6, 0.9, 0.99, 1.01, 1.1, 1.5, 2.5]))
    v = dpm.team_dsic_violation(types, grid, kappa)
    assert float(v.relative) <= 1e-6
    ir = properties.ir_violation(dpm.team_utilities(types, types, kappa))
    assert float(ir.amount) <= 1e-9


def test_dsic_check_catches_a_non_truthful_payment_rule():
    # pay-your-report-style rule (charge only the externality price at the outcome): a
    # mechanism that is not DSIC, so the search must find a profitable misreport
    def utility(reports, true_types):
        x = dpm.team_outcome(reports, KAPPA)
        return team.values(x, true_types) - dpm.externality_prices(x, reports, KAPPA) * x

    grid = properties.multiplicative_grid(TYPES, jnp.linspace(0.5, 1.5, 11))
    v = properties.dsic_violation(utility, TYPES, grid)
    assert float(v.relative) > 1e-3
