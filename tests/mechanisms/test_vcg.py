"""Procurement VCG: reference (n+1 solves) vs brute force, unit-demand fast path vs
reference, DSIC by misreport search, ex-post IR, and a misreporter losing utility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import mechanisms  # noqa: F401
from mechanisms import properties, vcg
from mechanisms.games import assignment

from tests.mechanisms.test_assignment import instances


def brute_force_received(costs, values, caps):
    """``p_i = c_i(A*) + W*(N) - W*(N\\{i})`` with every welfare by enumeration."""
    w, a = assignment.brute_force_optimum(costs, values, caps)
    received = np.zeros(len(caps))
    for i in range(len(caps)):
        c = costs.copy()
        c[i] = np.inf
        w_i, _ = assignment.brute_force_optimum(c, values, caps)
        own = costs[i, a == i].sum() if np.any(a == i) else 0.0
        received[i] = own + w - w_i
    return received


def cost_deviations(costs, factors=(0.5, 0.8, 0.95, 1.05, 1.3, 2.0), bumps=(-1.0, 1.0)):
    """Misreports per agent, leaves ``[N, K, M]``: whole row scaled by each factor, each
    single task scaled or shifted, and each single task refused (inf)."""
    c = np.asarray(costs)
    n, m = c.shape
    rows = []
    for i in range(n):
        devs = [c[i] * f for f in factors]
        for j in range(m):
            for f in factors:
                d = c[i].copy(); d[j] = d[j] * f; devs.append(d)
            for b in bumps:
                d = c[i].copy(); d[j] = max(0.0, d[j] + b); devs.append(d)
            d = c[i].copy(); d[j] = np.inf; devs.append(d)
            d = c[i].copy(); d[j] = 0.0; devs.append(d)
        rows.append(np.stack(devs))
    return jnp.asarray(np.stack(rows))


@settings(max_examples=20, deadline=None)
@given(instances(max_n=3, max_m=3))
def test_reference_matches_brute_force_with_capacities(inst):
    costs, values, caps = inst
    r = vcg.clarke_pivot_payments(jnp.asarray(costs), jnp.asarray(values), jnp.asarray(caps))
    np.testing.assert_allclose(r.received, brute_force_received(costs, values, caps), atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(instances(min_n=2, max_n=4, min_m=2, max_m=4, unit=True))
def test_fast_path_equals_reference_small(inst):
    costs, values, caps = inst
    ref = vcg.clarke_pivot_payments(jnp.asarray(costs), jnp.asarray(values), jnp.asarray(caps))
    fast = vcg.unit_demand_payments(jnp.asarray(costs), jnp.asarray(values))
    assert float(fast.welfare) == pytest.approx(float(ref.welfare), abs=1e-9)
    np.testing.assert_allclose(fast.leave_one_out_welfare, ref.leave_one_out_welfare, atol=1e-9)
    np.testing.assert_allclose(fast.received, ref.received, atol=1e-9)


@pytest.mark.parametrize("n,m,seed", [(30, 20, 0), (20, 30, 1), (25, 25, 2)])
def test_fast_path_equals_reference_random(n, m, seed):
    rng = np.random.default_rng(seed)
    costs = rng.uniform(0.0, 1.0, (n, m))
    if seed % 2:
        costs = np.round(costs * 4) / 4  # many ties
    costs[rng.random((n, m)) < 0.3] = np.inf
    values = rng.uniform(0.2, 1.2, m)
    values[0] = 0.0  # a task nobody can do profitably
    ref = vcg.clarke_pivot_payments(jnp.asarray(costs), jnp.asarray(values), jnp.ones(n, jnp.int64))
    fast = vcg.unit_demand_payments(jnp.asarray(costs), jnp.asarray(values))
    np.testing.assert_allclose(fast.received, ref.received, atol=1e-9)


@jax.jit
def _dsic_checks(c, v, k, devs, opponents):
    util = lambda r, t: vcg.utilities(r, t, v, k)  # noqa: E731
    return (properties.dsic_violation(util, c, devs).amount,
            properties.dsic_violation_over_profiles(util, c, devs, opponents).amount,
            properties.ir_violation_ex_post(util, jnp.concatenate([c[None], opponents])).amount)


@settings(max_examples=8, deadline=None)
@given(instances(min_n=3, max_n=3, min_m=3, max_m=3))
def test_truthful_is_dominant_and_ir(inst):
    costs, values, caps = inst
    costs = np.where(np.isfinite(costs), costs, 50.0)  # finite rows keep deviations meaningful
    rng = np.random.default_rng(int(costs.sum()) % 1000)
    opponents = jnp.asarray(rng.uniform(0.0, 7.0, (2,) + costs.shape))  # arbitrary opponent reports
    dsic, dsic_any, ir = _dsic_checks(jnp.asarray(costs), jnp.asarray(values), jnp.asarray(caps),
                                      cost_deviations(costs), opponents)
    assert float(dsic) <= 1e-9
    assert float(dsic_any) <= 1e-9
    assert float(ir) <= 1e-9


def test_unit_demand_dsic_on_random_instance_fast_path():
    rng = np.random.default_rng(7)
    costs = rng.uniform(0.0, 1.0, (5, 4))
    c, v = jnp.asarray(costs), jnp.asarray(rng.uniform(0.3, 1.0, 4))
    viol = properties.dsic_violation(lambda r, t: vcg.utilities(r, t, v), c, cost_deviations(costs))
    assert float(viol.amount) <= 1e-9
    assert float(properties.ir_violation(vcg.utilities(c, c, v)).amount) <= 1e-12


@pytest.mark.parametrize("misreport_factor", [1.3])
def test_misreporting_agent_earns_less_on_example(misreport_factor):
    inst = assignment.example_instance()
    truthful = vcg.utilities(inst.costs, inst.costs, inst.values)
    lying = inst.costs.at[0].multiply(misreport_factor)
    u_lie = vcg.utilities(lying, inst.costs, inst.values)
    # by hand: truthful u_0 = W* - W*(N\0) = 14 - 12.8; overstating by 30% loses task 0
    assert float(truthful[0]) == pytest.approx(1.2, abs=1e-12)
    assert float(u_lie[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(u_lie[0]) < float(truthful[0])


def test_sign_convention_for_the_ledger():
    inst = assignment.example_instance()
    r = vcg.vcg(inst.costs, inst.values)
    np.testing.assert_allclose(vcg.ledger_payments(r), -r.received)
    assert np.all(np.asarray(r.received) >= np.asarray(assignment.agent_costs(inst.costs, r.assignment)) - 1e-12)
