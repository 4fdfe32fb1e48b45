"""Model-free RL baseline for the team game (``mechanisms.games.team``): the comparison
behind MBI's claim (Grassi 2025, arXiv 2512.20688) that DPM coordination is ~50x faster
than model-free reinforcement learning.

Independent learners, each rewarded with the *team* reward only (no gradient signal, no
model): agent ``i`` has a Gaussian policy ``x_i = max(0, mu_i + sigma eps_i)``,
``eps_i ~ N(0, 1)``, and a running baseline ``b_i`` (an exponential average of the team
reward it has seen). Each round every agent plays one sample, the team reward
``R = W(x)`` is broadcast, and every agent takes a REINFORCE (score-function) step

    g_i = (R - b_i) eps_i / sigma,    mu_i <- max(0, mu_i + optimiser(g_i)),
    b_i <- b_i + beta (R - b_i),

an unbiased estimate of ``d/dmu_i E[W(mu + sigma eps)]`` (Williams 1992); for the quadratic
team welfare the smoothed objective has the same maximiser as ``W`` away from the
``x >= 0`` clip. The optimiser is any optax transformation (Adam by default in the
benchmark); ``sigma`` and the step are tuned on a small grid. The variance of ``g_i`` grows
with ``N`` (every other agent's noise enters ``R``), which is the credit-assignment cost
DPM's per-agent gradient signal removes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mechanisms.games import team

Array = jax.Array


class ReinforceState(NamedTuple):
    """Policy means ``mu``, per-agent baselines, optimiser state, PRNG key, rounds, and the
    welfare of the mean policy ``W(max(0, mu))`` (what the benchmark tracks)."""

    mu: Array
    baseline: Array
    opt_state: optax.OptState
    key: Array
    rounds: Array
    mean_welfare: Array


def reinforce_init(
    mu0: Array, optimizer: optax.GradientTransformation, key: Array, types: team.TeamTypes, kappa: float
) -> ReinforceState:
    mu0 = jnp.asarray(mu0)
    return ReinforceState(
        mu0, jnp.zeros_like(mu0), optimizer.init(mu0), key, jnp.asarray(0), team.welfare(jnp.maximum(mu0, 0.0), types, kappa)
    )


def reinforce_gradient(
    mu: Array, baseline: Array, types: team.TeamTypes, kappa: float, sigma: float, key: Array
) -> tuple[Array, Array]:
    """Score-function estimate ``g_i = (R - b_i) eps_i / sigma`` of ``d E[W] / d mu_i`` from one
    joint sample ``x = max(0, mu + sigma eps)``; returns ``(g, R)``."""
    eps = jax.random.normal(key, mu.shape)
    reward = team.welfare(jnp.maximum(0.0, mu + sigma * eps), types, kappa)  # one scalar for the team
    return (reward - baseline) * eps / sigma, reward


def reinforce_round(
    state: ReinforceState,
    types: team.TeamTypes,
    kappa: float,
    optimizer: optax.GradientTransformation,
    sigma: float,
    baseline_rate: float = 0.05,
) -> tuple[Array, Array, ReinforceState]:
    """One round of independent REINFORCE on the team reward (all agents at once, O(N)):
    the joint sample ``x = max(0, mu + sigma eps)`` played, the team reward ``R = W(x)``
    and the learners' next state."""
    key, sub = jax.random.split(state.key)
    x = jnp.maximum(0.0, state.mu + sigma * jax.random.normal(sub, state.mu.shape))  # the sample the gradient uses
    ascent, reward = reinforce_gradient(state.mu, state.baseline, types, kappa, sigma, sub)
    updates, opt_state = optimizer.update(-ascent, state.opt_state, state.mu)  # optax minimises
    mu = jnp.maximum(0.0, optax.apply_updates(state.mu, updates))
    baseline = state.baseline + baseline_rate * (reward - state.baseline)
    return x, reward, ReinforceState(mu, baseline, opt_state, key, state.rounds + 1, team.welfare(mu, types, kappa))


def reinforce_step(
    state: ReinforceState,
    types: team.TeamTypes,
    kappa: float,
    optimizer: optax.GradientTransformation,
    sigma: float,
    baseline_rate: float = 0.05,
) -> ReinforceState:
    """One round of independent REINFORCE: the next state of ``reinforce_round``."""
    return reinforce_round(state, types, kappa, optimizer, sigma, baseline_rate)[2]


def reinforce_until(
    state: ReinforceState,
    types: team.TeamTypes,
    kappa: float,
    optimizer: optax.GradientTransformation,
    sigma: float,
    target: Array,
    max_rounds: int,
    baseline_rate: float = 0.05,
) -> ReinforceState:
    """Run ``reinforce_step`` until ``W(mu) >= target`` or ``max_rounds`` (``lax.while_loop``)."""

    def cond(s):
        return (s.mean_welfare < target) & (s.rounds < max_rounds)

    return jax.lax.while_loop(cond, lambda s: reinforce_step(s, types, kappa, optimizer, sigma, baseline_rate), state)
