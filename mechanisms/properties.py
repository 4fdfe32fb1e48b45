"""Property checks of mechanisms: each returns the worst violation found and where.

A check never says "holds" from a proof: it searches (a grid of misreports, a set of
profiles) and reports the largest violation it saw, ``0`` when none. Usable from tests
and from ``mbi audit``.

- ``dsic_violation``: dominant-strategy incentive compatibility by deviation search.
- ``ir_violation``: (ex post) individual rationality, ``u_i >= 0``.
- ``budget_deficit``: weak budget balance, payments collected cover the operator's cost.
- ``dsic_violation_over_profiles``: DSIC against arbitrary opponent reports (a set of
  opponent profiles searched too, not only truthful opponents).
- ``bic_violation``: Bayesian IC, gain in expectation over the prior, others truthful.
- ``ir_violation_ex_post`` / ``ir_violation_interim``: IR over many profiles / in expectation.
- ``budget_violation``: weak (or exact) budget balance over rounds, as a ``Violation``.
- ``efficiency_violation``: welfare of the chosen outcome vs the best one.

Utilities may call host solvers through ``jax.pure_callback`` with
``vmap_method="sequential"`` (e.g. ``mechanisms.vcg``): the vmaps here then run them one
after another.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Types = Any  # a pytree whose leaves have the agent axis first

# utility(reports, true_types) -> per-agent realised utility (vector of length N)
UtilityFn = Callable[[Types, Types], Array]


class Violation(NamedTuple):
    """Worst violation found: ``amount`` (0 = none found), the agent (or row) ``where`` it
    happened, ``relative`` size, and the ``witness`` deviation that achieved it."""

    amount: Array
    where: Array
    relative: Array
    witness: Any


def _replace_row(types: Types, i: Array, row: Types) -> Types:
    return jax.tree.map(lambda t, r: t.at[i].set(r), types, row)


def deviation_gains(utility: UtilityFn, true_types: Types, deviations: Types) -> tuple[Array, Array]:
    """Utility gain of every agent from every deviation, others truthful.

    Args:
      utility: ``utility(reports, true_types)``, per-agent utility of the realised outcome.
      true_types: the truthful profile (pytree, agent axis first, ``N`` agents).
      deviations: pytree with leaves shaped ``[N, K, ...]``: ``K`` misreports per agent.

    Returns:
      ``(gains [N, K], truthful [N])`` where ``gains[i, k] = u_i(dev_ik, theta_-i) - u_i(theta)``.
    """
    truthful = utility(true_types, true_types)
    n = truthful.shape[0]

    def gain(i: Array, dev: Types) -> Array:
        return utility(_replace_row(true_types, i, dev), true_types)[i] - truthful[i]

    per_agent = jax.vmap(jax.vmap(gain, in_axes=(None, 0)), in_axes=(0, 0))
    return per_agent(jnp.arange(n), deviations), truthful


def dsic_violation(utility: UtilityFn, true_types: Types, deviations: Types) -> Violation:
    """Largest gain any agent gets from misreporting, others truthful (0 if none).

    ``relative`` is the gain over the largest truthful utility magnitude of any agent (the
    scale of the game, so that an inactive agent's float noise is not inflated): DSIC holds
    on the searched grid to tolerance ``tol`` when ``relative <= tol``.
    """
    gains, truthful = deviation_gains(utility, true_types, deviations)
    flat = jnp.argmax(gains)
    i, k = jnp.unravel_index(flat, gains.shape)
    worst = jnp.maximum(gains[i, k], 0.0)
    scale = jnp.maximum(jnp.max(jnp.abs(truthful)), 1e-12)
    witness = jax.tree.map(lambda d: d[i, k], deviations)
    return Violation(worst, i, worst / scale, witness)


def ir_violation(utilities: Array) -> Violation:
    """Individual rationality: worst shortfall ``max(0, -min_i u_i)`` and its agent."""
    i = jnp.argmin(utilities)
    worst = jnp.maximum(-utilities[i], 0.0)
    return Violation(worst, i, worst / jnp.maximum(jnp.max(jnp.abs(utilities)), 1e-12), utilities[i])


def budget_deficit(payments: Array, operator_cost: Array | float = 0.0) -> Array:
    """Weak budget balance shortfall: ``max(0, operator_cost - sum_i t_i)`` (0 = balanced or surplus)."""
    return jnp.maximum(jnp.asarray(operator_cost) - jnp.sum(payments), 0.0)


def multiplicative_grid(types: Types, factors: Array) -> Types:
    """Misreport grid for every agent: each leaf scaled by every combination of ``factors``.

    For a pytree of ``L`` leaves of shape ``[N]`` returns leaves ``[N, F**L]``.
    """
    leaves, tree = jax.tree.flatten(types)
    mesh = jnp.meshgrid(*([factors] * len(leaves)), indexing="ij")
    scales = [m.reshape(-1) for m in mesh]
    return jax.tree.unflatten(tree, [leaf[:, None] * s[None, :] for leaf, s in zip(leaves, scales)])


def dsic_violation_over_profiles(
    utility: UtilityFn, true_types: Types, deviations: Types, opponents: Types
) -> Violation:
    """DSIC against arbitrary opponent reports: largest gain of any agent from misreporting,
    over every opponent profile in ``opponents`` (leaves ``[P, N, ...]``; agent ``i``'s own
    row of a profile is replaced by its true type), deviations as in ``deviation_gains``.

    For agent ``i`` in profile ``p``: ``u_i(dev_ik, o^p_-i) - u_i(theta_i, o^p_-i)``, with
    ``i``'s utility valued at its true type. ``where`` is the agent; ``witness`` is
    ``(profile index, deviation index, deviation)``. ``relative`` is over the largest
    truthful utility magnitude seen.
    """
    n = jax.tree.leaves(true_types)[0].shape[0]

    def in_profile(profile: Types) -> tuple[Array, Array]:
        def one_agent(i: Array, devs: Types) -> tuple[Array, Array]:
            own = jax.tree.map(lambda t: t[i], true_types)
            honest = _replace_row(profile, i, own)
            truth_types = honest  # i's entry is its true type; others' true types are irrelevant to u_i
            u0 = utility(honest, truth_types)[i]
            gain = jax.vmap(lambda d: utility(_replace_row(profile, i, d), truth_types)[i] - u0)(devs)
            return gain, u0

        return jax.vmap(one_agent)(jnp.arange(n), deviations)

    gains, truthful = jax.lax.map(in_profile, opponents)  # [P, N, K], [P, N]
    flat = jnp.argmax(gains)
    p, i, k = jnp.unravel_index(flat, gains.shape)
    worst = jnp.maximum(gains[p, i, k], 0.0)
    scale = jnp.maximum(jnp.max(jnp.abs(truthful)), 1e-12)
    witness = (p, k, jax.tree.map(lambda d: d[i, k], deviations))
    return Violation(worst, i, worst / scale, witness)


def bic_violation(interim_utility: UtilityFn, true_types: Types, deviations: Types) -> Violation:
    """Bayesian incentive compatibility by deviation search: largest *interim* gain.

    ``interim_utility(reports, true_types)[i]`` must be agent ``i``'s expected utility when
    it reports ``reports[i]`` with type ``true_types[i]`` and the others report truthfully,
    their types drawn from the prior (it may omit terms independent of ``reports[i]``). The
    search is ``dsic_violation``'s, applied to that expectation.
    """
    return dsic_violation(interim_utility, true_types, deviations)


def ir_violation_ex_post(utility: UtilityFn, profiles: Types) -> Violation:
    """Ex-post IR over many truthful profiles (leaves ``[P, N, ...]``): worst ``-u_i``.

    ``witness`` is the profile index.
    """
    u = jax.lax.map(lambda prof: utility(prof, prof), profiles)  # [P, N]
    p, i = jnp.unravel_index(jnp.argmin(u), u.shape)
    worst = jnp.maximum(-u[p, i], 0.0)
    return Violation(worst, i, worst / jnp.maximum(jnp.max(jnp.abs(u)), 1e-12), p)


def ir_violation_interim(interim_utilities: Array) -> Violation:
    """Interim IR: ``E_{theta_-i}[u_i] >= 0`` for every agent (full interim utilities, not
    the report-dependent part only)."""
    return ir_violation(interim_utilities)


def budget_violation(payments: Array, operator_cost: Array | float = 0.0, exact: bool = False) -> Violation:
    """Budget balance over rounds: ``payments`` ``[R, N]`` (or ``[N]``), what agents pay.

    Weak (``exact=False``): worst deficit ``max(0, cost_r - sum_i t_ri)``. Exact: worst
    ``|sum_i t_ri - cost_r|``. ``where`` is the round, ``relative`` over the largest
    ``|t|`` (scale of the transfers), ``witness`` the round's net collection.
    """
    t = jnp.atleast_2d(payments)
    net = jnp.sum(t, axis=-1) - jnp.broadcast_to(jnp.asarray(operator_cost), t.shape[:1])
    gap = jnp.abs(net) if exact else jnp.maximum(-net, 0.0)
    r = jnp.argmax(gap)
    scale = jnp.maximum(jnp.max(jnp.abs(t)), 1e-12)
    return Violation(gap[r], r, gap[r] / scale, net[r])


def efficiency_violation(chosen_welfare: Array, best_welfare: Array) -> Violation:
    """Efficiency: worst welfare loss ``best - chosen`` over profiles (arrays ``[P]``), e.g.
    the mechanism's outcome against a brute-force optimum. ``where`` is the profile."""
    chosen, best = jnp.atleast_1d(chosen_welfare), jnp.atleast_1d(best_welfare)
    loss = jnp.maximum(best - chosen, 0.0)
    p = jnp.argmax(loss)
    return Violation(loss[p], p, loss[p] / jnp.maximum(jnp.max(jnp.abs(best)), 1e-12), chosen[p])
