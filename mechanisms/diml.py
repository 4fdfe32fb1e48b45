"""Differentiable inverse mechanism learning (DIML; An & Du 2026, arXiv 2601.17678).

Given episodes of observed joint actions ``actions int[E, T, n]`` of logit-Q learners
(``mechanisms.learning``), fit a candidate mechanism ``theta`` (``mechanisms.games.diml_envs``)
by maximum likelihood through the learning dynamics:

    NLL(theta) = -1/(E T n) sum_{e,t,i} log pi_i(a^e_{t,i} | Q^e_t(theta)),
    Q^e_{t+1} = (1 - alpha) Q^e_t + alpha u_cf(theta; a^e_t),  Q^e_0 = 0,

reverse mode through the whole ``lax.scan`` over steps, vmapped over episodes, one jitted
function per epoch (``steps_per_epoch`` full-batch optax steps). Only payoff differences
``u_i(a, a_{-i}) - u_i(0, a_{-i})`` are identified, in the units fixed by ``beta``.

Entry point for tools (``mbi infer``): ``fit`` (or ``make_fitter`` + ``Fitter.epoch`` for
an epoch-by-epoch loop), returning ``DIMLResult``. Metrics of the paper: ``diff_mse``,
``nll`` (held-out NLL per agent-step) and ``cfkl`` (counterfactual KL under shifted learner
parameters ``alpha x 0.6, beta x 1.4, eps x 1.5``).
"""

from __future__ import annotations

import time
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mechanisms.games import diml_envs as envs
from mechanisms.games.diml_envs import Mechanism
from mechanisms.learning import (
    LogitQParams, chosen_log_prob, logit_q_filter, logit_q_log_policy, logit_q_update,
)

Array = jax.Array

MODELS = ("neural", "tabular", "congestion", "public_goods", "anonymous", "anonymous_linear", "anonymous_embedding")


def make_model(name: str, n_agents: int, n_actions: int, **kwargs) -> Mechanism:
    """A candidate mechanism family by name (one of ``MODELS``)."""
    factories = {
        "neural": envs.joint_mlp_mechanism,
        "tabular": envs.tabular_mechanism,
        "congestion": envs.congestion_mechanism,
        "public_goods": envs.public_goods_mechanism,
        "anonymous": envs.anonymous_mlp_mechanism,
        "anonymous_linear": envs.anonymous_linear_mechanism,
        "anonymous_embedding": envs.anonymous_embedding_mechanism,
    }
    if name not in factories:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    kw = dict(kwargs)
    if name == "neural":
        kw.setdefault("hidden", 64)
        kw.setdefault("out_scale", 0.1)
    return factories[name](n_agents, n_actions, **kw)


# ------------------------------------------------------------------------ likelihood


def _cast(tree: Any, dtype) -> Any:
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


FILTER_MAX = 200_000  # E*T*n*A up to which the likelihood is one vectorised pass (O(T^2) per entry)


@partial(jax.jit, static_argnames=("mech", "dtype", "remat"))
def nll(mech: Mechanism, params: Any, actions: Array, learner: LogitQParams = LogitQParams(),
        dtype=jnp.float64, remat: bool = False, agents: Array | None = None) -> Array:
    """Negative log-likelihood per agent-step of ``actions [E, T, n]`` under ``mech(params)``.

    All counterfactuals ``u_cf [E, T, n, A]`` are computed at once (vmapped; they depend on
    the observed actions only), then ``Q``: small data by ``logit_q_filter`` (one product,
    no loop), larger by a ``lax.scan`` of the elementwise update. ``remat`` instead uses
    ``logit_q_log_likelihood`` with per-step recomputation (memory O(E n A)). ``agents``
    (indices) restricts the sum to those agents -- the joint actions, hence every ``u_cf``,
    still use all of them; an unbiased agent-subsampled likelihood for very large ``n``.
    All paths compute the same number.
    """
    prepared = mech.prepare(_cast(params, dtype))
    learner = _cast(LogitQParams(*map(jnp.asarray, learner)), dtype)
    if remat:
        cf = (lambda a: mech.counterfactual(prepared, a)) if agents is None else (
            lambda a: envs.counterfactual_rows(mech, prepared, a, agents))
        obs = actions if agents is None else actions[..., agents]
        # the replay reads the observed actions of the chosen agents only
        ll = jax.vmap(lambda full, mine: _replay_subset(cf, full, mine, mech.n_actions, learner, dtype))(actions, obs)
        return -jnp.sum(ll) / obs.size
    if agents is None:
        u_cf = jax.vmap(jax.vmap(lambda a: mech.counterfactual(prepared, a)))(actions).astype(dtype)
        obs = actions
    else:
        u_cf = jax.vmap(jax.vmap(lambda a: envs.counterfactual_rows(mech, prepared, a, agents)))(actions).astype(dtype)
        obs = actions[..., agents]
    if obs.size * mech.n_actions <= FILTER_MAX:
        q = logit_q_filter(u_cf, learner.alpha)
    else:
        def step(q, u):
            return logit_q_update(q, u, learner), q

        _, q = jax.lax.scan(step, jnp.zeros_like(u_cf[:, 0]), jnp.swapaxes(u_cf, 0, 1))
        q = jnp.swapaxes(q, 0, 1)
    log_pi = logit_q_log_policy(q, learner)
    ll = jnp.sum(jnp.take_along_axis(log_pi, obs[..., None].astype(jnp.int32), axis=-1))
    return -ll / obs.size


@partial(jax.jit, static_argnames=("mech", "dtype"))
def mean_square_payoff(mech: Mechanism, params: Any, actions: Array, dtype=jnp.float64,
                       agents: Array | None = None) -> Array:
    """``mean_{e,t,i,a} u_cf[e, t, i, a]^2``: the mean squared counterfactual payoff at the
    observed contexts ``actions [E, T, n]`` (only ``agents``, when given) -- the quantity
    ``FitConfig.payoff_l2`` penalises. The released DIML script's ``reg_l2_pay`` penalises
    the mean squared *realised* payoff ``u_i(a^e_t)`` instead (the entries ``a = a^e_{t,i}``);
    with near-uniform play the two differ little, and this one also shrinks the payoffs of
    actions that were rarely played, which the likelihood alone pins down least.
    """
    prepared = mech.prepare(_cast(params, dtype))
    if agents is None:
        u_cf = jax.vmap(jax.vmap(lambda a: mech.counterfactual(prepared, a)))(actions)
    else:
        u_cf = jax.vmap(jax.vmap(lambda a: envs.counterfactual_rows(mech, prepared, a, agents)))(actions)
    return jnp.mean(jnp.square(u_cf.astype(dtype)))


def _replay_subset(cf, full: Array, mine: Array, n_actions: int, learner: LogitQParams, dtype) -> Array:
    """Log-likelihood of one episode, ``cf`` of the full joint, read at the agents of ``mine``."""

    @jax.checkpoint
    def step(carry, xs):
        q, acc = carry
        a_full, a_mine = xs
        acc = acc + chosen_log_prob(logit_q_log_policy(q, learner), a_mine)
        return (logit_q_update(q, cf(a_full).astype(dtype), learner), acc), None

    init = (jnp.zeros((mine.shape[-1], n_actions), dtype), jnp.zeros((), dtype))
    (_, total), _ = jax.lax.scan(step, init, (full, mine))
    return total


def frequency_nll(train: Array, heldout: Array, n_actions: int) -> Array:
    """Empirical-frequency baseline: per-agent action frequencies on ``train`` (add-one
    smoothing), NLL per agent-step of ``heldout``."""
    onehot = jax.nn.one_hot(train, n_actions).sum(axis=(0, 1)) + 1.0  # [n, A]
    logp = jnp.log(onehot / onehot.sum(-1, keepdims=True))
    return -jnp.mean(jnp.take_along_axis(logp[None, None], heldout[..., None], axis=-1))


# ------------------------------------------------------------------------ fitting


class FitConfig(NamedTuple):
    """Optimisation settings. ``fit_learner`` also fits ``alpha`` and ``eps`` (``beta`` stays
    fixed: it is confounded with the payoff scale).

    Two penalties, both added to the NLL per agent-step (so their strength does not shrink
    with the amount of data: a fixed prior, not one that washes out): ``l2 * sum(theta^2)``
    on the mechanism's weights, and ``payoff_l2 * mean_square_payoff`` on the counterfactual
    payoffs at the observed contexts (a ridge in payoff space, the released script's
    ``reg_l2_pay``; see ``recommended_config`` for the defaults per family). The released
    script weighs ``1e-4 * mean(u^2)`` against an NLL summed over ``n (T - 1)`` agent-steps,
    i.e. ``payoff_l2 = 1e-4 / (n (T - 1))`` here (9e-8 on E7 40 x 10): practically off.
    """

    epochs: int = 100
    steps_per_epoch: int = 10
    learning_rate: float = 3e-2
    fit_learner: bool = False
    l2: float = 0.0  # penalty l2 * sum(theta^2) on the mechanism's parameters
    payoff_l2: float = 0.0  # penalty payoff_l2 * mean_square_payoff (per agent-step NLL units)
    agents_per_step: int | None = None  # random subset of agents per step (large anonymous games)
    remat: bool = False
    dtype: Any = jnp.float64


def recommended_config(model: str, n_agents: int = 0, epochs: int | None = None) -> FitConfig:
    """Settings used in ``benchmarks/bench_diml.py``.

    * neural joint MLP: ``lr 1e-2, l2 3e-4`` (the weight l2 keeps it from overfitting 60 x 60
      episodes);
    * tabular: ``lr 3e-2, payoff_l2 1.0`` -- a ridge on the payoff table: without it the
      MLE overfits (E1 diff_mse 0.140 -> 0.016 with it, paper 0.013; E2 0.48 -> 0.24; on 10
      episodes E1 1.32 -> 0.075);
    * structured families: ``lr 3e-2``, nothing else;
    * anonymous MLP (and the released script's embedding family): ``lr 1e-2, l2 1e-3`` in
      float32, 30 x 10 steps, 100 sampled agents/step above 200. The weight l2 is a
      smoothness prior in the others' fractions: on the released script's E7 protocol
      (24 x 30 episodes) the unpenalised fit overfits the interaction and ends worse than
      predicting no differences (40 x 10: 2.8e-3; 120 x 25: 8.0e-3), with it 3.6e-5 and
      2.3e-5 (paper 2.5e-4, 3.4e-5). ``payoff_l2`` does much less there (9e-4 at 10): it
      shrinks the per-action levels, which are the signal, as much as the interaction.
      Chosen without the test data (``select_by_validation`` over 3e-4..1e-2 on 4 of the 19
      training episodes, five draws per size) the l2 varies from 3e-4 to 1e-2 and the test
      figure by at most 7%; it then sits within 4-13% of ``level_floor``'s oracle at 120 x 25.
      On five of the released script's own 120 x 25 draws it reaches 2.75e-5 on average
      against that script's own fit, 3.71e-5 (paper 3.4e-5; README, side by side).
    """
    if model == "neural":
        cfg = FitConfig(epochs=30, steps_per_epoch=10, learning_rate=1e-2, l2=3e-4)
    elif model == "tabular":
        cfg = FitConfig(epochs=30, steps_per_epoch=10, learning_rate=3e-2, payoff_l2=1.0)
    elif model in ("anonymous", "anonymous_embedding"):
        cfg = FitConfig(epochs=30, steps_per_epoch=10, learning_rate=1e-2, l2=1e-3, dtype=jnp.float32,
                        agents_per_step=100 if n_agents > 200 else None)
    elif model == "anonymous_linear":
        cfg = FitConfig(epochs=30, steps_per_epoch=10, learning_rate=1e-2, dtype=jnp.float32,
                        agents_per_step=100 if n_agents > 200 else None)
    else:
        cfg = FitConfig(epochs=30, steps_per_epoch=10, learning_rate=3e-2)
    return cfg if epochs is None else cfg._replace(epochs=epochs)


class FitState(NamedTuple):
    """``params = {"mechanism": ..., "learner": (logit alpha, logit eps) or None}``."""

    params: Any
    opt_state: Any
    epoch: Array
    key: Array


class Fitter(NamedTuple):
    """Pure init/epoch pair: ``init(key) -> FitState``; ``epoch(state) -> (state, train_nll)``
    runs ``steps_per_epoch`` optax steps in one jitted call (``train_nll`` before the last)."""

    init: Callable[[Array], FitState]
    epoch: Callable[[FitState], tuple[FitState, Array]]


def learner_of(params: Any, learner: LogitQParams) -> LogitQParams:
    """Learner parameters from the fitted pytree (``sigmoid`` of the free logits) or the fixed ones."""
    if params["learner"] is None:
        return learner
    la, le = params["learner"]
    return LogitQParams(jax.nn.sigmoid(la), learner.beta, jax.nn.sigmoid(le))


def make_fitter(mech: Mechanism, actions: Array, learner: LogitQParams = LogitQParams(),
                config: FitConfig = FitConfig()) -> Fitter:
    """Maximum likelihood of ``actions [E, T, n]`` over ``mech``'s params with Adam."""
    opt = optax.adam(config.learning_rate)
    actions = jnp.asarray(actions, jnp.int32)

    def loss(params: Any, acts: Array, agents: Array | None) -> Array:
        value = nll(mech, params["mechanism"], acts, learner_of(params, learner), config.dtype, config.remat, agents)
        if config.l2:
            value = value + config.l2 * sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(params["mechanism"]))
        if config.payoff_l2:
            value = value + config.payoff_l2 * mean_square_payoff(mech, params["mechanism"], acts, config.dtype, agents)
        return value

    def init(key: Array) -> FitState:
        lp = None
        if config.fit_learner:
            logit = lambda p: jnp.log(p) - jnp.log1p(-p)  # noqa: E731
            lp = (logit(jnp.asarray(0.5)), logit(jnp.asarray(0.1)))
        params = {"mechanism": mech.init(key), "learner": lp}
        return FitState(params, opt.init(params), jnp.asarray(0), jax.random.fold_in(key, 1))

    @jax.jit
    def _epoch(state: FitState, acts: Array) -> tuple[FitState, Array]:
        def step(carry, key):
            params, opt_state = carry
            agents = None
            if config.agents_per_step is not None and config.agents_per_step < mech.n_agents:
                agents = jax.random.choice(key, mech.n_agents, (config.agents_per_step,), replace=False)
            value, grads = jax.value_and_grad(loss)(params, acts, agents)  # value includes the l2 term
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        key, sub = jax.random.split(state.key)
        (params, opt_state), values = jax.lax.scan(step, (state.params, state.opt_state),
                                                   jax.random.split(sub, config.steps_per_epoch))
        return FitState(params, opt_state, state.epoch + 1, key), values[-1]

    return Fitter(init, lambda state: _epoch(state, actions))


def train_params(mech: Mechanism, actions: Array, learner: LogitQParams, config: FitConfig, key: Array,
                 on_epoch: Callable[[int, FitState], None] | None = None) -> FitState:
    """Run ``config.epochs`` epochs of ``make_fitter(mech, actions, learner, config)`` from
    ``init(key)``; ``on_epoch(epoch, state)`` after each (1-based)."""
    fitter = make_fitter(mech, actions, learner, config)
    state = fitter.init(key)
    for e in range(config.epochs):
        state, _ = fitter.epoch(state)
        if on_epoch is not None:
            on_epoch(e + 1, state)
    return state


class ValidationChoice(NamedTuple):
    """Result of ``select_by_validation``: ``config = configs[index]``; ``validation_nll[k, e]``
    is the validation NLL per agent-step of ``configs[k]`` after ``(e + 1) * every`` epochs
    (``nan`` past that config's epochs; the last column of each row decides)."""

    config: FitConfig
    index: int
    validation_nll: np.ndarray
    every: int


def select_by_validation(mech: Mechanism, actions: Array, configs: list[FitConfig], *, key: Array,
                         learner: LogitQParams = LogitQParams(), validation_episodes: int = 4,
                         every: int = 5) -> ValidationChoice:
    """Choose the regularisation without the test data: fit each of ``configs`` on the first
    ``E - validation_episodes`` episodes of ``actions [E, T, n]`` (same init key) and keep the
    one whose final fit has the lowest NLL per agent-step on the last ``validation_episodes``
    -- hold-out validation of the penalised maximum likelihood. The validation NLL is also
    recorded every ``every`` epochs, to show whether the fits have converged. Refit the
    chosen ``config`` on all ``E`` episodes for the final model.
    """
    if not configs:
        raise ValueError("select_by_validation needs at least one config")
    actions = jnp.asarray(actions, jnp.int32)
    if not 0 < validation_episodes < actions.shape[0]:
        raise ValueError(f"validation_episodes must lie in [1, {actions.shape[0] - 1}]")
    fit_part, val_part = actions[:-validation_episodes], actions[-validation_episodes:]
    table = np.full((len(configs), -(-max(c.epochs for c in configs) // every)), np.nan)
    final = np.full(len(configs), np.nan)
    for k, config in enumerate(configs):
        def record(epoch: int, state: FitState, k: int = k, config: FitConfig = config) -> None:
            if epoch % every == 0 or epoch == config.epochs:
                fitted = learner_of(state.params, learner)
                value = float(nll(mech, state.params["mechanism"], val_part, fitted, config.dtype))
                table[k, (epoch - 1) // every] = value
                if epoch == config.epochs:
                    final[k] = value

        train_params(mech, fit_part, learner, config, key, record)
    k = int(np.nanargmin(final))
    return ValidationChoice(configs[k], k, table, every)


# ------------------------------------------------------------------------ entry point


class EpochStats(NamedTuple):
    """Progress of one epoch (for a progress bar)."""

    epoch: int
    train_nll: float
    seconds: float


class DIMLResult(NamedTuple):
    """What ``fit`` returns. ``payoff_differences[i, a]`` = mean over the observed contexts
    (every training step) of ``u_i(a, a_{-i}) - u_i(0, a_{-i})``, in units fixed by ``beta``."""

    model: str
    params: Any
    learner: LogitQParams
    train_nll: float
    heldout_nll: float
    frequency_nll: float
    payoff_differences: np.ndarray
    history: tuple[EpochStats, ...]
    train_episodes: np.ndarray
    heldout_episodes: np.ndarray


def split_episodes(key: Array, n_episodes: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Random train/held-out split of episode indices (held-out empty when ``E = 1``)."""
    perm = np.asarray(jax.random.permutation(key, n_episodes))
    n_held = int(round(heldout_fraction * n_episodes)) if n_episodes > 1 else 0
    n_held = min(max(n_held, 1 if heldout_fraction > 0 and n_episodes > 1 else 0), n_episodes - 1)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def fit(
    actions: Array, n_actions: int, model: str | Mechanism = "neural", *, key: Array,
    learner: LogitQParams = LogitQParams(), config: FitConfig | None = None, heldout_fraction: float = 0.2,
    model_kwargs: dict | None = None, callback: Callable[[EpochStats], None] | None = None,
) -> DIMLResult:
    """Fit a mechanism to observed episodes ``actions int[E, T, n]`` by DIML.

    Splits episodes into train / held-out (``heldout_fraction``), runs ``config.epochs``
    jitted epochs (``callback(EpochStats)`` after each; ``config`` defaults to
    ``recommended_config(model)``), and reports train / held-out NLL
    per agent-step, the empirical-frequency baseline's held-out NLL and the payoff
    differences relative to action 0 averaged over the training contexts.
    """
    actions = jnp.asarray(actions, jnp.int32)
    if actions.ndim != 3:
        raise ValueError("actions must be [episodes, steps, agents]")
    if int(actions.min()) < 0 or int(actions.max()) >= n_actions:
        raise ValueError(f"actions must lie in [0, {n_actions})")
    n_agents = actions.shape[-1]
    mech = model if isinstance(model, Mechanism) else make_model(model, n_agents, n_actions, **(model_kwargs or {}))
    if config is None:
        config = recommended_config(mech.name, n_agents)
    k_split, k_init = jax.random.split(key)
    tr, te = split_episodes(k_split, actions.shape[0], heldout_fraction)
    train, held = actions[tr], actions[te]
    fitter = make_fitter(mech, train, learner, config)
    state = fitter.init(k_init)
    history = []
    for _ in range(config.epochs):
        t0 = time.perf_counter()
        state, value = fitter.epoch(state)
        stats = EpochStats(int(state.epoch), float(value), time.perf_counter() - t0)
        history.append(stats)
        if callback is not None:
            callback(stats)
    fitted = learner_of(state.params, learner)
    mparams = state.params["mechanism"]
    train_nll = float(nll(mech, mparams, train, fitted))
    held_nll = float(nll(mech, mparams, held, fitted)) if len(te) else float("nan")
    freq = float(frequency_nll(train, held, n_actions)) if len(te) else float("nan")
    diffs = np.asarray(payoff_differences(mech, mparams, train))
    return DIMLResult(mech.name, mparams, fitted, train_nll, held_nll, freq, diffs, tuple(history), tr, te)


# ------------------------------------------------------------------------ metrics


def counterfactual_differences(mech: Mechanism, prepared: Any, joint: Array) -> Array:
    """``D[i, a] = u_i(a, a_{-i}) - u_i(0, a_{-i})`` at one joint action, ``[n, A]``."""
    cf = mech.counterfactual(prepared, joint)
    return cf - cf[:, :1]


@partial(jax.jit, static_argnames=("mech",))
def payoff_differences(mech: Mechanism, params: Any, actions: Array) -> Array:
    """Mean over all observed contexts ``(e, t)`` of ``D[i, a]``, ``[n, A]`` (scan over steps)."""
    prepared = mech.prepare(params)
    joints = actions.reshape(-1, actions.shape[-1])

    def body(acc, joint):
        return acc + counterfactual_differences(mech, prepared, joint), None

    zero = jnp.zeros((mech.n_agents, mech.n_actions), jax.tree_util.tree_leaves(params)[0].dtype)
    total, _ = jax.lax.scan(body, zero, joints)
    return total / joints.shape[0]


@partial(jax.jit, static_argnames=("true", "mech"))
def diff_mse(true: Mechanism, true_params: Any, mech: Mechanism, params: Any, joints: Array) -> Array:
    """MSE of payoff differences ``D[i, a]``, ``a = 1..A-1``, over the joint actions ``joints [K, n]``."""
    pt, pm = true.prepare(true_params), mech.prepare(params)

    def body(acc, joint):
        d = counterfactual_differences(mech, pm, joint) - counterfactual_differences(true, pt, joint)
        return acc + jnp.sum(d[:, 1:] ** 2), None

    total, _ = jax.lax.scan(body, jnp.zeros(()), joints)
    return total / (joints.shape[0] * mech.n_agents * (mech.n_actions - 1))


@partial(jax.jit, static_argnames=("true", "mech"))
def pair_diff_mse(true: Mechanism, true_params: Any, mech: Mechanism, params: Any, joints: Array) -> Array:
    """The released DIML script's ``diff_mse``: ``E[((u_i(a, a_-i) - u_i(a', a_-i)) - (û_i(a, a_-i) - û_i(a', a_-i)))^2]``
    over contexts ``(joint, i)`` and independent uniform actions ``a, a'`` (``a = a'`` included).

    The script draws one pair per sampled context; this is that estimator's expectation over
    the pairs, exactly: with ``e = û_cf - u_cf`` at a context, ``mean_{a,a'} (e_a - e_a')^2
    = 2 Var_a(e)``. It is ``(1 - 1/A)``-weighted against ``diff_mse`` (which takes action 0 as
    the baseline) when the errors are independent across actions, but does not single out
    one action's error. Averaged over ``joints [K, n]`` and all agents.
    """
    pt, pm = true.prepare(true_params), mech.prepare(params)

    def body(acc, joint):
        e = mech.counterfactual(pm, joint) - true.counterfactual(pt, joint)
        return acc + 2.0 * jnp.sum(jnp.var(e, axis=-1)), None

    total, _ = jax.lax.scan(body, jnp.zeros(()), joints)
    return total / (joints.shape[0] * mech.n_agents)


@lru_cache(maxsize=None)
def level_offset_mechanism(true: Mechanism) -> Mechanism:
    """``true`` plus per-action offsets: params ``(true_params, delta [A])``, payoffs
    ``u_i(a) + delta[a]`` -- the truth known up to its action levels (cached per ``true``)."""
    return Mechanism(f"{true.name}+levels", true.n_agents, true.n_actions, lambda key: None,
                     lambda p: (true.prepare(p[0]), p[1]),
                     lambda prep, joint: true.counterfactual(prep[0], joint) + prep[1][None, :])


class LevelFloor(NamedTuple):
    """``level_floor``: ``floor`` = Cramer-Rao bound on the expected ``pair_diff_mse`` of any
    unbiased estimator of the action levels alone; ``oracle`` = the realised ``pair_diff_mse``
    of their maximum-likelihood estimate ``offsets`` (centred) on this data."""

    floor: float
    oracle: float
    offsets: np.ndarray


def level_floor(true: Mechanism, true_params: Any, actions: Array, learner: LogitQParams = LogitQParams(),
                newton_steps: int = 3) -> LevelFloor:
    """How well ``actions [E, T, n]`` pin down the truth's per-action levels, even with
    everything else known: with ``J`` the observed Fisher information of the summed NLL in
    ``delta`` (``level_offset_mechanism``) at ``delta = 0`` and ``P = I - 11^T / A`` (only
    level differences are identified), ``floor = 2 tr((P J P)^+) / A`` -- the expectation of
    ``pair_diff_mse = 2 mean_a (delta_a - mean delta)^2`` at the bound; ``oracle`` is that
    metric for the MLE of ``delta`` (``newton_steps`` projected Newton steps from 0). A
    fitted mechanism whose ``pair_diff_mse`` is near ``oracle`` is at the data's limit.
    """
    mech = level_offset_mechanism(true)
    a_n = true.n_actions
    total = lambda delta: nll(mech, (true_params, delta), actions, learner) * actions.size  # noqa: E731
    grad, hess = jax.grad(total), jax.jacfwd(jax.grad(total))
    proj = np.eye(a_n) - 1.0 / a_n
    delta = jnp.zeros(a_n)
    h = proj @ np.asarray(hess(delta)) @ proj
    floor = 2.0 * float(np.trace(np.linalg.pinv(h))) / a_n
    for step in range(newton_steps):
        if step:
            h = proj @ np.asarray(hess(delta)) @ proj
        delta = delta - jnp.asarray(np.linalg.pinv(h) @ (proj @ np.asarray(grad(delta))))
    offsets = np.asarray(delta - jnp.mean(delta))
    return LevelFloor(floor, 2.0 * float(np.mean(offsets ** 2)), offsets)


def seen_and_probe_joints(key: Array, actions: Array, n_actions: int, k: int = 2000) -> tuple[Array, Array]:
    """Up to ``k`` joint actions drawn from the training data, and ``k`` uniform random probes."""
    joints = actions.reshape(-1, actions.shape[-1])
    k1, k2 = jax.random.split(key)
    seen = joints[jax.random.choice(k1, joints.shape[0], (min(k, joints.shape[0]),), replace=False)]
    probe = jax.random.randint(k2, (k, actions.shape[-1]), 0, n_actions, jnp.int32)
    return seen, probe


def shifted(learner: LogitQParams, factors: tuple[float, float, float] = (0.6, 1.4, 1.5)) -> LogitQParams:
    """Shifted learner ``(alpha x 0.6, beta x 1.4, eps x 1.5)`` for counterfactual prediction."""
    return LogitQParams(learner.alpha * factors[0], learner.beta * factors[1], learner.eps * factors[2])


@partial(jax.jit, static_argnames=("true", "mech"))
def policy_kl(true: Mechanism, true_params: Any, mech: Mechanism, params: Any, actions: Array,
              learner_true: LogitQParams, learner_pred: LogitQParams | None = None) -> Array:
    """Mean over agent-steps of ``KL(pi_true || pi_pred)`` along episodes ``actions [E, T, n]``,
    each model replaying its own ``Q`` on the same realised actions."""
    learner_pred = learner_true if learner_pred is None else learner_pred
    pt, pm = true.prepare(true_params), mech.prepare(params)
    n, a_n = true.n_agents, true.n_actions

    def episode(acts):
        def step(carry, a):
            qt, qm, acc = carry
            lt, lm = logit_q_log_policy(qt, learner_true), logit_q_log_policy(qm, learner_pred)
            acc = acc + jnp.sum(jnp.exp(lt) * (lt - lm))
            qt = logit_q_update(qt, true.counterfactual(pt, a), learner_true)
            qm = logit_q_update(qm, mech.counterfactual(pm, a), learner_pred)
            return (qt, qm, acc), None

        z = jnp.zeros((n, a_n))
        (_, _, acc), _ = jax.lax.scan(step, (z, z, jnp.zeros(())), acts)
        return acc

    return jnp.sum(jax.vmap(episode)(actions)) / actions.size


def cfkl(true: Mechanism, true_params: Any, mech: Mechanism, params: Any, key: Array, n_episodes: int,
         n_steps: int, learner: LogitQParams = LogitQParams(), learner_pred: LogitQParams | None = None) -> Array:
    """``cfkl_params``: simulate the true mechanism with ``shifted(learner)`` and measure
    ``policy_kl`` of the fitted mechanism (also under the shifted learner) on those episodes."""
    from mechanisms.learning import logit_q_simulate_episodes

    sl = shifted(learner)
    pt = true.prepare(true_params)
    acts = logit_q_simulate_episodes(key, lambda a: true.counterfactual(pt, a), n_episodes, true.n_agents,
                                     true.n_actions, n_steps, sl)
    return policy_kl(true, true_params, mech, params, acts, sl, None if learner_pred is None else shifted(learner_pred))
