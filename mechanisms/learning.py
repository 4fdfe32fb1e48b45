"""Agent learning dynamics as pure functions (state in, state out).

- ``projected_gradient_play``: gradient play on a price signal, projected onto ``x >= 0``.
- ``free_coordinates``: the coordinates a projected step can move (not pinned at ``x = 0``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def projected_gradient_play(x: Array, gradient: Array, step: Array) -> Array:
    """One step of projected gradient play: ``x_i <- max(0, x_i + eta_i * g_i)``.

    Each agent ascends its own utility gradient ``g_i`` with its own step ``eta_i``. With
    the DPM signal as ``g`` and ``eta_i <= 1 / (b_i + kappa N)`` in the team game the joint
    map is a contraction onto the team optimum (the Jacobian of ``-g`` is
    ``diag(b) + kappa 11^T``, whose eigenvalues scaled by ``eta`` lie in ``(0, 2)``), but
    with factor ``1 - O(b / (kappa N))``: rounds grow like ``N``. ``mechanisms.dpm``'s
    ``newton`` rule calls this with ``g - pi`` and ``eta_i = 1 / b_i`` instead.
    """
    return jnp.maximum(0.0, x + step * gradient)


def free_coordinates(x: Array, gradient: Array) -> Array:
    """Mask of the coordinates not blocked by ``x >= 0``: ``x_i > 0`` or ``g_i >= 0``."""
    return ~((x <= 0.0) & (gradient < 0.0))


def projected_gradient_norm(x: Array, gradient: Array) -> Array:
    """Stationarity on ``x >= 0``: ``max_i |g_i|``, ignoring ``g_i < 0`` where ``x_i = 0``.

    Zero exactly at a KKT point of ``max U`` subject to ``x >= 0``.
    """
    return jnp.max(jnp.where(free_coordinates(x, gradient), jnp.abs(gradient), 0.0), initial=0.0)


# ---------------------------------------------------------------------------------------
# Logit-Q learners (DIML's learner model; An & Du 2026, arXiv 2601.17678, Sec. 3)
# ---------------------------------------------------------------------------------------
#
# Stateless repeated game, n agents with A actions each. Agent i keeps Q_i in R^A, Q_i = 0
# at the start of an episode. At step t it plays a_i ~ pi_i(Q_i), then observes the
# counterfactual payoff vector u_cf[i, a] = u_i(a, a_{-i}) (what it would have earned with
# every action a against the others' realised actions) and updates
#
#     Q_i <- (1 - alpha) Q_i + alpha u_cf[i],
#     pi_i = (1 - eps) softmax(beta Q_i) + eps / A.
#
# Scale convention. The policy only sees beta * Q, and adding c_i(a_{-i}) to every entry of
# u_cf[i] shifts Q_i by a constant that softmax ignores. Payoffs are therefore identified
# only as differences u_i(a, a_{-i}) - u_i(a', a_{-i}), and only jointly with beta:
# (beta, u) and (beta / s, s u) give the same likelihood. We fix beta (3.0 in the paper)
# and report differences relative to action 0 in the units that beta fixes.
#
# A mechanism enters only through ``counterfactual(joint) -> [n, A]``, a closure over its
# parameters, so the same code simulates the truth and evaluates a candidate's likelihood.

from typing import Callable, NamedTuple  # noqa: E402

Counterfactual = Callable[[Array], Array]  # joint action int[n] -> u_cf float[n, A]


class LogitQParams(NamedTuple):
    """Learner parameters: step ``alpha`` in (0, 1], inverse temperature ``beta``, uniform mix ``eps``."""

    alpha: Array | float = 0.25
    beta: Array | float = 3.0
    eps: Array | float = 0.06


def logit_q_init(n_agents: int, n_actions: int, dtype=jnp.float64) -> Array:
    """Initial Q values: zeros ``[n, A]`` (so the first policy is uniform)."""
    return jnp.zeros((n_agents, n_actions), dtype)


def logit_q_log_policy(q: Array, params: LogitQParams) -> Array:
    """``log pi`` with ``pi = (1 - eps) softmax(beta Q) + eps / A``, over the last axis.

    Computed as ``logaddexp(log(1 - eps) + log_softmax(beta Q), log(eps / A))`` (stable).
    """
    n_actions = q.shape[-1]
    eps = jnp.asarray(params.eps, q.dtype)
    ls = jax.nn.log_softmax(jnp.asarray(params.beta, q.dtype) * q, axis=-1)
    return jnp.logaddexp(jnp.log1p(-eps) + ls, jnp.log(eps / n_actions))


def logit_q_policy(q: Array, params: LogitQParams) -> Array:
    """``pi = (1 - eps) softmax(beta Q) + eps / A`` over the last axis."""
    return jnp.exp(logit_q_log_policy(q, params))


def logit_q_update(q: Array, u_cf: Array, params: LogitQParams) -> Array:
    """``Q <- (1 - alpha) Q + alpha u_cf`` (exponential average of counterfactual payoffs)."""
    alpha = jnp.asarray(params.alpha, q.dtype)
    return (1.0 - alpha) * q + alpha * u_cf


def logit_q_simulate(
    key: Array, counterfactual: Counterfactual, n_agents: int, n_actions: int, n_steps: int,
    params: LogitQParams = LogitQParams(), dtype=jnp.float64,
) -> Array:
    """One episode of logit-Q learners under a mechanism: actions ``int32[T, n]``.

    ``lax.scan`` over steps: sample ``a_t ~ pi(Q_t)`` (``Q_0 = 0``: the first action is
    uniform), then ``Q_{t+1} = (1 - alpha) Q_t + alpha counterfactual(a_t)``.
    """

    def step(q: Array, k: Array):
        a = jax.random.categorical(k, logit_q_log_policy(q, params), axis=-1).astype(jnp.int32)
        return logit_q_update(q, counterfactual(a).astype(dtype), params), a

    _, actions = jax.lax.scan(step, logit_q_init(n_agents, n_actions, dtype), jax.random.split(key, n_steps))
    return actions


def logit_q_simulate_episodes(
    key: Array, counterfactual: Counterfactual, n_episodes: int, n_agents: int, n_actions: int,
    n_steps: int, params: LogitQParams = LogitQParams(), dtype=jnp.float64,
) -> Array:
    """``n_episodes`` independent episodes (vmapped): actions ``int32[E, T, n]``."""
    keys = jax.random.split(key, n_episodes)
    return jax.vmap(
        lambda k: logit_q_simulate(k, counterfactual, n_agents, n_actions, n_steps, params, dtype)
    )(keys)


def logit_q_replay(
    counterfactual: Counterfactual, actions: Array, n_actions: int, params: LogitQParams,
    readout: Callable[[Array, Array], Array], dtype=jnp.float64, remat: bool = False,
) -> Array:
    """Teacher-forced learning trajectory of one episode, reduced step by step.

    Replays ``Q`` along the observed ``actions`` ``int[T, n]`` and returns
    ``sum_t readout(log pi_t [n, A], a_t [n])``. With ``readout`` the log-probability of
    ``a_t`` this is the episode's log-likelihood; differentiable in the mechanism (through
    ``counterfactual``) and in ``params`` by reverse mode through the whole ``lax.scan``.
    ``remat`` recomputes each step in the backward pass (memory O(n A) instead of O(T n A)).
    """
    n_agents = actions.shape[-1]

    def step(carry, a):
        q, acc = carry
        out = readout(logit_q_log_policy(q, params), a)
        return (logit_q_update(q, counterfactual(a).astype(dtype), params), acc + out), None

    if remat:
        step = jax.checkpoint(step)
    init = (logit_q_init(n_agents, n_actions, dtype), jnp.zeros((), dtype))
    (_, total), _ = jax.lax.scan(step, init, actions)
    return total


def chosen_log_prob(log_pi: Array, a: Array) -> Array:
    """``sum_i log pi_i(a_i)``: the readout for ``logit_q_replay`` that gives log-likelihood."""
    return jnp.sum(jnp.take_along_axis(log_pi, a[:, None].astype(jnp.int32), axis=-1))


def logit_q_log_likelihood(
    counterfactual: Counterfactual, actions: Array, n_actions: int, params: LogitQParams = LogitQParams(),
    dtype=jnp.float64, remat: bool = False,
) -> Array:
    """Log-likelihood of episodes ``int[E, T, n]`` under logit-Q learners, summed (vmapped over E)."""
    per_episode = jax.vmap(
        lambda acts: logit_q_replay(counterfactual, acts, n_actions, params, chosen_log_prob, dtype, remat)
    )(actions)
    return jnp.sum(per_episode)


def logit_q_filter(u_cf: Array, alpha: Array | float) -> Array:
    """All ``Q_t`` of a teacher-forced episode at once: ``Q_t = sum_{s<t} alpha (1-alpha)^(t-1-s) u_s``.

    The closed form of ``Q_{t+1} = (1 - alpha) Q_t + alpha u_t``, ``Q_0 = 0``, as one
    product with the lower-triangular decay matrix ``K[t, s]`` (no sequential loop; exact
    and differentiable in ``alpha``). ``u_cf [..., T, n, A]`` -> ``Q [..., T, n, A]``.
    Costs ``O(T^2)`` per entry: for small games; ``logit_q_replay`` for long or wide ones.
    """
    n_steps = u_cf.shape[-3]
    t = jnp.arange(n_steps)
    lag = t[:, None] - 1 - t[None, :]
    alpha = jnp.asarray(alpha, u_cf.dtype)
    decay = jnp.where(lag >= 0, alpha * jnp.power(1.0 - alpha, jnp.maximum(lag, 0).astype(u_cf.dtype)), 0.0)
    return jnp.einsum("ts,...sna->...tna", decay, u_cf)
