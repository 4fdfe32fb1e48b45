"""DIML: counterfactual payoffs of every family, likelihood paths, recovery from known mechanisms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mechanisms  # noqa: F401  (x64)
from mechanisms import diml
from mechanisms.games import diml_envs as envs
from mechanisms.learning import LogitQParams, logit_q_log_likelihood, logit_q_simulate_episodes

KEY = jax.random.PRNGKey(0)


def brute_counterfactual(mech, params, joint):
    """``u_cf[i, a]`` by re-evaluating the realised payoffs at every unilateral deviation."""
    n, a_n = mech.n_agents, mech.n_actions
    out = np.zeros((n, a_n))
    for i in range(n):
        for a in range(a_n):
            dev = joint.at[i].set(a)
            out[i, a] = float(envs.payoffs(mech, params, dev)[i])
    return out


@pytest.mark.parametrize("make", [
    lambda k: envs.e1_neural(k, 3, 4),
    lambda k: envs.e2_congestion(k, 4, 3),
    lambda k: envs.e3_public_goods(k, 3, 4),
    lambda k: envs.e7_anonymous(k, 6, 4),
    lambda k: envs.e7_released(k, 6, 4),
])
def test_counterfactual_is_unilateral_deviation(make):
    env = make(KEY)
    mech = env.mechanism
    joint = jax.random.randint(jax.random.PRNGKey(1), (mech.n_agents,), 0, mech.n_actions, jnp.int32)
    cf = mech.counterfactual(mech.prepare(env.params), joint)
    np.testing.assert_allclose(cf, brute_counterfactual(mech, env.params, joint), atol=1e-12)


def test_congestion_payoff_by_hand():
    p = envs.CongestionParams(jnp.array([1.0, 2.0]), jnp.array([0.5, 0.0]), jnp.array([0.25, 1.0]))
    mech = envs.congestion_mechanism(3, 2)
    # loads: resource 0 has 2 agents, resource 1 has 1
    u = envs.payoffs(mech, p, jnp.array([0, 0, 1]))
    np.testing.assert_allclose(u, [-(2 + 0.5 * 4) + 0.5, -(2 + 0.5 * 4) + 0.5, -2 + 1.0])
    # anonymous: u_i depends on own action and the others' fractions only
    env = envs.e7_anonymous(KEY, 5, 3)
    a = envs.payoffs(env.mechanism, env.params, jnp.array([0, 1, 2, 2, 1]))
    b = envs.payoffs(env.mechanism, env.params, jnp.array([1, 0, 2, 1, 2]))
    np.testing.assert_allclose(a[jnp.array([0, 1, 2])], b[jnp.array([1, 0, 2])], atol=1e-14)


def _data(env, episodes, key=1, steps=60):
    m = env.mechanism
    pt = m.prepare(env.params)
    return logit_q_simulate_episodes(jax.random.PRNGKey(key), lambda a: m.counterfactual(pt, a), episodes,
                                     m.n_agents, m.n_actions, steps)


def test_vectorised_and_scan_likelihood_agree():
    env = envs.e3_public_goods(KEY, 3, 5)
    acts = _data(env, 6, steps=20)
    m, pt = env.mechanism, env.mechanism.prepare(env.params)
    scan = -logit_q_log_likelihood(lambda a: m.counterfactual(pt, a), acts, 5) / acts.size
    np.testing.assert_allclose(diml.nll(m, env.params, acts), scan, rtol=1e-13)


def _recovery(env, model, epochs, lr, l2=0.0):
    acts = _data(env, 80)
    train, test = acts[:60], acts[60:]
    mech = diml.make_model(model, env.mechanism.n_agents, env.mechanism.n_actions)
    fitter = diml.make_fitter(mech, train, config=diml.FitConfig(steps_per_epoch=20, learning_rate=lr, l2=l2))
    state = fitter.init(jax.random.PRNGKey(2))
    for _ in range(epochs):
        state, _ = fitter.epoch(state)
    params = state.params["mechanism"]
    seen = train.reshape(-1, mech.n_agents)[::7]
    pm, pt = mech.prepare(params), env.mechanism.prepare(env.params)
    d_hat = jax.vmap(lambda j: diml.counterfactual_differences(mech, pm, j))(seen)[..., 1:]
    d_true = jax.vmap(lambda j: diml.counterfactual_differences(env.mechanism, pt, j))(seen)[..., 1:]
    corr = np.corrcoef(np.ravel(d_hat), np.ravel(d_true))[0, 1]
    return corr, float(diml.nll(mech, params, test)), float(diml.nll(env.mechanism, env.params, test))


def test_structured_congestion_recovers_payoff_differences():
    corr, nll_fit, nll_true = _recovery(envs.e2_congestion(KEY), "congestion", 5, 3e-2)
    assert corr >= 0.95
    assert nll_fit <= 1.02 * nll_true


@pytest.mark.slow
def test_neural_diml_recovers_congestion_payoff_differences():
    corr, nll_fit, nll_true = _recovery(envs.e2_congestion(KEY, 3, 4), "neural", 10, 1e-2, 3e-4)
    assert corr >= 0.95
    assert nll_fit <= 1.02 * nll_true


def test_fit_entry_point_reports_everything():
    env = envs.e2_congestion(KEY, 3, 3)
    acts = _data(env, 20, steps=30)
    seen = []
    res = diml.fit(acts, 3, "congestion", key=jax.random.PRNGKey(5), config=diml.FitConfig(epochs=3),
                   callback=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3] and len(res.history) == 3
    assert res.payoff_differences.shape == (3, 3) and np.all(res.payoff_differences[:, 0] == 0)
    assert len(res.train_episodes) == 16 and len(res.heldout_episodes) == 4
    assert np.isfinite([res.train_nll, res.heldout_nll, res.frequency_nll]).all()
    assert res.learner == LogitQParams()
    with pytest.raises(ValueError):
        diml.fit(acts, 2, "congestion", key=KEY)
    with pytest.raises(ValueError):
        diml.fit(acts, 3, "no-such-model", key=KEY)


def test_metrics_vanish_at_the_truth_and_payoff_differences_average_contexts():
    env = envs.e2_congestion(KEY, 3, 3)
    m = env.mechanism
    acts = _data(env, 4, steps=10)
    joints = acts.reshape(-1, 3)
    assert float(diml.diff_mse(m, env.params, m, env.params, joints)) == 0.0
    assert abs(float(diml.policy_kl(m, env.params, m, env.params, acts, LogitQParams()))) < 1e-15
    d = diml.payoff_differences(m, env.params, acts[:1, :5])
    brute = np.mean([brute_counterfactual(m, env.params, j) for j in joints[:5]], axis=0)
    np.testing.assert_allclose(d, brute - brute[:, :1], atol=1e-12)


def test_environment_scale_multiplies_payoffs():
    """``scale`` (calibrated defaults E1_SCALE, E7_SCALE) multiplies every payoff of E1 and E7."""
    e1 = envs.e1_neural(KEY, 3, 4)
    np.testing.assert_allclose(jnp.std(e1.mechanism.prepare(e1.params)), envs.E1_SCALE, rtol=1e-12)
    np.testing.assert_allclose(e1.mechanism.prepare(envs.e1_neural(KEY, 3, 4, scale=1.0).params) * envs.E1_SCALE,
                               e1.mechanism.prepare(e1.params), atol=1e-12)
    joint = jnp.array([0, 1, 2, 2, 1, 0])
    u = envs.payoffs(envs.e7_anonymous(KEY, 6, 4).mechanism, envs.e7_anonymous(KEY, 6, 4).params, joint)
    u1 = envs.payoffs(envs.e7_anonymous(KEY, 6, 4).mechanism, envs.e7_anonymous(KEY, 6, 4, scale=1.0).params, joint)
    np.testing.assert_allclose(u, envs.E7_SCALE * u1, atol=1e-12)


def test_pair_diff_mse_is_the_mean_over_all_action_pairs_and_ignores_a_constant_shift():
    """The released script's metric, recomputed by enumerating every ``(context, i, a, a')``."""
    env = envs.e7_released(KEY, 5, 3)
    m = env.mechanism
    other = envs.e7_released(jax.random.PRNGKey(7), 5, 3).params
    joints = jax.random.randint(jax.random.PRNGKey(1), (4, 5), 0, 3, jnp.int32)
    brute = []
    for j in joints:
        u, v = brute_counterfactual(m, env.params, j), brute_counterfactual(m, other, j)
        for i in range(5):
            for a in range(3):
                for b in range(3):
                    brute.append(((u[i, a] - u[i, b]) - (v[i, a] - v[i, b])) ** 2)
    np.testing.assert_allclose(diml.pair_diff_mse(m, env.params, m, other, joints), np.mean(brute), rtol=1e-12)
    assert float(diml.pair_diff_mse(m, env.params, m, env.params, joints)) == 0.0
    layers = list(other.layers)
    w, b = layers[-1]
    shifted = other._replace(layers=layers[:-1] + [(w, b + 5.0)])  # every payoff + 5: same differences
    np.testing.assert_allclose(diml.pair_diff_mse(m, env.params, m, shifted, joints), np.mean(brute), rtol=1e-9)


def test_mean_square_payoff_by_hand():
    env = envs.e2_congestion(KEY, 3, 3)
    acts = _data(env, 2, steps=4)
    brute = np.mean([brute_counterfactual(env.mechanism, env.params, j) ** 2 for j in acts.reshape(-1, 3)])
    np.testing.assert_allclose(diml.mean_square_payoff(env.mechanism, env.params, acts), brute, rtol=1e-12)
    agents = jnp.array([0, 2])
    brute_rows = np.mean([brute_counterfactual(env.mechanism, env.params, j)[[0, 2]] ** 2 for j in acts.reshape(-1, 3)])
    np.testing.assert_allclose(diml.mean_square_payoff(env.mechanism, env.params, acts, agents=agents), brute_rows,
                               rtol=1e-12)


def _tabular_fit(train, n_agents, n_actions, payoff_l2):
    mech = diml.make_model("tabular", n_agents, n_actions)
    cfg = diml.recommended_config("tabular", epochs=20)._replace(payoff_l2=payoff_l2)
    fitter = diml.make_fitter(mech, train, config=cfg)
    state = fitter.init(jax.random.PRNGKey(2))
    for _ in range(cfg.epochs):
        state, _ = fitter.epoch(state)
    return mech, state.params["mechanism"]


def test_payoff_l2_reduces_overfitting_of_the_tabular_mle_on_a_small_data_set():
    """8 episodes x 30 steps of a 3 x 4 neural game (64 profiles): the unpenalised table
    overfits (its payoff differences far from the truth's, held-out NLL above the truth's);
    ``payoff_l2`` (the recommended 1.0) cuts the error of the differences and the held-out NLL."""
    env = envs.e1_neural(KEY, 3, 4)
    m = env.mechanism
    acts = _data(env, 28, steps=30)
    train, test = acts[:8], acts[8:]
    joints = train.reshape(-1, 3)
    assert diml.recommended_config("tabular").payoff_l2 == 1.0
    err, held = {}, {}
    for lam in (0.0, 1.0):
        mech, params = _tabular_fit(train, 3, 4, lam)
        err[lam] = float(diml.pair_diff_mse(m, env.params, mech, params, joints))
        held[lam] = float(diml.nll(mech, params, test))
    nll_true = float(diml.nll(m, env.params, test))
    assert err[1.0] < 0.5 * err[0.0], err
    assert held[1.0] < held[0.0] and held[0.0] > nll_true, (held, nll_true)


@pytest.mark.slow
def test_weight_l2_keeps_the_anonymous_fit_from_overfitting_the_released_e7_draw():
    """The released script's E7 protocol (its truth family, learners 0.2 / 6 / 0.02, 24 x 30
    episodes, 19 for training) at 20 agents x 5 actions: the unpenalised anonymous MLP fits
    the others'-fraction interaction to noise; the recommended weight l2 does not."""
    proto = envs.E7_RELEASED_PROTOCOL
    learner = LogitQParams(*proto["learner"])
    env = envs.e7_released(KEY, 20, 5)
    m, pt = env.mechanism, env.mechanism.prepare(env.params)
    acts = logit_q_simulate_episodes(jax.random.PRNGKey(1), lambda a: m.counterfactual(pt, a), 24, 20, 5, 30,
                                     learner)
    train, test = acts[:19], acts[19:]
    contexts = test[:, :-1].reshape(-1, 20)
    cfg = diml.recommended_config("anonymous", epochs=20)
    assert cfg.l2 == 1e-3
    err = {}
    for l2 in (0.0, cfg.l2):
        mech = diml.make_model("anonymous", 20, 5)
        fitter = diml.make_fitter(mech, train, learner, cfg._replace(l2=l2))
        state = fitter.init(jax.random.PRNGKey(3))
        for _ in range(cfg.epochs):
            state, _ = fitter.epoch(state)
        err[l2] = float(diml.pair_diff_mse(m, env.params, mech, state.params["mechanism"], contexts))
    assert err[cfg.l2] < 0.3 * err[0.0], err


def test_select_by_validation_picks_the_penalty_with_lowest_heldout_nll():
    """Weight l2 chosen on held-out episodes: the unpenalised anonymous MLP overfits 7 short
    episodes (lower training NLL, higher validation NLL, worse payoff differences), a huge
    penalty underfits; selection picks the middle, and its recorded validation NLLs match
    fits recomputed here with ``make_fitter`` directly."""
    learner = LogitQParams(0.2, 6.0, 0.02)
    env = envs.e7_released(KEY, 8, 4)
    m, pt = env.mechanism, env.mechanism.prepare(env.params)
    acts = logit_q_simulate_episodes(jax.random.PRNGKey(1), lambda a: m.counterfactual(pt, a), 10, 8, 4, 30, learner)
    mech = diml.make_model("anonymous", 8, 4)
    configs = [diml.FitConfig(epochs=20, steps_per_epoch=10, learning_rate=1e-2, l2=v) for v in (0.0, 1e-3, 10.0)]
    choice = diml.select_by_validation(mech, acts, configs, key=jax.random.PRNGKey(3), learner=learner,
                                       validation_episodes=3)
    fit_part, val_part = acts[:7], acts[7:]
    train_nll, val_nll, dmse = [], [], []
    for config in configs:
        fitter = diml.make_fitter(mech, fit_part, learner, config)
        state = fitter.init(jax.random.PRNGKey(3))
        for _ in range(config.epochs):
            state, _ = fitter.epoch(state)
        p = state.params["mechanism"]
        train_nll.append(float(diml.nll(mech, p, fit_part, learner)))
        val_nll.append(float(diml.nll(mech, p, val_part, learner)))
        dmse.append(float(diml.diff_mse(m, env.params, mech, p, fit_part.reshape(-1, 8))))
    np.testing.assert_allclose(choice.validation_nll[:, -1], val_nll, rtol=1e-10)
    assert choice.index == int(np.argmin(val_nll)) == 1 and choice.config == configs[1]
    assert train_nll[0] < train_nll[1] and val_nll[0] > val_nll[1]  # overfitting without the penalty
    assert dmse[1] < 0.2 * dmse[0]
    with pytest.raises(ValueError, match="validation_episodes"):
        diml.select_by_validation(mech, acts, configs, key=KEY, validation_episodes=10)


def test_level_floor_recovers_planted_levels_at_the_cramer_rao_rate():
    """Data from a truth with planted action levels: the oracle MLE given the base truth
    recovers the levels (centred), and over seeds its squared error averages to about the
    Cramer-Rao floor (estimated here by Monte Carlo, not by the Fisher information)."""
    learner = LogitQParams(0.2, 6.0, 0.02)
    env = envs.e7_released(KEY, 6, 3)
    shifted_truth = diml.level_offset_mechanism(env.mechanism)
    planted = jnp.array([0.0, 0.05, -0.03])
    prep = shifted_truth.prepare((env.params, planted))
    errors, floors = [], []
    for seed in range(16):
        acts = logit_q_simulate_episodes(jax.random.PRNGKey(10 + seed), lambda a: shifted_truth.counterfactual(prep, a),
                                         30, 6, 3, 30, learner)
        est = diml.level_floor(env.mechanism, env.params, acts, learner)
        centred = np.asarray(planted - planted.mean())
        errors.append(2.0 * np.mean((est.offsets - centred) ** 2))
        floors.append(est.floor)
        if seed == 0:
            np.testing.assert_allclose(est.offsets, centred, atol=0.02)
            np.testing.assert_allclose(est.offsets.sum(), 0.0, atol=1e-12)
    assert 0.5 < np.mean(errors) / np.mean(floors) < 2.0
