"""The DPM's ``clearing`` step rule: one round to the exact optimum for every N.

Checks the guarantees of ``mechanisms.dpm.clearing_price`` and ``clearing_price_move``
against quantities computed independently: the closed-form optimum (``team.optimal_usage``,
sort + binary search), the price function ``h`` evaluated in NumPy, and the ``newton``
rule's own round count.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import mechanisms  # noqa: F401  (x64)
from mechanisms import dpm
from mechanisms.games import team

TOL = 1e-8


def draw(n: int, seed: int) -> team.TeamTypes:
    rng = np.random.default_rng(seed)
    return team.TeamTypes(jnp.asarray(rng.uniform(1.0, 5.0, n)), jnp.asarray(rng.uniform(0.5, 2.0, n)))


def solve(types, kappa, rule, x0=None, tol=TOL, steps=None):
    x0 = jnp.zeros_like(types.a) if x0 is None else x0
    steps = dpm.default_steps(types, kappa, rule) if steps is None else steps
    return dpm.dpm_solve(types, kappa, steps, x0, tol=tol, max_rounds=10_000, rule=rule)


def h(p, types, kappa):
    """``h(p) = kappa sum_j max(0, (a_j - p) / b_j) - p`` in NumPy: root at the optimal price."""
    a, b = np.asarray(types.a), np.asarray(types.b)
    return kappa * np.maximum(0.0, (a - p) / b).sum() - p


@pytest.mark.parametrize("kappa_of_n", [lambda n: 0.5, lambda n: 50.0 / n], ids=["kappa=0.5", "kappa=50/N"])
def test_rounds_are_one_for_every_n_and_end_on_the_closed_form_optimum(kappa_of_n):
    rounds = {}
    for n in (10, 1000, 100_000):
        types, kappa = draw(n, seed=n), kappa_of_n(n)
        x_star = np.asarray(team.optimal_usage(types, kappa))
        state = solve(types, kappa, "clearing")
        assert float(state.residual) <= TOL
        np.testing.assert_allclose(np.asarray(state.x), x_star, atol=1e-12)
        rounds[n] = int(state.rounds)
    assert rounds == {10: 1, 1000: 1, 100_000: 1}
    # the newton rule on the largest team needs several rounds at fixed kappa: the gain is real
    if kappa_of_n(2) == 0.5:
        assert int(solve(draw(100_000, seed=100_000), 0.5, "newton").rounds) >= 8


@pytest.mark.parametrize("n, kappa", [(1000, 0.5), (20_000, 0.5), (2000, 0.025), (7, 3.0)])
def test_clearing_price_is_the_root_of_h_and_the_iterations_are_few(n, kappa):
    types = draw(n, seed=3)
    x0 = jnp.zeros(n)
    c = dpm.clearing_price(x0, dpm.team_signals(x0, types, kappa), types, kappa)
    p = float(c.price)
    assert abs(h(p, types, kappa)) <= 1e-10 * max(1.0, p)
    assert p == pytest.approx(kappa * float(team.optimal_aggregate(types, kappa)), abs=1e-12)
    assert not bool(c.sorted) and 1 <= int(c.iterations) <= dpm.newton_iteration_cap(n)
    # the inner iterations are the newton rule's rounds (+ the one that confirms), not more
    assert int(c.iterations) <= int(solve(types, kappa, "newton", tol=0.0).rounds) + 1


def test_from_the_optimum_one_iteration_confirms_and_the_broadcast_is_zero():
    types, kappa = draw(500, seed=5), 0.1
    x_star = team.optimal_usage(types, kappa)
    g = dpm.team_signals(x_star, types, kappa)
    c = dpm.clearing_price(x_star, g, types, kappa)
    assert int(c.iterations) == 1 and not bool(c.sorted)
    assert abs(float(dpm.clearing_price_move(x_star, g, types, kappa))) <= 1e-12


def test_capped_iteration_falls_back_to_the_sort_and_stays_exact():
    types, kappa = draw(3000, seed=6), 0.5
    x0 = jnp.zeros(3000)
    g0 = dpm.team_signals(x0, types, kappa)
    capped = dpm.clearing_price(x0, g0, types, kappa, max_iterations=2)
    assert bool(capped.sorted) and int(capped.iterations) == 2
    full = dpm.clearing_price(x0, g0, types, kappa)
    assert float(capped.price) == pytest.approx(float(full.price), abs=1e-12)


def test_any_start_lands_on_the_optimum_in_one_move():
    types, kappa = draw(400, seed=4), 0.02
    x_star = np.asarray(team.optimal_usage(types, kappa))
    for seed in range(4):
        x0 = jnp.asarray(np.random.default_rng(seed).uniform(0.0, 10.0, 400) * (seed % 2))  # zeros or large
        g0 = dpm.team_signals(x0, types, kappa)
        st = dpm.dpm_step(dpm.dpm_init(x0, types, kappa), types, kappa, dpm.default_steps(types, kappa, "clearing"),
                          "clearing")
        np.testing.assert_allclose(np.asarray(st.x), x_star, atol=1e-12)
        # the agent side is the newton rule's: a best response to p* = kappa X + pi
        move = float(dpm.clearing_price_move(x0, g0, types, kappa))
        p = kappa * float(np.sum(np.asarray(x0))) + move
        np.testing.assert_allclose(np.asarray(st.x), np.maximum(0.0, (np.asarray(types.a) - p) / np.asarray(types.b)),
                                   atol=1e-12)


def test_other_steps_converge_agent_by_agent_to_the_same_fixed_point():
    # the price kappa X + pi = p* is fixed: each agent contracts alone at |1 - eta_i b_i|
    types, kappa = draw(300, seed=7), 0.05
    steps = jnp.asarray(np.random.default_rng(7).uniform(0.3, 1.5, 300)) / types.b  # eta_i b_i in [0.3, 1.5]
    state = solve(types, kappa, "clearing", tol=1e-12, steps=steps)
    x_star = np.asarray(team.optimal_usage(types, kappa))
    np.testing.assert_allclose(np.asarray(state.x), x_star, atol=1e-11)
    # errors shrink like rho^k, rho = max |1 - eta_i b_i| = 0.7 (no factor N); the residual
    # is at most (b_max + kappa N) times the largest error
    rho = float(np.max(np.abs(1.0 - np.asarray(steps * types.b))))
    scale = (float(types.b.max()) + kappa * 300) * x_star.max()
    assert int(state.rounds) <= int(np.ceil(np.log(1e-12 / scale) / np.log(rho))) + 1


def test_misreported_values_converge_to_the_reported_optimum_in_one_round():
    types, kappa = draw(300, seed=8), 0.05
    reported = team.TeamTypes(types.a * jnp.where(jnp.arange(300) % 7 == 0, 1.3, 1.0), types.b)
    state = solve(reported, kappa, "clearing", tol=1e-12)
    assert int(state.rounds) == 1 and float(state.residual) <= 1e-12
    np.testing.assert_allclose(np.asarray(state.x), np.asarray(team.optimal_usage(reported, kappa)), atol=1e-12)
    np.testing.assert_array_less(1e-6, np.abs(np.asarray(state.x) - np.asarray(team.optimal_usage(types, kappa))).max())
