"""Model-free RL baseline (independent REINFORCE on the team reward)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mechanisms  # noqa: F401
from mechanisms import dpm, rl
from mechanisms.games import team

TYPES = team.TeamTypes(jnp.array([2.0, 2.5, 1.5, 3.0, 1.8]), jnp.array([1.0, 0.7, 1.2, 0.9, 1.1]))
KAPPA = 0.2


def test_score_function_gradient_is_unbiased():
    # away from the x >= 0 clip, E[(R - b) eps / sigma] = grad W(mu) for quadratic W (any b);
    # the reference gradient is the DPM signal, computed in closed form by jax.grad
    mu = jnp.array([1.0, 1.2, 0.8, 1.5, 0.9])
    sigma, m = 0.05, 40_000
    keys = jax.random.split(jax.random.PRNGKey(0), m)
    b = team.welfare(mu, TYPES, KAPPA)
    g, _ = jax.jit(jax.vmap(lambda k: rl.reinforce_gradient(mu, jnp.full(5, b), TYPES, KAPPA, sigma, k)))(keys)
    est, se = g.mean(0), g.std(0) / np.sqrt(m)
    exact = dpm.team_signals(mu, TYPES, KAPPA)
    assert np.all(np.abs(est - exact) < 5 * se + 1e-3), (est, exact, se)


def test_reinforce_reaches_99_percent_of_optimum():
    opt = optax.adam(0.1)
    w_star = team.optimal_welfare(TYPES, KAPPA)
    run = jax.jit(
        lambda k: rl.reinforce_until(rl.reinforce_init(jnp.zeros(5), opt, k, TYPES, KAPPA), TYPES, KAPPA, opt, 0.3, 0.99 * w_star, 50_000)
    )
    s = run(jax.random.PRNGKey(3))
    assert float(s.mean_welfare) >= 0.99 * float(w_star)
    assert int(s.rounds) < 50_000
    # recomputed independently: the welfare of the returned means
    assert abs(float(team.welfare(s.mu, TYPES, KAPPA)) - float(s.mean_welfare)) < 1e-12
    # the learned profile is near the closed-form optimum (welfare is quadratic around it)
    assert float(jnp.max(jnp.abs(s.mu - team.optimal_usage(TYPES, KAPPA)))) < 0.5


def test_dpm_needs_far_fewer_rounds_than_reinforce():
    steps = dpm.default_steps(TYPES, KAPPA)
    w_star = float(team.optimal_welfare(TYPES, KAPPA))
    state, rounds = dpm.dpm_init(jnp.zeros(5), TYPES, KAPPA), 0
    step = jax.jit(lambda s: dpm.dpm_step(s, TYPES, KAPPA, steps))
    while float(team.welfare(state.x, TYPES, KAPPA)) < 0.99 * w_star:
        state, rounds = step(state), rounds + 1
    opt = optax.adam(0.1)
    s = jax.jit(
        lambda k: rl.reinforce_until(rl.reinforce_init(jnp.zeros(5), opt, k, TYPES, KAPPA), TYPES, KAPPA, opt, 0.3, 0.99 * w_star, 50_000)
    )(jax.random.PRNGKey(4))
    assert 10 * rounds < int(s.rounds)
