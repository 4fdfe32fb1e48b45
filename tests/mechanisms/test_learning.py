"""Logit-Q learners: hand-computed steps, the uniform first action, scan vs closed-form filter."""

import jax
import jax.numpy as jnp
import numpy as np

import mechanisms  # noqa: F401  (x64)
from mechanisms.learning import (
    LogitQParams, logit_q_filter, logit_q_init, logit_q_log_likelihood, logit_q_policy, logit_q_simulate,
    logit_q_simulate_episodes, logit_q_update,
)

P = LogitQParams(0.25, 3.0, 0.06)


def test_update_matches_hand_computed_step():
    q = jnp.array([[0.0, 1.0, 2.0]])
    u = jnp.array([[3.0, 0.0, -3.0]])
    np.testing.assert_allclose(logit_q_update(q, u, P), [[0.75, 0.75, 0.75]], atol=1e-15)
    q2 = jnp.array([[1.0, 0.0]])
    z = np.exp(3.0) + 1.0
    expected = [0.94 * np.exp(3.0) / z + 0.03, 0.94 / z + 0.03]
    np.testing.assert_allclose(logit_q_policy(q2, P), [expected], atol=1e-14)


def test_policy_is_a_distribution_and_uniform_at_zero():
    pi = logit_q_policy(jax.random.normal(jax.random.PRNGKey(0), (5, 7)) * 10, P)
    np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-12)
    assert float(pi.min()) >= 0.06 / 7 - 1e-15
    np.testing.assert_allclose(logit_q_policy(logit_q_init(2, 4), P), 0.25, atol=1e-15)


def _cf_favour_last(joint):
    """A mechanism that pays 10 for action A-1 and 0 otherwise (A = 4)."""
    return jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 10.0]), (joint.shape[0], 4))


def test_simulator_first_action_is_uniform_whatever_the_mechanism():
    acts = logit_q_simulate_episodes(jax.random.PRNGKey(1), _cf_favour_last, 4000, 2, 4, 3, P)
    assert acts.shape == (4000, 3, 2) and acts.dtype == jnp.int32
    first = np.bincount(np.asarray(acts[:, 0]).ravel(), minlength=4) / 8000
    np.testing.assert_allclose(first, 0.25, atol=0.02)  # 5 sigma at n = 8000
    # after one update the learners favour the paid action: 0.94 softmax(3 * 2.5) + 0.015
    later = np.mean(np.asarray(acts[:, 1]) == 3)
    expected = 0.94 * np.exp(7.5) / (np.exp(7.5) + 3) + 0.015
    assert abs(later - expected) < 0.02


def test_filter_equals_recursion_and_likelihood_by_hand():
    u = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 3, 4))
    q, qs = jnp.zeros((2, 3, 4)), []
    for t in range(6):
        qs.append(q)
        q = logit_q_update(q, u[:, t], P)
    np.testing.assert_allclose(logit_q_filter(u, P.alpha), jnp.stack(qs, 1), atol=1e-13)

    # two steps, one agent, A = 2, payoff 1 for action 1: ll = log(1/2) + log pi_1(Q = (0, 0.25))
    cf = lambda joint: jnp.array([[0.0, 1.0]])  # noqa: E731
    ll = logit_q_log_likelihood(cf, jnp.array([[[0], [1]]]), 2, P)
    p1 = 0.94 * np.exp(0.75) / (1 + np.exp(0.75)) + 0.03
    np.testing.assert_allclose(ll, np.log(0.5) + np.log(p1), atol=1e-14)


def test_single_episode_simulation_is_deterministic_given_key():
    a = logit_q_simulate(jax.random.PRNGKey(3), _cf_favour_last, 3, 4, 5, P)
    b = logit_q_simulate(jax.random.PRNGKey(3), _cf_favour_last, 3, 4, 5, P)
    assert a.shape == (5, 3) and bool(jnp.all(a == b))
