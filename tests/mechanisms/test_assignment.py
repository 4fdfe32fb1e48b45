"""Task assignment game: scipy solver against brute-force enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mechanisms  # noqa: F401  (x64)
from mechanisms.games import assignment


@st.composite
def instances(draw, max_n=4, max_m=4, unit=False, min_n=1, min_m=1):
    """Small instances with integer costs (ties), infeasible pairs (inf), tasks that nobody
    can do profitably, capacities 0-2 (or all 1), and n != m."""
    n, m = draw(st.integers(min_n, max_n)), draw(st.integers(min_m, max_m))
    cost = st.one_of(st.integers(0, 6).map(float), st.just(np.inf), st.floats(0.0, 6.0))
    costs = np.array(draw(st.lists(cost, min_size=n * m, max_size=n * m)), dtype=float).reshape(n, m)
    values = np.array(draw(st.lists(st.integers(0, 7).map(float), min_size=m, max_size=m)))
    caps = np.ones(n, int) if unit else np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    return costs, values, caps


@settings(max_examples=40, deadline=None)
@given(instances())
def test_solver_matches_brute_force(inst):
    costs, values, caps = inst
    w_bf, _ = assignment.brute_force_optimum(costs, values, caps)
    a = np.asarray(assignment.optimal_assignment(jnp.asarray(costs), jnp.asarray(values), jnp.asarray(caps)))
    # feasible: capacities respected, every done task strictly profitable
    assert np.all(np.bincount(a[a >= 0], minlength=len(caps)) <= caps)
    done = a >= 0
    assert np.all(costs[a[done], np.flatnonzero(done)] < values[done])
    w = float(assignment.welfare(jnp.asarray(costs), jnp.asarray(values), jnp.asarray(a)))
    assert w == pytest.approx(w_bf, abs=1e-9)


def test_example_instance_by_hand():
    inst = assignment.example_instance()
    a = np.asarray(assignment.optimal_assignment(*inst))
    np.testing.assert_array_equal(a, [0, 1, 2])
    assert float(assignment.optimal_welfare(*inst)) == pytest.approx(14.0, abs=1e-12)
    np.testing.assert_allclose(assignment.agent_costs(inst.costs, jnp.asarray(a)), [5.0, 3.0, 2.0, 0.0])


def test_nothing_profitable_and_zero_capacity():
    costs = jnp.array([[3.0, jnp.inf], [2.0, 5.0]])
    values = jnp.array([2.0, 1.0])  # cost == value is not "below": not done
    np.testing.assert_array_equal(assignment.optimal_assignment(costs, values, jnp.array([1, 1])), [-1, -1])
    costs = jnp.array([[0.0, 0.0]])
    np.testing.assert_array_equal(assignment.optimal_assignment(costs, jnp.ones(2), jnp.array([0])), [-1, -1])
    np.testing.assert_array_equal(assignment.optimal_assignment(costs, jnp.ones(2), jnp.array([5])), [0, 0])


def test_jit_and_vmap_through_the_callback():
    inst = assignment.example_instance()
    batch = jnp.stack([inst.costs, inst.costs * 2.0, inst.costs + 100.0])
    w = jax.jit(jax.vmap(assignment.optimal_welfare, in_axes=(0, None, None)))(batch, inst.values, inst.capacities)
    for k in range(3):
        expected, _ = assignment.brute_force_optimum(np.asarray(batch[k]), np.asarray(inst.values), np.ones(4, int))
        assert float(w[k]) == pytest.approx(expected, abs=1e-9)
