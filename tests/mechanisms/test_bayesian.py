"""AGV (expected externality) for the task market and the Bayesian DPM for the team game:
externalities recomputed by brute force, exact budget balance, BIC by deviation search
(common random numbers make the interim inequality hold sample by sample: deterministic)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mechanisms  # noqa: F401
from mechanisms import bayesian, properties
from mechanisms.games import assignment, team

from tests.mechanisms.test_team import brute_force_optimum as team_brute_force
from tests.mechanisms.test_vcg import cost_deviations

INST = assignment.example_instance()
PRIOR = bayesian.UniformCostPrior(jnp.where(jnp.isfinite(INST.costs), 0.5 * INST.costs, jnp.inf), 1.5 * INST.costs + 1.0)


def test_prior_sampling_respects_bounds_and_infeasible_pairs():
    s = np.asarray(bayesian.sample_costs(jax.random.key(0), PRIOR, 200))
    assert s.shape == (200, 4, 3)
    assert np.all(np.isinf(s[:, 3, 0]))
    fin = np.isfinite(np.asarray(PRIOR.lo))
    assert np.all(s[:, fin] >= np.asarray(PRIOR.lo)[fin]) and np.all(s[:, fin] <= np.asarray(PRIOR.hi)[fin])


def test_expected_externalities_match_brute_force():
    samples = bayesian.sample_costs(jax.random.key(1), PRIOR, 12)
    reports = INST.costs * jnp.array([[1.0], [1.2], [0.9], [1.0]])
    ee = np.asarray(bayesian.expected_externalities(reports, INST.values, INST.capacities, samples))
    expected = np.zeros(4)
    for s in np.asarray(samples):
        for i in range(4):
            prof = s.copy()
            prof[i] = np.asarray(reports[i])
            _, a = assignment.brute_force_optimum(prof, np.asarray(INST.values), np.ones(4, int))
            done = a >= 0
            others = done & (a != i)
            expected[i] += np.sum(np.asarray(INST.values)[done]) - np.sum(prof[a[others], np.flatnonzero(others)])
    np.testing.assert_allclose(ee, expected / 12, atol=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 2.0))
def test_agv_budget_balance_exact(seed, scale):
    reports = INST.costs * scale
    t = bayesian.agv_payments(reports, INST.values, INST.capacities, PRIOR, jax.random.key(seed), 30)
    assert abs(float(jnp.sum(t))) <= 1e-9
    v = properties.budget_violation(t[None], exact=True)
    assert float(v.amount) <= 1e-9


def test_agv_transfers_formula_by_hand():
    ee = jnp.array([3.0, 1.0, 2.0])
    # t_i = -EE_i + (sum_{j != i} EE_j) / 2
    np.testing.assert_allclose(bayesian.agv_transfers(ee), [-3.0 + 1.5, -1.0 + 2.5, -2.0 + 2.0], atol=1e-12)


def test_agv_is_bic_by_deviation_search():
    samples = bayesian.sample_costs(jax.random.key(2), PRIOR, 40)
    true = INST.costs
    devs = cost_deviations(np.where(np.isfinite(true), true, 50.0))
    devs = jnp.where(jnp.isinf(true)[:, None, :], jnp.inf, devs)  # keep "cannot do" as is
    interim = lambda r, t: bayesian.agv_interim_objective(r, t, INST.values, INST.capacities, samples)  # noqa: E731
    v = properties.bic_violation(jax.jit(interim), true, devs)
    assert float(v.amount) <= 1e-9
    # the search is not vacuous: with no transfer an agent only bears its cost and
    # overstates it to shed tasks
    selfish = lambda r, t: interim(r, t) - bayesian.expected_externalities(r, INST.values, INST.capacities, samples)  # noqa: E731
    assert float(properties.bic_violation(jax.jit(selfish), true, devs).amount) > 1e-3


def test_agv_interim_gain_equals_expected_true_welfare_difference():
    samples = np.asarray(bayesian.sample_costs(jax.random.key(3), PRIOR, 8))
    true = np.asarray(INST.costs)
    lie = true.copy()
    lie[0] *= 1.3
    obj = lambda r: np.asarray(bayesian.agv_interim_objective(jnp.asarray(r), INST.costs, INST.values,  # noqa: E731
                                                              INST.capacities, jnp.asarray(samples)))[0]
    gain = obj(lie) - obj(true)
    welfare_gap = 0.0
    for s in samples:
        truth_prof, lie_prof = s.copy(), s.copy()
        truth_prof[0], lie_prof[0] = true[0], lie[0]
        a_lie = assignment.solve_host(lie_prof, np.asarray(INST.values), np.ones(4, int))
        w_best, _ = assignment.brute_force_optimum(truth_prof, np.asarray(INST.values), np.ones(4, int))
        w_lie = float(assignment.welfare(jnp.asarray(truth_prof), INST.values, jnp.asarray(a_lie)))
        welfare_gap += (w_lie - w_best) / len(samples)
    assert gain == pytest.approx(welfare_gap, abs=1e-9)
    assert gain <= 1e-12


# ------------------------------------------------------------- Bayesian DPM (team game)

KAPPA = 0.5
TEAM_PRIOR = bayesian.TeamPrior(jnp.full(4, 1.0), jnp.full(4, 4.0), jnp.full(4, 0.5), jnp.full(4, 2.0))
TEAM_TYPES = team.TeamTypes(jnp.array([2.0, 1.5, 3.5, 1.1]), jnp.array([1.0, 0.7, 1.5, 0.6]))


def test_team_expected_externalities_match_generic_solver():
    samples = bayesian.sample_team_types(jax.random.key(4), TEAM_PRIOR, 2)
    ee = np.asarray(bayesian.team_expected_externalities(TEAM_TYPES, KAPPA, samples))
    expected = np.zeros(4)
    for s in range(2):
        for i in range(4):
            a, b = np.array(samples.a[s]), np.array(samples.b[s])
            a[i], b[i] = float(TEAM_TYPES.a[i]), float(TEAM_TYPES.b[i])
            w, _ = team_brute_force(a, b, KAPPA, np.ones(4, bool))
            x = np.asarray(team.optimal_usage(team.TeamTypes(jnp.asarray(a), jnp.asarray(b)), KAPPA))
            expected[i] += (w - (a[i] * x[i] - 0.5 * b[i] * x[i] ** 2)) / 2
    np.testing.assert_allclose(ee, expected, atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_team_agv_budget_balance_exact(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    reports = bayesian.sample_team_types(k1, TEAM_PRIOR, 1)
    reports = team.TeamTypes(reports.a[0], reports.b[0])
    t = bayesian.team_agv_payments(reports, KAPPA, bayesian.sample_team_types(k2, TEAM_PRIOR, 64))
    assert abs(float(jnp.sum(t))) <= 1e-9


def test_bayesian_dpm_is_bic_by_deviation_search():
    samples = bayesian.sample_team_types(jax.random.key(5), TEAM_PRIOR, 64)
    grid = properties.multiplicative_grid(TEAM_TYPES, jnp.array([0.5, 0.8, 0.95, 1.05, 1.25, 2.0]))
    interim = jax.jit(lambda r, t: bayesian.team_interim_objective(r, t, KAPPA, samples))
    v = properties.bic_violation(interim, TEAM_TYPES, grid)
    assert float(v.amount) <= 1e-9
    # not vacuous: keeping only one's own value (no transfer) rewards overstating a_i
    own_only = jax.jit(lambda r, t: interim(r, t) - bayesian.team_expected_externalities(r, KAPPA, samples))
    assert float(properties.bic_violation(own_only, TEAM_TYPES, grid).amount) > 1e-3


def test_bayesian_dpm_outcome_is_the_dpm_fixed_point():
    samples = bayesian.sample_team_types(jax.random.key(6), TEAM_PRIOR, 64)
    u = bayesian.team_agv_utilities(TEAM_TYPES, TEAM_TYPES, KAPPA, samples)
    x = team.optimal_usage(TEAM_TYPES, KAPPA)
    t = bayesian.team_agv_payments(TEAM_TYPES, KAPPA, samples)
    np.testing.assert_allclose(u, team.values(x, TEAM_TYPES) - t, atol=1e-12)
    assert float(jnp.sum(u)) == pytest.approx(float(jnp.sum(team.values(x, TEAM_TYPES))), abs=1e-9)
