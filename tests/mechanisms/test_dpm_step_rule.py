"""The DPM's ``newton`` step rule: rounds independent of N, its stated guarantee, its fixed point.

Every claim of ``mechanisms.dpm.newton_price_move``'s docstring is checked here against
quantities computed independently (closed-form optimum, the price function ``h``, dense
eigenvalues), not against the implementation's own intermediate values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechanisms  # noqa: F401  (x64)
from mechanisms import dpm
from mechanisms.games import team
from mechanisms.learning import free_coordinates

TOL = 1e-8


def draw(n: int, seed: int, a_lo: float = 1.0, a_hi: float = 5.0) -> team.TeamTypes:
    rng = np.random.default_rng(seed)
    return team.TeamTypes(jnp.asarray(rng.uniform(a_lo, a_hi, n)), jnp.asarray(rng.uniform(0.5, 2.0, n)))


def solve(types, kappa, rule, x0=None, tol=TOL, max_rounds=100_000):
    x0 = jnp.zeros_like(types.a) if x0 is None else x0
    return dpm.dpm_solve(types, kappa, dpm.default_steps(types, kappa, rule), x0, tol=tol,
                         max_rounds=max_rounds, rule=rule)


def assert_at_optimum(state, types, kappa):
    x_star = np.asarray(team.optimal_usage(types, kappa))  # sort + binary search, independent
    np.testing.assert_allclose(np.asarray(state.x), x_star, atol=1e-9)


@pytest.mark.parametrize("n", [10, 100, 1000, 10_000])
def test_interior_team_converges_in_one_round_for_every_n(n):
    # values in [4, 5], congestion per capita: every agent is active at the optimum, so by
    # claim 4 the first Newton move lands on x* whatever N is
    types, kappa = draw(n, seed=n, a_lo=4.0), 1.0 / n
    x_star = np.asarray(team.optimal_usage(types, kappa))
    assert (x_star > 0).all()
    state = solve(types, kappa, "newton", tol=1e-12)
    assert int(state.rounds) == 1 and float(state.residual) <= 1e-12
    assert_at_optimum(state, types, kappa)


def test_rounds_to_tolerance_do_not_grow_with_n_with_idle_agents():
    # values in [1, 5], kappa = 50 / N: part of the team is idle at the optimum. Measured:
    # 5, 5, 6, 6 rounds at N = 10^2 ... 10^5 (Newton ends exactly once the active set is found)
    rounds = {}
    for n in (100, 1000, 10_000, 100_000):
        types, kappa = draw(n, seed=1), 50.0 / n
        assert (np.asarray(team.optimal_usage(types, kappa)) == 0).any()
        state = solve(types, kappa, "newton")
        assert float(state.residual) <= TOL
        assert_at_optimum(state, types, kappa)
        rounds[n] = int(state.rounds)
    assert rounds[100] == rounds[1000] and max(rounds.values()) <= rounds[100] + 1 <= 7, rounds


def test_fixed_rule_rounds_grow_like_n_newton_rounds_do_not():
    fixed, newton = {}, {}
    for n in (10, 100, 1000):
        types = draw(n, seed=2)
        fixed[n] = int(solve(types, 0.5, "fixed").rounds)
        newton[n] = int(solve(types, 0.5, "newton").rounds)
    assert fixed[1000] >= 30 * fixed[10], fixed  # the defect the issue reports: O(N)
    assert max(newton.values()) <= 8 and newton[1000] * 100 < fixed[1000], (newton, fixed)


def h(p, types, kappa):
    """``h(p) = kappa sum_j max(0, (a_j - p) / b_j) - p``, root at the optimal price."""
    a, b = np.asarray(types.a), np.asarray(types.b)
    return kappa * np.maximum(0.0, (a - p) / b).sum() - p


def slope_mass(p, types):
    """``S(p) = sum_{a_j > p} 1 / b_j``."""
    a, b = np.asarray(types.a), np.asarray(types.b)
    return (1.0 / b[a > p]).sum()


@pytest.mark.parametrize("kappa, n", [(0.5, 1000), (0.5, 20_000), (50.0 / 2000, 2000)])
def test_price_iteration_is_monotone_newton_with_the_stated_contraction(kappa, n):
    types = draw(n, seed=3)
    a, b = np.asarray(types.a), np.asarray(types.b)
    p_star = kappa * float(team.optimal_aggregate(types, kappa))
    assert abs(h(p_star, types, kappa)) <= 1e-9 * max(1.0, p_star)
    s_star = slope_mass(p_star, types)
    state = dpm.dpm_init(jnp.zeros(n), types, kappa)
    steps = dpm.default_steps(types, kappa, "newton")
    prices = []
    for _ in range(30):
        if float(state.residual) <= 1e-13:
            break
        x = np.asarray(state.x)
        move = float(dpm.newton_price_move(state.x, state.signals, types, kappa))
        p = kappa * x.sum() + move
        prices.append(p)
        nxt = dpm.dpm_step(state, types, kappa, steps, "newton")
        # the agents' rule is a best response to the price p: x_i = max(0, (a_i - p) / b_i)
        np.testing.assert_allclose(np.asarray(nxt.x), np.maximum(0.0, (a - p) / b), atol=1e-10)
        # claim 1: below the optimal price; claim 5: residual bound
        assert p <= p_star + 1e-12
        e, s_now = p_star - p, slope_mass(p, types)
        assert float(nxt.residual) <= (1 + kappa * s_now) * e + 1e-10
        assert float(nxt.residual) == pytest.approx(h(p, types, kappa), abs=1e-9)
        state = nxt
    assert float(state.residual) <= 1e-13 and len(prices) < 30
    # claim 2: monotone from round 1 on; claim 3: e_{t+1} <= r_t e_t
    for t in range(1, len(prices)):
        assert prices[t] >= prices[t - 1] - 1e-12
        e_prev, e_next = p_star - prices[t - 1], p_star - prices[t]
        s_prev = slope_mass(prices[t - 1], types)
        r = kappa * (s_prev - s_star) / (1 + kappa * s_prev)
        assert r < 1 and e_next <= r * e_prev + 1e-12
    assert_at_optimum(state, types, kappa)


def test_any_start_converges_and_first_price_is_below_the_optimum():
    types, kappa = draw(500, seed=4), 0.02
    p_star = kappa * float(team.optimal_aggregate(types, kappa))
    for seed in range(5):
        x0 = jnp.asarray(np.random.default_rng(seed).uniform(0.0, 10.0, 500) * (seed % 2))  # zeros or large
        g0 = dpm.team_signals(x0, types, kappa)
        p0 = kappa * float(x0.sum()) + float(dpm.newton_price_move(x0, g0, types, kappa))
        assert p0 <= p_star + 1e-12
        state = solve(types, kappa, "newton", x0=x0, tol=1e-12)
        assert float(state.residual) <= 1e-12 and int(state.rounds) <= 10
        assert_at_optimum(state, types, kappa)


def test_optimum_is_a_fixed_point_for_any_steps_and_the_broadcast_is_zero_there():
    types, kappa = draw(200, seed=5), 0.1
    x_star = team.optimal_usage(types, kappa)
    g = dpm.team_signals(x_star, types, kappa)
    assert abs(float(dpm.newton_price_move(x_star, g, types, kappa))) <= 1e-12
    for seed in range(3):
        steps = jnp.asarray(np.random.default_rng(seed).uniform(0.01, 3.0, 200))
        st = dpm.dpm_step(dpm.dpm_init(x_star, types, kappa), types, kappa, steps, "newton")
        np.testing.assert_allclose(np.asarray(st.x), np.asarray(x_star), atol=1e-12)


def test_broadcast_is_the_newton_step_of_the_team_loss_on_the_free_set():
    # (diag(b_F) + kappa 1 1^T)^{-1} G_F == (G_F - pi) / b_F, the dense solve done independently
    types, kappa = draw(40, seed=6), 0.3
    x = jnp.asarray(np.random.default_rng(6).uniform(0.0, 1.0, 40) * (np.arange(40) % 3 > 0))
    g = dpm.team_signals(x, types, kappa)
    free = np.asarray(free_coordinates(x, g))
    assert 0 < free.sum() < 40
    hess = jax.hessian(team.team_loss)(x, types, kappa)
    newton = np.linalg.solve(np.asarray(hess)[np.ix_(free, free)], np.asarray(g)[free])
    move = float(dpm.newton_price_move(x, g, types, kappa))
    np.testing.assert_allclose((np.asarray(g)[free] - move) / np.asarray(types.b)[free], newton, atol=1e-12)


def test_no_diagonal_step_contracts_faster_than_one_minus_4bmax_over_kappa_n():
    # the docstring's lower bound for aggregate-blind steps, on random stable diagonals
    n, kappa = 60, 0.5
    types = draw(n, seed=7)
    b = np.asarray(types.b)
    hess = np.diag(b) + kappa * np.ones((n, n))
    rng = np.random.default_rng(7)
    for _ in range(20):
        d = rng.uniform(0.1, 1.0, n) ** 3
        d *= rng.uniform(0.2, 1.99) / (kappa * d.sum())  # tr D < 2 / kappa (stability needs it)
        rho = np.max(np.abs(np.linalg.eigvals(np.eye(n) - np.diag(d) @ hess)))
        assert rho >= 1 - 4 * b.max() / (kappa * n) - 1e-12
    # the newton rule on the same team: converged in a handful of rounds
    assert int(solve(types, kappa, "newton").rounds) <= 6


def test_misreported_values_converge_to_the_reported_optimum():
    types, kappa = draw(300, seed=8), 0.05
    reported = team.TeamTypes(types.a * jnp.where(jnp.arange(300) % 7 == 0, 1.3, 1.0), types.b)
    state = solve(reported, kappa, "newton", tol=1e-12)
    assert float(state.residual) <= 1e-12
    assert_at_optimum(state, reported, kappa)

