"""The new property checks on hand-derivable toy mechanisms, and on the task market."""

import jax.numpy as jnp
import numpy as np
import pytest

import mechanisms  # noqa: F401
from mechanisms import properties, vcg
from mechanisms.games import assignment

THETA = jnp.array([1.0, 2.0, 3.0])


def toy_utility(reports, true_types):
    """``u_i = -(r_i - theta_i)^2 + 2 (r_i - theta_i)(s_-i - s0_-i)``, ``s_-i`` the sum of the
    others' reports and ``s0`` its value at THETA: truthful is a best reply exactly when the
    others are truthful, and ``r_i = theta_i + (s_-i - s0_-i)`` gains ``(s_-i - s0_-i)^2``."""
    d = reports - true_types
    s = jnp.sum(reports) - reports
    s0 = jnp.sum(THETA) - THETA
    return -d * d + 2.0 * d * (s - s0)


def test_dsic_over_profiles_finds_what_truthful_opponents_hide():
    devs = THETA[:, None] + jnp.linspace(-2.0, 2.0, 41)[None, :]
    assert float(properties.dsic_violation(toy_utility, THETA, devs).amount) == pytest.approx(0.0, abs=1e-12)
    opponents = jnp.array([[1.0, 2.0, 3.0], [2.0, 2.0, 3.0]])  # second: agent 0 reports 1 too high
    v = properties.dsic_violation_over_profiles(toy_utility, THETA, devs, opponents)
    # in profile 1, agents 1 and 2 see s - s0 = 1: best deviation +1 gains exactly 1
    assert float(v.amount) == pytest.approx(1.0, abs=1e-12)
    assert int(v.where) in (1, 2) and int(v.witness[0]) == 1


def test_bic_is_the_interim_deviation_search():
    # interim utility of a quadratic-loss rule biased by 0.5: best report theta_i + 0.5, gain 0.25
    interim = lambda r, t: -(r - t - 0.5) ** 2  # noqa: E731
    devs = THETA[:, None] + jnp.linspace(-1.0, 1.0, 21)[None, :]
    v = properties.bic_violation(interim, THETA, devs)
    assert float(v.amount) == pytest.approx(0.25, abs=1e-12)
    assert float(v.witness) == pytest.approx(float(THETA[v.where]) + 0.5, abs=1e-12)


def test_ir_ex_post_over_profiles_and_interim():
    util = lambda r, t: t - 2.0  # noqa: E731  u_i = theta_i - 2
    v = properties.ir_violation_ex_post(util, jnp.array([[3.0, 4.0], [2.5, 0.5]]))
    assert float(v.amount) == pytest.approx(1.5) and int(v.where) == 1 and int(v.witness) == 1
    assert float(properties.ir_violation_interim(jnp.array([0.1, 0.0])).amount) == 0.0
    assert float(properties.ir_violation_interim(jnp.array([0.1, -0.3])).amount) == pytest.approx(0.3)


def test_budget_violation_weak_and_exact():
    t = jnp.array([[1.0, -1.0, 0.5], [1.0, -2.0, 0.0]])  # round sums 0.5 and -1.0
    weak = properties.budget_violation(t)
    assert float(weak.amount) == pytest.approx(1.0) and int(weak.where) == 1
    exact = properties.budget_violation(t[:1], exact=True)
    assert float(exact.amount) == pytest.approx(0.5)
    covered = properties.budget_violation(t[:1], operator_cost=0.5)
    assert float(covered.amount) == 0.0
    assert float(properties.budget_violation(t[:1], operator_cost=0.75).amount) == pytest.approx(0.25)


def test_efficiency_solver_vs_greedy_on_random_instances():
    rng = np.random.default_rng(11)
    chosen, greedy, best = [], [], []
    for _ in range(12):
        costs = rng.integers(0, 6, (3, 3)).astype(float)
        values = rng.integers(1, 7, 3).astype(float)
        w_bf, _ = assignment.brute_force_optimum(costs, values, np.ones(3, int))
        best.append(w_bf)
        chosen.append(float(vcg.unit_demand_payments(jnp.asarray(costs), jnp.asarray(values)).welfare))
        # greedy: tasks in order, cheapest free agent with positive profit
        free, w = set(range(3)), 0.0
        for j in range(3):
            options = [(costs[i, j], i) for i in free if costs[i, j] < values[j]]
            if options:
                c, i = min(options)
                free.remove(i)
                w += values[j] - c
        greedy.append(w)
    assert float(properties.efficiency_violation(jnp.array(chosen), jnp.array(best)).amount) <= 1e-9
    v = properties.efficiency_violation(jnp.array(greedy), jnp.array(best))
    assert float(v.amount) > 0 and float(v.amount) == pytest.approx(max(np.array(best) - np.array(greedy)))
