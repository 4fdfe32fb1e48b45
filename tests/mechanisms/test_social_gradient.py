"""Social-gradient flow: Pigou toll, parallel-link routing, quadratic aggregative game,
descent along the flow, two-timescale learning, agreement with the hypergradient baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import mechanisms  # noqa: F401
from mechanisms import learning
from mechanisms import social_gradient as sg
from mechanisms.games import routing as rt

PIGOU = rt.pigou()


def _jit(flow):
    """Run a flow under one jit (callables and counts static): eager while_loops are slow."""

    def run(*args):
        arrays = [a for a in args if isinstance(a, jax.Array)]
        slots = [isinstance(a, jax.Array) for a in args]

        def f(*arr):
            it = iter(arr)
            return flow(*[next(it) if sl else a for a, sl in zip(args, slots)])

        return jax.jit(f)(*arrays)

    return run


@jax.jit
def _pigou_eq(p):
    return rt.wardrop_equilibrium(PIGOU, p)


def _pigou_cost(x):
    return rt.social_cost(x, PIGOU)


def _quad_game(n, seed=0):
    rng = np.random.default_rng(seed)
    return rt.QuadraticGame(
        jnp.asarray(rng.uniform(0.5, 2.0, n)), jnp.asarray(rng.uniform(1.0, 3.0, n)), jnp.asarray(0.3), jnp.asarray(1.0)
    )


def test_pigou_equilibria_in_closed_form():
    # no toll: everyone on the variable link, S = 1; toll tau: x0 = 1 - tau
    np.testing.assert_allclose(_pigou_eq(jnp.zeros(2)), [1.0, 0.0], atol=1e-9)
    for tau in (0.2, 0.5, 0.7):
        np.testing.assert_allclose(_pigou_eq(jnp.array([tau, 0.0])), [1 - tau, tau], atol=1e-9)


def test_pigou_flow_toll_converges_to_half_and_pigouvian_toll():
    state, trace = _jit(sg.social_gradient_flow)(jnp.zeros(2), _pigou_eq, _pigou_cost, 0.25, 60, rt.project_tangent)
    toll = state.p - jnp.min(state.p)
    assert abs(float(toll[0]) - 0.5) < 1e-3 and float(toll[1]) == 0.0
    x = trace.x[-1]
    np.testing.assert_allclose(x, [0.5, 0.5], atol=1e-3)
    assert float(trace.social_cost[-1]) == pytest.approx(0.75, abs=1e-6)
    # the Pigouvian marginal-externality toll x l'(x) at the optimum, computed independently
    assert float(toll[0]) == pytest.approx(float(rt.pigouvian_toll(x, PIGOU)[0]), abs=1e-3)


def test_social_cost_decreases_along_flow():
    _, trace = _jit(sg.social_gradient_flow)(jnp.zeros(2), _pigou_eq, _pigou_cost, 0.25, 30, rt.project_tangent)
    assert np.all(np.diff(np.asarray(trace.social_cost)) <= 1e-12)
    game = _quad_game(20)
    _, trace = _jit(sg.social_gradient_flow)(
        jnp.zeros(20), lambda p: rt.quadratic_equilibrium(game, p), lambda x: rt.quadratic_social_cost(x, game), 0.1, 200
    )
    assert np.all(np.diff(np.asarray(trace.social_cost)) <= 1e-12)


def _three_links():
    return rt.ParallelLinks(jnp.array([0.0, 0.5, 1.0]), jnp.array([1.0, 2.0, 0.5]), jnp.array([1.0, 2.0, 4.0]), jnp.asarray(2.0))


def test_parallel_links_reach_optimum_with_pigouvian_tolls():
    net = _three_links()
    state, trace = _jit(sg.social_gradient_flow)(
        jnp.zeros(3), lambda p: rt.wardrop_equilibrium(net, p, eta=0.1), lambda x: rt.social_cost(x, net), 0.1, 300,
        rt.project_tangent,
    )
    cons = {"type": "eq", "fun": lambda x: x.sum() - 2.0}
    f = lambda x: float(rt.social_cost(jnp.asarray(x), net))  # noqa: E731
    ref = minimize(f, np.full(3, 2 / 3), bounds=[(0, None)] * 3, constraints=cons, method="SLSQP", tol=1e-14).x
    np.testing.assert_allclose(trace.x[-1], ref, atol=1e-5)
    # at an interior optimum the flow's tolls equal the Pigouvian tolls up to a common shift
    pig = rt.pigouvian_toll(jnp.asarray(ref), net)
    np.testing.assert_allclose(state.p - state.p.mean(), pig - pig.mean(), atol=1e-5)


@pytest.mark.parametrize("n", [5, 50])
def test_quadratic_game_flow_matches_closed_form_optimum(n):
    game = _quad_game(n, seed=n)
    state, trace = _jit(sg.social_gradient_flow)(
        jnp.zeros(n), lambda p: rt.quadratic_equilibrium(game, p), lambda x: rt.quadratic_social_cost(x, game), 0.1, 2000
    )
    x_opt = rt.quadratic_optimum(game)
    # second method: the optimum by a dense linear solve of grad S = 0
    qq, rr = np.asarray(game.q), np.asarray(game.r)
    x_lin = np.linalg.solve(np.diag(qq) + float(game.s) * np.ones((n, n)), rr)
    np.testing.assert_allclose(x_opt, x_lin, atol=1e-10)
    np.testing.assert_allclose(trace.x[-1], x_lin, atol=1e-6)
    np.testing.assert_allclose(state.p, rt.quadratic_optimal_incentive(game), atol=1e-6)
    # the equilibrium at the found incentive is a Nash equilibrium: dense solve of F(x) + p = 0
    h = np.diag(qq + float(game.c)) + float(game.c) * np.ones((n, n))
    np.testing.assert_allclose(rt.quadratic_equilibrium(game, state.p), np.linalg.solve(h, rr - np.asarray(state.p)), atol=1e-9)


def test_two_timescale_with_gradient_play_learners():
    n = 10
    game = _quad_game(n, seed=3)
    eta = 0.2

    def learn(x, p):  # agents descend their own cost + incentive (no projection needed: x real)
        return x - eta * (rt.quadratic_pseudo_gradient(x, game) + p)

    st, trace = _jit(sg.two_timescale_run)(
        sg.two_timescale_init(jnp.zeros(n), jnp.zeros(n)), learn, lambda x: rt.quadratic_social_cost(x, game), 0.01, 6000
    )
    np.testing.assert_allclose(st.x, rt.quadratic_optimum(game), atol=1e-6)
    np.testing.assert_allclose(st.planner.p, rt.quadratic_optimal_incentive(game), atol=1e-6)


def test_two_timescale_routing_with_projected_play():
    net = PIGOU

    def learn(x, p):
        return rt.routing_equilibrium_step(x, p, net, 0.5)

    st, _ = _jit(sg.two_timescale_run)(
        sg.two_timescale_init(jnp.array([1.0, 0.0]), jnp.zeros(2)), learn, _pigou_cost, 0.02, 3000, rt.project_tangent
    )
    assert float(st.planner.p[0] - st.planner.p[1]) == pytest.approx(0.5, abs=1e-3)


def test_learning_projected_play_is_a_valid_fast_rule():
    # the shared learning rule (x >= 0 projection) as the agents' rule in a game whose optimum is interior
    n = 6
    game = _quad_game(n, seed=7)._replace(s=jnp.asarray(0.1))

    def learn(x, p):
        return learning.projected_gradient_play(x, -(rt.quadratic_pseudo_gradient(x, game) + p), 0.2)

    st, _ = _jit(sg.two_timescale_run)(
        sg.two_timescale_init(jnp.zeros(n), jnp.zeros(n)), learn, lambda x: rt.quadratic_social_cost(x, game), 0.01, 6000
    )
    x_opt = rt.quadratic_optimum(game)
    assert bool(jnp.all(x_opt > 0))
    np.testing.assert_allclose(st.x, x_opt, atol=1e-6)


def test_social_gradient_and_hypergradient_reach_same_optimum():
    # Pigou from a small toll (at zero toll the equilibrium sits on the simplex's kink, where
    # the implicit derivative is one-sided; start both methods in the interior)
    p0 = jnp.array([0.1, 0.0])
    s_state, _ = _jit(sg.social_gradient_flow)(p0, _pigou_eq, _pigou_cost, 0.25, 60, rt.project_tangent)
    fp = lambda x, p: rt.routing_equilibrium_step(x, p, PIGOU, 0.5)  # noqa: E731
    h_p, _ = _jit(sg.hypergradient_flow)(p0, _pigou_eq, fp, _pigou_cost, 0.1, 100)
    assert float(s_state.p[0] - s_state.p[1]) == pytest.approx(float(h_p[0] - h_p[1]), abs=1e-6)
    # quadratic game: same incentive and equilibrium from both methods
    n = 15
    game = _quad_game(n, seed=11)
    eq = lambda p: rt.quadratic_equilibrium(game, p)  # noqa: E731
    cost = lambda x: rt.quadratic_social_cost(x, game)  # noqa: E731
    s_state, _ = _jit(sg.social_gradient_flow)(jnp.zeros(n), eq, cost, 0.1, 2000)
    fpq = lambda x, p: x - 0.1 * (rt.quadratic_pseudo_gradient(x, game) + p)  # noqa: E731
    h_p, _ = _jit(sg.hypergradient_flow)(jnp.zeros(n), eq, fpq, cost, 1.0, 2000)
    np.testing.assert_allclose(s_state.p, h_p, atol=1e-6)
    np.testing.assert_allclose(eq(h_p), rt.quadratic_optimum(game), atol=1e-6)


def test_hypergradient_matches_finite_differences():
    n = 4
    game = _quad_game(n, seed=5)
    eq = lambda p: rt.quadratic_equilibrium(game, p)  # noqa: E731
    cost = lambda x: rt.quadratic_social_cost(x, game)  # noqa: E731
    fpq = lambda x, p: x - 0.1 * (rt.quadratic_pseudo_gradient(x, game) + p)  # noqa: E731
    p = jnp.array([0.3, -0.2, 0.1, 0.0])
    hg = jax.jit(lambda q: sg.hypergradient(q, eq(q), fpq, cost))(p)
    phi = jax.jit(lambda q: cost(eq(q)))
    eps = 1e-6
    fd = [(phi(p.at[i].add(eps)) - phi(p.at[i].add(-eps))) / (2 * eps) for i in range(n)]
    np.testing.assert_allclose(hg, fd, atol=1e-7)
