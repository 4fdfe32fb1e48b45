"""Tabular principal-agent MDP with a stateful externality (Helou 2026, arXiv 2601.03451).

The agent picks action ``a`` in state ``s`` and earns a private reward ``r(s, a)`` (plus
Gaussian noise of std ``noise``); the state moves by ``P(s' | s, a)``; society (the
principal) bears an externality cost ``e(s)`` per round in state ``s`` that the agent never
sees. Social welfare per round is ``w(s, a) = r(s, a) - e(s)``; transfers from the principal
to the agent are welfare-neutral (a payment between two members of society) and are not
counted. The externality is *stateful*: the action's cost arrives later, through the state,
so even a perfectly rational myopic learner ignores it.

``pollution()`` (the instance used in tests and benchmarks): states ``0..n-1`` (a pollution
level), action 0 = clean (reward ``r_clean``), 1 = dirty (reward ``r_dirty > r_clean``);
dirty raises the level by one w.p. ``move``, clean lowers it by one w.p. ``move``;
``e(s) = c s``. With the defaults the first-best is "always clean" (average welfare 0.6),
while the unincentivised learner converges to "always dirty" (average welfare -1.0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class PrincipalMDP(NamedTuple):
    """``P[s, a, s']`` transitions, ``reward[s, a]`` agent's mean private reward,
    ``externality[s]`` society's cost per round, ``noise`` reward noise std."""

    P: Array
    reward: Array
    externality: Array
    noise: Array


def pollution(
    n_states: int = 5, r_clean: float = 0.6, r_dirty: float = 1.0, c: float = 0.5, move: float = 0.8, noise: float = 0.1
) -> PrincipalMDP:
    s = jnp.arange(n_states)
    up = jnp.minimum(s + 1, n_states - 1)
    down = jnp.maximum(s - 1, 0)
    eye = jnp.eye(n_states)
    clean = move * eye[down] + (1 - move) * eye
    dirty = move * eye[up] + (1 - move) * eye
    P = jnp.stack([clean, dirty], axis=1)
    reward = jnp.tile(jnp.array([r_clean, r_dirty]), (n_states, 1))
    return PrincipalMDP(P, reward, c * s.astype(jnp.float64), jnp.asarray(noise))


def welfare(mdp: PrincipalMDP, s: Array, a: Array) -> Array:
    """Social welfare of one round ``w(s, a) = r(s, a) - e(s)`` (mean reward; no transfers)."""
    return mdp.reward[s, a] - mdp.externality[s]


def transition(mdp: PrincipalMDP, s: Array, a: Array, key: Array) -> Array:
    """Sample ``s' ~ P(. | s, a)``."""
    return jax.random.categorical(key, jnp.log(mdp.P[s, a] + 1e-300))


def agent_reward(mdp: PrincipalMDP, s: Array, a: Array, key: Array) -> Array:
    """Realised private reward ``r(s, a) + noise * N(0, 1)``."""
    return mdp.reward[s, a] + mdp.noise * jax.random.normal(key)


def stationary_distribution(P: Array, policy: Array) -> Array:
    """Stationary distribution of the chain under a deterministic ``policy[s]`` (unichain)."""
    n = P.shape[0]
    Pp = P[jnp.arange(n), policy]
    A = jnp.concatenate([(Pp - jnp.eye(n)).T, jnp.ones((1, n))], axis=0)
    b = jnp.concatenate([jnp.zeros(n), jnp.ones(1)])
    return jnp.linalg.lstsq(A, b)[0]


def average_reward_optimum(P: Array, reward: Array, iters: int = 5000) -> tuple[Array, Array]:
    """Gain-optimal deterministic policy of ``max lim (1/T) sum reward(s_t, a_t)`` by relative
    value iteration ``h <- max_a [r + P h] - (that at state 0)`` (unichain, aperiodic).

    Returns ``(policy[s], gain)``."""

    def body(_, h):
        q = reward + P @ h
        v = jnp.max(q, axis=1)
        return v - v[0]

    h = jax.lax.fori_loop(0, iters, body, jnp.zeros(P.shape[0]))
    q = reward + P @ h
    policy = jnp.argmax(q, axis=1)
    gain = jnp.max(q, axis=1)[0] - h[0]
    return policy, gain


def first_best(mdp: PrincipalMDP) -> tuple[Array, Array]:
    """First-best oracle: the welfare-optimal policy and its average welfare per round, as if
    the principal chose actions knowing ``r`` and ``e``."""
    return average_reward_optimum(mdp.P, mdp.reward - mdp.externality[:, None])
