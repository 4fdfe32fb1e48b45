"""Two-phase principal incentive mechanism -- Helou 2026, "Microeconomic Foundations of
Multi-Agent Learning" (arXiv 2601.03451), on ``mechanisms.games.principal_mdp``.

Stated by the paper: phase 1 estimates the minimal transfers that implement target actions
(how incentives shift the agent's effective preferences); phase 2 uses them to steer the
long-run dynamics to the welfare-optimal policy; under sublinear agent regret and enough
exploration the social-welfare regret is sublinear; coarse incentives correct inefficient
learning under stateful externalities. The concrete schedule below is this project's
choice (the listing gives no pseudo-code):

* Transfers are *posted*: each round the principal posts a menu ``tau[s, a] >= 0`` it pays
  the agent if the agent takes ``a`` in ``s`` (sign: principal -> agent, a subsidy; the agent's
  effective reward is ``r(s, a) + tau[s, a]``). They are *coarse*: one level per action,
  paid on the target action only. Transfers are welfare-neutral and are excluded from
  social welfare; ``transfer_paid`` exposes each round's payment for a ledger.
* Phase 1 (length ``(1 + A K) L``): epoch 0 posts nothing and records the agent's default
  action; then for each action ``a``, ``K`` bisection epochs of ``L`` rounds post
  ``mid = (lo_a + hi_a)/2`` on ``a`` in every state; if the agent takes ``a`` in at least half
  of the epoch's second half, ``hi_a <- mid`` else ``lo_a <- mid``. This estimates the minimal
  implementing transfer ``tau*_a = max_b r(b) - r(a)`` to within ``tau_max 2^-K``.
* Phase 2: the principal plugs the estimated preference differences ``-tau_hat_a`` into
  its own model of dynamics and externality (``P``, ``e``), solves the average-reward MDP for
  the target policy ``pi^dagger``, and posts ``hi_a + margin`` on ``a = pi^dagger(s)``.

Regret: ``R(T) = sum_t (g* - w(s_t, a_t))`` against the first-best gain ``g*``. With
``L ~ sqrt(T)``, ``K`` fixed and agent exploration ``eps_t ~ t^{-1/3}`` (derived here):
``R(T) = O(A K sqrt(T) + T^{2/3})`` when the first-best is implementable by coarse
transfers (true for state-independent private rewards); without incentives it is linear.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mechanisms.games import principal_mdp as pm

Array = jax.Array


class TwoPhaseConfig(NamedTuple):
    """Schedule: ``epoch_len`` L, ``bisect_steps`` K, bracket ``[0, tau_max]``, ``margin``."""

    epoch_len: int
    bisect_steps: int
    tau_max: float
    margin: float


def default_config(horizon: int, bisect_steps: int = 6, tau_max: float = 2.0) -> TwoPhaseConfig:
    """``L = ceil(sqrt(T))``, ``margin`` = final bracket width + 0.02."""
    return TwoPhaseConfig(max(8, math.ceil(math.sqrt(horizon))), bisect_steps, tau_max, tau_max * 2.0**-bisect_steps + 0.02)


class PrincipalModel(NamedTuple):
    """What the principal knows: dynamics ``P`` and externality ``e`` -- not the agent's reward."""

    P: Array
    externality: Array


class PrincipalState(NamedTuple):
    """Round ``t``; bisection brackets ``lo, hi`` per action; ``hits`` of the probed action in
    the current epoch's second half; agent's ``default`` action; ``target[s]`` policy;
    ``steering`` (phase 2 started)."""

    t: Array
    lo: Array
    hi: Array
    hits: Array
    default_hits: Array
    default: Array
    target: Array
    steering: Array


def principal_init(n_states: int, n_actions: int, cfg: TwoPhaseConfig) -> PrincipalState:
    return PrincipalState(
        jnp.asarray(0), jnp.zeros(n_actions), jnp.full((n_actions,), cfg.tau_max), jnp.asarray(0),
        jnp.zeros(n_actions, jnp.int32), jnp.asarray(0), jnp.zeros(n_states, jnp.int32), jnp.asarray(False),
    )


def phase_one_length(n_actions: int, cfg: TwoPhaseConfig) -> int:
    return (1 + n_actions * cfg.bisect_steps) * cfg.epoch_len


def _probe(state: PrincipalState, cfg: TwoPhaseConfig) -> tuple[Array, Array]:
    """(epoch, probed action) in phase 1; epoch 0 probes nothing (action -1)."""
    epoch = state.t // cfg.epoch_len
    return epoch, jnp.where(epoch == 0, -1, (epoch - 1) // cfg.bisect_steps)


def principal_transfers(state: PrincipalState, cfg: TwoPhaseConfig) -> Array:
    """The menu ``tau[s, a]`` posted this round (paid by the principal if ``a`` is taken in ``s``)."""
    n_states, n_actions = state.target.shape[0], state.lo.shape[0]
    _, probe = _probe(state, cfg)
    mid = 0.5 * (state.lo + state.hi)
    probe_menu = jnp.where(jnp.arange(n_actions) == probe, mid, 0.0)
    probe_menu = jnp.tile(probe_menu, (n_states, 1))
    steer_level = jnp.where(state.target == state.default, 0.0, state.hi[state.target] + cfg.margin)
    steer_menu = jax.nn.one_hot(state.target, n_actions) * steer_level[:, None]
    return jnp.where(state.steering, steer_menu, probe_menu)


def estimated_transfers(state: PrincipalState) -> Array:
    """Phase-1 estimate of the minimal implementing transfer per action (bracket midpoint;
    zero for the agent's default action)."""
    est = 0.5 * (state.lo + state.hi)
    return est.at[state.default].set(0.0)


def target_policy(state: PrincipalState, model: PrincipalModel) -> Array:
    """Welfare-optimal policy under the principal's estimate ``r(s,a) - r(s,default) ~ -tau_hat_a``."""
    r_hat = -jnp.tile(estimated_transfers(state), (model.P.shape[0], 1)) - model.externality[:, None]
    return pm.average_reward_optimum(model.P, r_hat)[0].astype(jnp.int32)


def principal_update(
    state: PrincipalState, s: Array, a: Array, model: PrincipalModel, cfg: TwoPhaseConfig
) -> PrincipalState:
    """Observe the agent's action ``a`` in state ``s`` and advance one round (phase-1 bookkeeping,
    bracket updates at epoch ends, switch to steering at the end of phase 1)."""
    del s
    n_actions = state.lo.shape[0]
    L = cfg.epoch_len
    epoch, probe = _probe(state, cfg)
    pos = state.t % L
    second_half = pos >= L // 2
    t1 = phase_one_length(n_actions, cfg)
    in_p1 = state.t < t1
    hits = state.hits + jnp.where(in_p1 & second_half & (a == probe), 1, 0)
    default_hits = state.default_hits + jnp.where((epoch == 0) & second_half, jax.nn.one_hot(a, n_actions, dtype=jnp.int32), 0)
    end = in_p1 & (pos == L - 1)
    adopted = hits * 2 >= (L - L // 2)
    mid = 0.5 * (state.lo + state.hi)
    upd = end & (probe >= 0)
    onehot = jnp.arange(n_actions) == probe
    hi = jnp.where(upd & onehot & adopted, mid, state.hi)
    lo = jnp.where(upd & onehot & ~adopted, mid, state.lo)
    default = jnp.where(end & (epoch == 0), jnp.argmax(default_hits), state.default)
    new = state._replace(
        t=state.t + 1, lo=lo, hi=hi, hits=jnp.where(end, 0, hits), default_hits=default_hits, default=default
    )
    start_steer = new.t == t1
    target = jax.lax.cond(start_steer, lambda: target_policy(new, model), lambda: new.target)
    return new._replace(target=target, steering=new.steering | start_steer)


# ------------------------------------------------------------------------- the agent


class QAgentState(NamedTuple):
    """Agent's private-reward estimates ``q[s, a]``, visit counts ``n[s, a]``, round ``t``."""

    q: Array
    n: Array
    t: Array


def q_agent_init(n_states: int, n_actions: int) -> QAgentState:
    return QAgentState(jnp.zeros((n_states, n_actions)), jnp.zeros((n_states, n_actions)), jnp.asarray(0))


def q_agent_act(state: QAgentState, s: Array, menu: Array, key: Array, eps0: float = 1.0) -> Array:
    """epsilon-greedy on ``q[s] + menu[s]`` (own learned reward plus the posted transfer), with
    ``eps_t = min(1, eps0 t^{-1/3})``: a no-regret (``O(T^{2/3})``) learner for its own payoff."""
    k_explore, k_action = jax.random.split(key)
    eps = jnp.minimum(1.0, eps0 * (state.t + 1.0) ** (-1.0 / 3.0))
    greedy = jnp.argmax(state.q[s] + menu[s])
    random = jax.random.randint(k_action, (), 0, state.q.shape[1])
    return jnp.where(jax.random.uniform(k_explore) < eps, random, greedy)


def q_agent_update(state: QAgentState, s: Array, a: Array, reward: Array, s_next: Array, gamma: float = 0.0) -> QAgentState:
    """Q-learning with step ``1/n(s,a)``: ``q <- q + (r + gamma max q[s'] - q) / n`` on the
    private reward (transfers are known from the posted menu, not learned). ``gamma = 0``: a
    myopic learner, which is what makes the externality matter."""
    n = state.n.at[s, a].add(1.0)
    target = reward + gamma * jnp.max(state.q[s_next])
    q = state.q.at[s, a].add((target - state.q[s, a]) / n[s, a])
    return QAgentState(q, n, state.t + 1)


# --------------------------------------------------------------------------- simulation


class Trace(NamedTuple):
    """Per round: state, action, social welfare (transfers excluded), transfer paid."""

    s: Array
    a: Array
    welfare: Array
    transfer_paid: Array


def agent_round(
    ast: QAgentState, s: Array, menu: Array, key: Array, mdp: pm.PrincipalMDP, eps0: float
) -> tuple[Array, Array, Array, QAgentState]:
    """The agent's round on the posted ``menu``: act (epsilon-greedy), earn its private
    reward, move the MDP, learn. Returns ``(a, r, s_next, next agent state)``; ``key`` is
    the round's key, split three ways (act, reward, move) as in ``simulate``."""
    k_act, k_rew, k_next = jax.random.split(key, 3)
    a = q_agent_act(ast, s, menu, k_act, eps0)
    r = pm.agent_reward(mdp, s, a, k_rew)
    s_next = pm.transition(mdp, s, a, k_next)
    return a, r, s_next, q_agent_update(ast, s, a, r, s_next)


def simulate(
    mdp: pm.PrincipalMDP, key: Array, horizon: int, cfg: TwoPhaseConfig, mode: str = "two_phase", eps0: float = 1.0
) -> Trace:
    """Run ``horizon`` rounds under ``lax.scan``. ``mode``: ``"two_phase"`` (the mechanism),
    ``"none"`` (no incentives), ``"known_transfers"`` (phase 2 from round 0 with the true
    minimal transfers: an oracle on the agent's preferences, not on its actions)."""
    n_states, n_actions = mdp.reward.shape
    model = PrincipalModel(mdp.P, mdp.externality)
    p0 = principal_init(n_states, n_actions, cfg)
    if mode == "known_transfers":
        tau_star = jnp.max(mdp.reward[0]) - mdp.reward[0]
        p0 = p0._replace(lo=tau_star, hi=tau_star, default=jnp.argmax(mdp.reward[0]), steering=jnp.asarray(True))
        p0 = p0._replace(target=target_policy(p0, model), t=jnp.asarray(phase_one_length(n_actions, cfg) + 1))

    def body(carry, k):
        s, pst, ast = carry
        menu = principal_transfers(pst, cfg) if mode != "none" else jnp.zeros((n_states, n_actions))
        a, _, s_next, ast = agent_round(ast, s, menu, k, mdp, eps0)
        pst = principal_update(pst, s, a, model, cfg) if mode == "two_phase" else pst
        return (s_next, pst, ast), Trace(s, a, pm.welfare(mdp, s, a), menu[s, a])

    keys = jax.random.split(key, horizon)
    _, trace = jax.lax.scan(body, (jnp.asarray(0), p0, q_agent_init(n_states, n_actions)), keys)
    return trace


def welfare_regret(trace: Trace, first_best_gain: Array) -> Array:
    """``R(T) = sum_t (g* - w_t)`` (transfers excluded: they are welfare-neutral)."""
    return jnp.sum(first_best_gain - trace.welfare)


def regret_exponent(horizons, regrets) -> float:
    """Least-squares slope of ``log R`` on ``log T``."""
    import numpy as np

    return float(np.polyfit(np.log(np.asarray(horizons, float)), np.log(np.asarray(regrets, float)), 1)[0])
