"""Candidate mechanisms and environments for inverse mechanism learning (DIML).

DIML: An & Du 2026 (arXiv 2601.17678); payoff forms from its released script, summarised
in ``papers/diml-notes.md``. A *mechanism* maps a joint action ``a in {0..A-1}^n`` to the
payoffs of all ``n`` agents. Learners (``mechanisms.learning``, logit-Q) need the
counterfactual payoffs ``u_cf[i, a] = u_i(a, a_{-i})`` of every action against the others'
realised actions, so a mechanism is a record of pure functions:

* ``init(key) -> params``: a parameter pytree (random where the family has weights);
* ``prepare(params) -> prepared``: work done once per likelihood evaluation, not per step
  (a small joint game is tabulated over all ``A^n`` profiles here);
* ``counterfactual(prepared, joint int[n]) -> float[n, A]``.

Families (each with an O(n A) or table-lookup counterfactual, never a loop over agents):

* ``joint_mlp_mechanism``: unstructured neural, an MLP of the one-hot joint action (E1 truth
  and the DIML "neural" candidate for small games);
* ``tabular_mechanism``: one free payoff per agent and joint profile (tabular MLE);
* ``congestion_mechanism``: ``u_i = -(c1[a] L + c2[a] L^2) + tau[a] L``, ``L`` the load of
  ``a = a_i`` (E2). Only ``tau - c1`` and ``c2`` are identified;
* ``public_goods_mechanism``: ``u_i = s (1 - exp(-k T)) - c l_i^2 + sub(T, l_i)``, levels
  ``l`` evenly spaced in ``[0, 1]``, ``T = sum_j l_j``, ``sub`` a small MLP (E3);
* ``anonymous_mechanism``: symmetric count-based ``u_i = g(a_i, f_{-i})`` with ``f_{-i}`` the
  others' action fractions, ``g`` an MLP (neural) or ``theta_a - gamma_a f_a + (W f)_a``
  (linear, the E7 truth). ``f_{-i}`` depends on ``i`` only through ``a_i``, so the
  counterfactual is one ``[A, A]`` table per step gathered by ``a_i``: O(A^2 + n A).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any


class Mechanism(NamedTuple):
    """A (candidate or true) mechanism over ``n_agents`` agents with ``n_actions`` actions each."""

    name: str
    n_agents: int
    n_actions: int
    init: Callable[[Array], Params]
    prepare: Callable[[Params], Any]
    counterfactual: Callable[[Any, Array], Array]
    rows: Callable[[Any, Array, Array], Array] | None = None  # (prepared, joint, agents) -> u_cf[agents]


def counterfactual_rows(mech: Mechanism, prepared: Any, joint: Array, agents: Array) -> Array:
    """``u_cf[agents]`` (``[k, A]``) without forming all ``n`` rows where the family allows it."""
    if mech.rows is not None:
        return mech.rows(prepared, joint, agents)
    return mech.counterfactual(prepared, joint)[agents]


def payoffs(mech: Mechanism, params: Params, joint: Array) -> Array:
    """Realised payoffs ``u_i(a)`` of a joint action: the diagonal of the counterfactual."""
    cf = mech.counterfactual(mech.prepare(params), joint)
    return jnp.take_along_axis(cf, joint[:, None].astype(jnp.int32), axis=-1)[:, 0]


# ------------------------------------------------------------------------------ MLPs


def mlp_init(key: Array, sizes: list[int], out_scale: float = 1.0, dtype=jnp.float64) -> list[tuple[Array, Array]]:
    """Weights ``N(0, 1/fan_in)`` and zero biases; last layer scaled by ``out_scale``."""
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for j, (k, fin, fout) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (fin, fout), dtype) / jnp.sqrt(fin)
        if j == len(sizes) - 2:
            w = w * out_scale
        layers.append((w, jnp.zeros((fout,), dtype)))
    return layers


def mlp_apply(layers: list[tuple[Array, Array]], x: Array) -> Array:
    """``tanh`` MLP, linear output layer."""
    for w, b in layers[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


# ------------------------------------------------------------- small joint (tabulated) games


def all_profiles(n_agents: int, n_actions: int) -> Array:
    """Every joint action, ``int32[A^n, n]``; profile index ``sum_j a_j A^j`` (agent 0 fastest)."""
    idx = jnp.arange(n_actions**n_agents)
    powers = n_actions ** jnp.arange(n_agents)
    return ((idx[:, None] // powers[None, :]) % n_actions).astype(jnp.int32)


def table_counterfactual(table: Array, joint: Array, n_actions: int) -> Array:
    """``u_cf[i, a] = table[idx(a, a_{-i}), i]`` with ``idx = sum_j a_j A^j``: a gather, O(n A)."""
    n_agents = joint.shape[0]
    powers = n_actions ** jnp.arange(n_agents)
    base = jnp.sum(joint * powers)
    idx = base + (jnp.arange(n_actions)[None, :] - joint[:, None]) * powers[:, None]  # [n, A]
    return table[idx, jnp.arange(n_agents)[:, None]]


MAX_TABLE = 200_000


def joint_mlp_mechanism(
    n_agents: int, n_actions: int, hidden: int = 128, depth: int = 2, out_scale: float = 1.0,
    name: str = "neural",
) -> Mechanism:
    """Unstructured neural mechanism: ``u(a) = MLP(onehot(a_1) ++ ... ++ onehot(a_n)) in R^n``.

    ``prepare`` tabulates it on all ``A^n`` profiles (at most ``MAX_TABLE``), so a step of
    the learning dynamics is a gather however large the network.
    """
    if n_actions**n_agents > MAX_TABLE:
        raise ValueError(f"joint mechanism needs A^n <= {MAX_TABLE}; use an anonymous model")
    sizes = [n_agents * n_actions] + [hidden] * depth + [n_agents]

    def prepare(params: Params) -> Array:
        onehot = jax.nn.one_hot(all_profiles(n_agents, n_actions), n_actions, dtype=params[0][0].dtype)
        return mlp_apply(params, onehot.reshape(onehot.shape[0], -1))

    return Mechanism(name, n_agents, n_actions, lambda key: mlp_init(key, sizes, out_scale), prepare,
                     lambda t, j: table_counterfactual(t, j, n_actions))


def tabular_mechanism(n_agents: int, n_actions: int) -> Mechanism:
    """Tabular mechanism: a free payoff ``table[profile, i]`` (zeros at init) -- tabular MLE."""
    if n_actions**n_agents > MAX_TABLE:
        raise ValueError(f"tabular mechanism needs A^n <= {MAX_TABLE}")
    return Mechanism("tabular", n_agents, n_actions,
                     lambda key: jnp.zeros((n_actions**n_agents, n_agents)), lambda p: p,
                     lambda t, j: table_counterfactual(t, j, n_actions))


# ------------------------------------------------------------------------ structured families


class CongestionParams(NamedTuple):
    """Per-resource linear cost ``c1``, quadratic cost ``c2`` and toll ``tau`` (``[A]`` each)."""

    c1: Array
    c2: Array
    tau: Array


def congestion_mechanism(n_agents: int, n_actions: int) -> Mechanism:
    """Congestion with tolls: ``u_i = -(c1[a_i] L + c2[a_i] L^2) + tau[a_i] L``, ``L = #{j: a_j = a_i}``.

    Counterfactual load of action ``a`` for agent ``i``: ``m_a - [a_i = a] + 1``.
    """

    def init(key: Array) -> CongestionParams:
        z = jnp.zeros((n_actions,))
        return CongestionParams(z + 0.1, z + 0.1, z)

    def counterfactual(p: CongestionParams, joint: Array) -> Array:
        counts = jnp.zeros((n_actions,), p.c1.dtype).at[joint].add(1.0)
        load = counts[None, :] - jax.nn.one_hot(joint, n_actions, dtype=counts.dtype) + 1.0
        return -(p.c1 * load + p.c2 * load * load) + p.tau * load

    return Mechanism("congestion", n_agents, n_actions, init, lambda p: p, counterfactual)


class PublicGoodsParams(NamedTuple):
    """Benefit scale ``s``, rate ``k``, cost ``c`` and the subsidy MLP ``(T / n, l) -> R``."""

    s: Array
    k: Array
    c: Array
    subsidy: list


def public_goods_mechanism(n_agents: int, n_actions: int, hidden: int = 16, subsidy_scale: float = 0.3) -> Mechanism:
    """Public goods with subsidies: ``u_i = s (1 - exp(-k T)) - c l_i^2 + sub(T / n, l_i)``.

    Levels ``l = linspace(0, 1, A)``; counterfactual total ``T - l_{a_i} + l_a``.
    """
    levels = jnp.linspace(0.0, 1.0, n_actions)

    def init(key: Array) -> PublicGoodsParams:
        one = jnp.ones(())
        return PublicGoodsParams(one, one, 0.5 * one, mlp_init(key, [2, hidden, hidden, 1], subsidy_scale))

    def counterfactual(p: PublicGoodsParams, joint: Array) -> Array:
        lv = levels.astype(p.s.dtype)
        total = jnp.sum(lv[joint])
        t_cf = total - lv[joint][:, None] + lv[None, :]  # [n, A]
        l_cf = jnp.broadcast_to(lv[None, :], t_cf.shape)
        sub = mlp_apply(p.subsidy, jnp.stack([t_cf / n_agents, l_cf], axis=-1))[..., 0]
        return p.s * (1.0 - jnp.exp(-p.k * t_cf)) - p.c * l_cf * l_cf + sub

    return Mechanism("public_goods", n_agents, n_actions, init, lambda p: p, counterfactual)


# ------------------------------------------------------------------------ anonymous games


def others_fractions(joint: Array, n_actions: int, dtype=jnp.float64) -> Array:
    """``F[b] = (m - e_b) / (n - 1)``: the others' action fractions seen by an agent playing ``b``."""
    n = joint.shape[0]
    counts = jnp.sum(jax.nn.one_hot(joint, n_actions, dtype=dtype), axis=0)
    return (counts[None, :] - jnp.eye(n_actions, dtype=dtype)) / max(n - 1, 1)


def anonymous_mechanism(
    n_agents: int, n_actions: int, g: Callable[[Params, Array], Array], init: Callable[[Array], Params],
    name: str,
) -> Mechanism:
    """Symmetric count-based mechanism ``u_i(a) = g(f_{-i})[a]`` with ``g: [A] -> [A]``.

    ``u_cf[i] = U[a_i]`` with ``U[b] = g(F[b])`` (``others_fractions``): ``A`` evaluations
    of ``g`` per step, whatever ``n``.
    """

    def table(p: Params, joint: Array) -> Array:
        dtype = jax.tree_util.tree_leaves(p)[0].dtype
        return jax.vmap(lambda f: g(p, f))(others_fractions(joint, n_actions, dtype))  # [A(b), A(a)]

    return Mechanism(name, n_agents, n_actions, init, lambda p: p, lambda p, joint: table(p, joint)[joint],
                     lambda p, joint, agents: table(p, joint)[joint[agents]])


def anonymous_mlp_mechanism(n_agents: int, n_actions: int, hidden: int = 64, depth: int = 2) -> Mechanism:
    """Neural anonymous mechanism: ``g(f) = MLP(f)``, ``[A] -> [A]`` (DIML's candidate in E7)."""
    sizes = [n_actions] + [hidden] * depth + [n_actions]
    return anonymous_mechanism(n_agents, n_actions, mlp_apply, lambda key: mlp_init(key, sizes, 0.1),
                               "anonymous")


class AnonymousLinearParams(NamedTuple):
    """``g(f)_a = theta_a - gamma_a f_a + (W f)_a``."""

    theta: Array
    gamma: Array
    w: Array


def anonymous_linear_mechanism(n_agents: int, n_actions: int) -> Mechanism:
    """Structured anonymous mechanism ``g(f)_a = theta_a - gamma_a f_a + (W f)_a`` (E7 truth)."""

    def g(p: AnonymousLinearParams, f: Array) -> Array:
        return p.theta - p.gamma * f + p.w @ f

    def init(key: Array) -> AnonymousLinearParams:
        z = jnp.zeros((n_actions,))
        return AnonymousLinearParams(z, z, jnp.zeros((n_actions, n_actions)))

    return anonymous_mechanism(n_agents, n_actions, g, init, "anonymous_linear")


class CountEmbeddingParams(NamedTuple):
    """``g(a, f) = MLP([emb[a], f])``: action embedding ``[A, d]`` and a ReLU MLP ``d + A -> 1``."""

    emb: Array
    layers: list


def torch_default_init(key: Array, sizes: list[int], dtype=jnp.float64) -> list[tuple[Array, Array]]:
    """``torch.nn.Linear``'s default initialisation: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    layers = []
    for k, fin, fout in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        kw, kb = jax.random.split(k)
        bound = 1.0 / jnp.sqrt(fin)
        layers.append((jax.random.uniform(kw, (fin, fout), dtype, -bound, bound),
                       jax.random.uniform(kb, (fout,), dtype, -bound, bound)))
    return layers


def relu_mlp_apply(layers: list[tuple[Array, Array]], x: Array) -> Array:
    """``relu`` MLP, linear output layer."""
    for w, b in layers[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def anonymous_embedding_mechanism(n_agents: int, n_actions: int, hidden: int = 256, depth: int = 2,
                                  embed: int | None = None) -> Mechanism:
    """The released script's E7 family (``SymmetricCountMechanism``), truth and candidate there:
    ``u_i(a) = MLP([emb[a_i], f_{-i}])`` with ``f_{-i}`` the others' action fractions, an
    embedding of size ``min(32, max(12, A))`` (``N(0, 1)``, as ``torch.nn.Embedding``) and a
    ReLU MLP with ``torch.nn.Linear``'s default initialisation (``torch_default_init``).
    """
    d = embed if embed is not None else min(32, max(12, n_actions))
    sizes = [d + n_actions] + [hidden] * depth + [1]

    def init(key: Array) -> CountEmbeddingParams:
        k1, k2 = jax.random.split(key)
        return CountEmbeddingParams(jax.random.normal(k1, (n_actions, d)), torch_default_init(k2, sizes))

    def g(p: CountEmbeddingParams, f: Array) -> Array:
        x = jnp.concatenate([p.emb, jnp.broadcast_to(f.astype(p.emb.dtype), (n_actions, n_actions))], axis=-1)
        return relu_mlp_apply(p.layers, x)[:, 0]

    return anonymous_mechanism(n_agents, n_actions, g, init, "anonymous_embedding")


# ------------------------------------------------------------------------ environments


class Environment(NamedTuple):
    """A benchmark environment: the true mechanism, its parameters and the structured family."""

    name: str
    mechanism: Mechanism
    params: Params
    structured: str | None  # name of the correctly specified structured model, if any


E1_SCALE = 0.18
E7_SCALE = 0.175


def e1_neural(key: Array, n_agents: int = 3, n_actions: int = 6, scale: float = E1_SCALE) -> Environment:
    """E1: payoffs from a random MLP (hidden 128, depth 2) of the joint action, its output
    layer scaled so that the payoffs have standard deviation ``scale`` over all profiles.

    ``scale`` (default ``E1_SCALE = 0.18``) was chosen so that the true model's held-out
    NLL per agent-step matches the paper's E1 figure (1.765): under the benchmark's protocol
    (``benchmarks/bench_diml.py``: key 0, logit-Q 0.25 / 3 / 0.06, 60 + 20 episodes x 60
    steps from ``PRNGKey(1)``) a scan over ``scale`` gives 1.764 at 0.19, 1.766 at 0.18 and
    1.769 at 0.17 (1.389 at unit scale; ln 6 = 1.792 for uniform play); on four other
    20-episode samples it is 1.767-1.775 at 0.18. Calibrated for 3 agents x 6 actions only.
    """
    mech = joint_mlp_mechanism(n_agents, n_actions, 128, 2)
    params = mech.init(key)
    w, b = params[-1]
    factor = scale / jnp.std(mech.prepare(params))
    return Environment("E1 neural", mech, params[:-1] + [(w * factor, b * factor)], None)


def e2_congestion(key: Array, n_agents: int = 4, n_actions: int = 5) -> Environment:
    """E2: congestion with tolls, ``c1 ~ U(0.1, 0.5)``, ``c2 ~ U(0.05, 0.2)``, ``tau ~ U(0, 0.5)``."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = CongestionParams(jax.random.uniform(k1, (n_actions,), minval=0.1, maxval=0.5),
                              jax.random.uniform(k2, (n_actions,), minval=0.05, maxval=0.2),
                              jax.random.uniform(k3, (n_actions,), minval=0.0, maxval=0.5))
    return Environment("E2 congestion", congestion_mechanism(n_agents, n_actions), params, "congestion")


def e3_public_goods(key: Array, n_agents: int = 3, n_actions: int = 7) -> Environment:
    """E3: public goods, ``s = 1.5``, ``k = 0.8``, ``c = 0.6``, random subsidy MLP (scale 0.3)."""
    mech = public_goods_mechanism(n_agents, n_actions)
    p = mech.init(key)
    params = PublicGoodsParams(jnp.asarray(1.5), jnp.asarray(0.8), jnp.asarray(0.6), p.subsidy)
    return Environment("E3 public goods", mech, params, "public_goods")


def e7_anonymous(key: Array, n_agents: int = 40, n_actions: int = 10, scale: float = E7_SCALE) -> Environment:
    """E7: large anonymous game, ``scale x (theta, gamma, W)`` with ``theta ~ N(0, 0.5^2)``,
    ``gamma ~ U(1, 3)``, ``W ~ N(0, 1/A)`` (payoffs are linear in the three, so ``scale``
    multiplies every payoff).

    ``scale`` (default ``E7_SCALE = 0.175``) was chosen so that the true model's held-out
    NLL per agent-step matches the paper's E7 figures: under the benchmark's protocol
    (``benchmarks/bench_diml.py``: key 0, logit-Q 0.25 / 3 / 0.06, 60 + 20 episodes x 60
    steps from ``PRNGKey(1)``) bisection gives 0.167 for 40 x 10 (paper 2.269) and 0.182 for
    120 x 25 (paper 3.189); at the common 0.175 the true NLL is 2.266 and 3.191 (1.811 and
    2.694 at ``scale = 1``). Other sizes are not calibrated (no paper figure was checked).
    """
    k1, k2, k3 = jax.random.split(key, 3)
    params = AnonymousLinearParams(scale * 0.5 * jax.random.normal(k1, (n_actions,)),
                                   scale * jax.random.uniform(k2, (n_actions,), minval=1.0, maxval=3.0),
                                   scale * jax.random.normal(k3, (n_actions, n_actions)) / jnp.sqrt(n_actions))
    return Environment(f"E7 n={n_agents} A={n_actions}", anonymous_linear_mechanism(n_agents, n_actions), params,
                       "anonymous_linear")


def e7_released(key: Array, n_agents: int = 40, n_actions: int = 10) -> Environment:
    """E7 as the released script draws it: the truth is a freshly initialised
    ``anonymous_embedding_mechanism`` (hidden 256, depth 2; no rescaling). The script pairs it
    with logit-Q learners ``alpha = 0.2, beta = 6, eps = 0.02`` and 24 episodes x 30 steps
    (16 x 25 at 300 x 40), first 80% of the episodes for training (``E7_RELEASED_PROTOCOL``).
    """
    mech = anonymous_embedding_mechanism(n_agents, n_actions)
    return Environment(f"E7 released n={n_agents} A={n_actions}", mech, mech.init(key), "anonymous_embedding")


E7_RELEASED_PROTOCOL = {  # the released script's E7 settings: (alpha, beta, eps), episodes, steps, train fraction
    "learner": (0.2, 6.0, 0.02), "episodes": 24, "steps": 30, "train_fraction": 0.8,
    "epochs": 200, "batch_episodes": 8, "learning_rate": 1e-3, "payoff_l2": 1e-4,
}
