"""Team game: closed-form optimum and leave-one-out pivots against a generic solver."""

import numpy as np
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize

import mechanisms  # noqa: F401  (x64)
from mechanisms.games import team


def brute_force_optimum(a, b, kappa, mask):
    """Welfare max over agents in ``mask`` by L-BFGS-B, independent of the closed form."""
    n = len(a)
    if not mask.any():
        return 0.0, 0.0

    def neg_w(x):
        x = np.where(mask, x, 0.0)
        return -(np.sum(a * x - 0.5 * b * x * x) - 0.5 * kappa * np.sum(x) ** 2)

    r = minimize(neg_w, np.full(n, 0.1), bounds=[(0, None)] * n, method="L-BFGS-B",
                 options=dict(ftol=1e-15, gtol=1e-12, maxiter=10_000))
    return -r.fun, float(np.sum(np.where(mask, r.x, 0.0)))


profiles = st.integers(1, 7).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n),
        st.lists(st.floats(0.2, 3.0), min_size=n, max_size=n),
        st.floats(0.05, 2.0),
    )
)


@settings(max_examples=25, deadline=None)
@given(profiles)
def test_optimum_and_leave_one_out_match_brute_force(profile):
    a, b, kappa = (np.array(profile[0]), np.array(profile[1]), profile[2])
    types = team.TeamTypes(jnp.array(a), jnp.array(b))
    n = len(a)
    w_bf, x_bf = brute_force_optimum(a, b, kappa, np.ones(n, bool))
    assert float(team.optimal_aggregate(types, kappa)) == pytest.approx(x_bf, abs=1e-5)
    assert float(team.optimal_welfare(types, kappa)) == pytest.approx(w_bf, abs=1e-8)
    loo_w = np.asarray(team.leave_one_out_welfare(types, kappa))
    loo_x = np.asarray(team.leave_one_out_aggregates(types, kappa))
    for i in range(n):
        mask = np.ones(n, bool)
        mask[i] = False
        w_i, x_i = brute_force_optimum(a, b, kappa, mask)
        assert loo_w[i] == pytest.approx(w_i, abs=1e-8)
        assert loo_x[i] == pytest.approx(x_i, abs=1e-5)


def test_ties_and_inactive_agents():
    # equal values (ties in the sort) and an agent priced out entirely
    types = team.TeamTypes(jnp.array([3.0, 3.0, 3.0, 0.2]), jnp.array([1.0, 2.0, 0.5, 1.0]))
    x = np.asarray(team.optimal_usage(types, 1.0))
    assert x[3] == 0.0
    # KKT: a_i - b_i x_i - kappa X == 0 for the active agents
    X = x.sum()
    np.testing.assert_allclose(3.0 - np.array([1.0, 2.0, 0.5]) * x[:3] - X, 0.0, atol=1e-12)
    # dropping the priced-out agent changes nothing
    loo = np.asarray(team.leave_one_out_aggregates(types, 1.0))
    assert loo[3] == pytest.approx(X, abs=1e-12)


def test_others_welfare_is_welfare_minus_own_value():
    types = team.TeamTypes(jnp.array([2.0, 1.0, 4.0]), jnp.array([1.0, 1.0, 3.0]))
    x = jnp.array([0.3, 0.0, 1.1])
    w_minus = np.asarray(team.others_welfare(x, types, 0.7))
    own = np.asarray(team.values(x, types))
    np.testing.assert_allclose(w_minus, float(team.welfare(x, types, 0.7)) - own, atol=1e-12)
