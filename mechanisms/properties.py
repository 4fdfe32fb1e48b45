"""Property checks of mechanisms: each returns the worst violation found and where.

A check never says "holds" from a proof: it searches (a grid of misreports, a set of
profiles) and reports the largest violation it saw, ``0`` when none. Usable from tests
and from ``mbi audit``.

- ``dsic_violation``: dominant-strategy incentive compatibility by deviation search.
- ``ir_violation``: (ex post) individual rationality, ``u_i >= 0``.
- ``budget_deficit``: weak budget balance, payments collected cover the operator's cost.
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
