"""Expected-externality (AGV, d'Aspremont--Gerard-Varet) payments: BIC and budget balanced.

Classical AGV (stated in mechanism-notes.md; sign: what ``i`` pays):

    t_i(r) = -EE_i(r_i) + (1/(N-1)) sum_{j != i} EE_j(r_j),
    EE_i(r_i) = E_{theta_-i ~ prior}[ W_{-i}(x*(r_i, theta_-i)) ],

``W_{-i}`` the welfare of everybody but ``i`` at the outcome (the others' values, plus
the public part of welfare: the task values ``V_j`` in the task market, minus the
operator's congestion cost in the team game -- a choice made here so that ``i``'s interim
utility is the expected *team* welfare). ``sum_i t_i = 0`` exactly for every report
profile, and under independent priors with the others truthful, ``i``'s interim utility
is ``E[W(x*(r_i, theta_-i); theta_i)]`` plus a term it cannot affect, maximised by
``r_i = theta_i`` (BIC). Not IR in general.

Expectations are Monte Carlo over ``num_samples`` profiles drawn with a PRNG ``key``. The
same samples (common random numbers) serve every agent and every report, so the BIC
inequality holds sample by sample: each sampled ``x*`` maximises the sampled welfare.

Task market (``mechanisms.games.assignment``): types are cost rows; capacities and task
values are public. Prior: independent ``c_ij ~ Uniform[lo_ij, hi_ij]`` (``lo_ij = +inf``:
agent ``i`` can never do task ``j``). The assignment solves are scipy (not jittable);
sampling is JAX, the ``N * S`` solves run in a host loop (one ``pure_callback``).

Team game (``mechanisms.games.team``), the Bayesian extension of the DPM. The MBI paper
states only that "a Bayesian extension ensures incentive compatibility under asymmetric
information (BIC)". Derived here: keep the DPM outcome (its fixed point, the closed-form
optimum ``x*``) and replace the Clarke pivot by the AGV transfer above, with
``W_{-i} = sum_{j != i} v_j(x_j) - C(X)`` (``team.others_welfare``). Everything is JAX
(closed-form optima vmapped over samples and agents), jit-able with static sample count.
Prior: independent ``a_i ~ Uniform[a_lo_i, a_hi_i]``, ``b_i ~ Uniform[b_lo_i, b_hi_i]``.
Budget: the agents' transfers sum to 0; the operator's congestion cost is part of the
welfare everyone's transfer internalises, not covered by the transfers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from mechanisms.games import assignment, team

Array = jax.Array


def agv_transfers(expected_externalities: Array) -> Array:
    """``t_i = -EE_i + (1/(N-1)) sum_{j != i} EE_j`` (what ``i`` pays); ``sum_i t_i = 0``.

    Computed as ``(sum_j EE_j - N EE_i) / (N - 1)`` so that the sum cancels exactly up to
    float rounding; ``N = 1`` gives 0.
    """
    ee = expected_externalities
    n = ee.shape[0]
    if n < 2:
        return jnp.zeros_like(ee)
    t = (jnp.sum(ee) - n * ee) / (n - 1)
    return t - jnp.mean(t)  # removes the last float residue of the sum


# ---------------------------------------------------------------- task market


class UniformCostPrior(NamedTuple):
    """Independent ``c_ij ~ Uniform[lo_ij, hi_ij]``, arrays ``[N, M]``; ``lo_ij = +inf``
    (then ``hi_ij`` ignored) means agent ``i`` cannot do task ``j``."""

    lo: Array
    hi: Array


def sample_costs(key: Array, prior: UniformCostPrior, num_samples: int) -> Array:
    """``num_samples`` cost profiles ``[S, N, M]`` from the prior."""
    u = jax.random.uniform(key, (num_samples,) + prior.lo.shape, jnp.float64)
    finite = jnp.isfinite(prior.lo)
    lo = jnp.where(finite, prior.lo, 0.0)
    hi = jnp.where(finite, prior.hi, 0.0)
    return jnp.where(finite, lo + (hi - lo) * u, jnp.inf)


def _externalities_host(reports, samples, values, capacities, true_costs) -> np.ndarray:
    """Host loop of ``N * S`` scipy solves: profile ``s`` with row ``i`` replaced by the
    report. Returns ``[2, N]``: row 0 ``EE_i(r_i)`` (``W_{-i}`` = profit of the matching plus
    ``r_i`` of ``i``'s tasks), row 1 ``mean_s c_i(x*; true_costs_i)``."""
    reports = np.asarray(reports, np.float64)
    true_costs = np.asarray(true_costs, np.float64)
    samples = np.asarray(samples, np.float64)
    values = np.asarray(values, np.float64)
    s_count, n, m = samples.shape
    caps = np.minimum(np.asarray(capacities, np.int64), m).clip(0)
    slots = np.repeat(np.arange(n), caps)
    total = np.zeros((2, n))
    if slots.size == 0 or m == 0 or s_count == 0:
        return total
    report_p = assignment._profits_np(reports, values)
    rows_of = [np.flatnonzero(slots == i) for i in range(n)]
    for s in range(s_count):
        p = assignment._profits_np(samples[s], values)[slots]
        for i in range(n):
            rows = rows_of[i]
            if rows.size:
                saved = p[rows].copy()
                p[rows] = report_p[i]
            r, c = linear_sum_assignment(p, maximize=True)
            gain = p[r, c]
            done = gain > 0
            own = c[done & (slots[r] == i)]
            total[0, i] += np.sum(gain[done]) + np.sum(reports[i, own])
            total[1, i] += np.sum(true_costs[i, own])
            if rows.size:
                p[rows] = saved
    return total / s_count


def _externalities(reports, values, capacities, samples, true_costs) -> Array:
    out = jax.ShapeDtypeStruct((2, reports.shape[0]), jnp.float64)
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    return jax.pure_callback(_externalities_host, out, f64(reports), f64(samples), f64(values),
                             jnp.asarray(capacities), f64(true_costs), vmap_method="sequential")


def expected_externalities(reports: Array, values: Array, capacities: Array, samples: Array) -> Array:
    """``EE_i(r_i) = mean_s [ sum_{j done} V_j - sum_{k != i} c^s_k(x*) ]`` with
    ``x* = x*(r_i, theta^s_-i)``, over sampled cost profiles ``samples [S, N, M]``."""
    return _externalities(reports, values, capacities, samples, reports)[0]


def agv_payments(
    reports: Array, values: Array, capacities: Array, prior: UniformCostPrior, key: Array, num_samples: int
) -> Array:
    """AGV payments of the task market (what each agent pays; ``sum = 0``)."""
    samples = sample_costs(key, prior, num_samples)
    return agv_transfers(expected_externalities(reports, values, capacities, samples))


def agv_utilities(
    reports: Array, true_costs: Array, values: Array, capacities: Array, prior: UniformCostPrior, key: Array,
    num_samples: int,
) -> Array:
    """Ex-post ``u_i = -c_i(x*(r); true) - t_i(r)``."""
    x = assignment.optimal_assignment(reports, values, capacities)
    t = agv_payments(reports, values, capacities, prior, key, num_samples)
    return -assignment.agent_costs(true_costs, x) - t


def agv_interim_objective(
    reports: Array, true_costs: Array, values: Array, capacities: Array, samples: Array
) -> Array:
    """Agent ``i``'s interim utility from report ``r_i`` (others truthful, drawn from the
    samples) *up to a term independent of* ``r_i``:
    ``mean_s [-c_i(x*(r_i, theta^s_-i); theta_i)] + EE_i(r_i)``.

    Row ``i`` of ``reports`` / ``true_costs`` is agent ``i``'s report / type; other rows are
    not used for agent ``i``. Differences across reports are exact interim gains, so this
    feeds ``properties.bic_violation``.
    """
    both = _externalities(reports, values, capacities, samples, true_costs)
    return both[0] - both[1]


# ---------------------------------------------------------------- team game (Bayesian DPM)


class TeamPrior(NamedTuple):
    """Independent ``a_i ~ U[a_lo_i, a_hi_i]``, ``b_i ~ U[b_lo_i, b_hi_i]`` (arrays ``[N]``)."""

    a_lo: Array
    a_hi: Array
    b_lo: Array
    b_hi: Array


def sample_team_types(key: Array, prior: TeamPrior, num_samples: int) -> team.TeamTypes:
    """``num_samples`` type profiles: ``TeamTypes`` with leaves ``[S, N]``."""
    ka, kb = jax.random.split(key)
    shape = (num_samples,) + prior.a_lo.shape
    ua = jax.random.uniform(ka, shape, jnp.float64)
    ub = jax.random.uniform(kb, shape, jnp.float64)
    return team.TeamTypes(prior.a_lo + (prior.a_hi - prior.a_lo) * ua, prior.b_lo + (prior.b_hi - prior.b_lo) * ub)


def _swap_in(sample: team.TeamTypes, i: Array, reports: team.TeamTypes) -> team.TeamTypes:
    return team.TeamTypes(sample.a.at[i].set(reports.a[i]), sample.b.at[i].set(reports.b[i]))


def _per_agent_per_sample(fn, reports: team.TeamTypes, samples: team.TeamTypes) -> Array:
    """``fn(i, profile)`` with profile = sample ``s`` with row ``i`` replaced by the report;
    returns ``[S, N]``."""
    n = reports.a.shape[0]

    def one(sample_a, sample_b, i):
        return fn(i, _swap_in(team.TeamTypes(sample_a, sample_b), i, reports))

    over_agents = jax.vmap(one, in_axes=(None, None, 0))
    return jax.vmap(over_agents, in_axes=(0, 0, None))(samples.a, samples.b, jnp.arange(n))


@jax.jit
def team_expected_externalities(reports: team.TeamTypes, kappa: float, samples: team.TeamTypes) -> Array:
    """``EE_i(r_i) = mean_s W_{-i}(x*(r_i, theta^s_-i))`` with ``W_{-i}`` the others' values
    minus the congestion cost (``team.others_welfare``), all ``i``; ``samples`` ``[S, N]``."""

    def w_minus(i, profile):
        x = team.optimal_usage(profile, kappa)
        return team.others_welfare(x, profile, kappa)[i]

    return jnp.mean(_per_agent_per_sample(w_minus, reports, samples), axis=0)


@jax.jit
def team_agv_payments(reports: team.TeamTypes, kappa: float, samples: team.TeamTypes) -> Array:
    """Bayesian-DPM payments (what ``i`` pays): AGV on the DPM outcome, ``sum = 0``."""
    return agv_transfers(team_expected_externalities(reports, kappa, samples))


@jax.jit
def team_agv_utilities(
    reports: team.TeamTypes, true_types: team.TeamTypes, kappa: float, samples: team.TeamTypes
) -> Array:
    """Ex-post ``u_i = v_i(x*_i(r); theta_i) - t_i(r)`` of the Bayesian DPM."""
    x = team.optimal_usage(reports, kappa)
    return team.values(x, true_types) - team_agv_payments(reports, kappa, samples)


@jax.jit
def team_interim_objective(
    reports: team.TeamTypes, true_types: team.TeamTypes, kappa: float, samples: team.TeamTypes
) -> Array:
    """Agent ``i``'s interim utility from report ``r_i`` (others truthful, from the samples)
    up to a term independent of ``r_i``: ``mean_s v_i(x*_i(r_i, theta^s_-i); theta_i) +
    EE_i(r_i)`` = ``mean_s W(x*(r_i, theta^s_-i); theta_i, theta^s_-i)``."""

    def own_value(i, profile):
        x = team.optimal_usage(profile, kappa)
        return team.values(x[i], team.TeamTypes(true_types.a[i], true_types.b[i]))

    own = jnp.mean(_per_agent_per_sample(own_value, reports, samples), axis=0)
    return own + team_expected_externalities(reports, kappa, samples)
