"""Differentiable Price Mechanism (DPM) -- MBI, Grassi 2025 (arXiv 2512.20688).

The mechanism holds a differentiable team loss ``L(x; theta_hat)`` built from the agents'
reports and sends each agent ``G_i = -dL/dx_i`` at the current joint action: all N signals
come from one reverse-mode pass (``jax.grad``), O(N) per round, no per-agent loop.

Payments (team game, ``mechanisms.games.team``): agent ``i`` is charged the Clarke pivot
(VCG) payment at the outcome,

    t_i = W_{-i}(x*_{-i}) - W_{-i}(x),

``W_{-i}`` the welfare of everybody but ``i`` (operator included) valued with the others'
reports, ``x*_{-i}`` their optimum without ``i``. Then ``u_i = v_i(x_i) - t_i =
W(x) - W_{-i}(x*_{-i})``: team welfare minus a term ``i`` cannot affect (Groves), and
``du_i/dx_i = G_i`` under truthful reports.

What is and is not equal (VCG equivalence, derived here; tests in tests/mechanisms):

* Outcome: the DPM fixed point (``G_i = 0`` or ``x_i = 0, G_i <= 0``) is the KKT point of
  ``max W``: the decentralised outcome equals the closed-form optimum, the VCG outcome.
* Marginal incentives: ``dt_i/dx_i = -dW_{-i}/dx_i = kappa X`` = the externality price
  ``p_i = v_i'(x_i) - G_i``, at every ``x``. So the Clarke payment and the gradient price
  give the same incentive at the margin.
* Totals: integrating the price along agent ``i``'s own coordinate with the others held at
  the outcome gives ``E_i = C(X) - C(X - x_i)`` (``marginal_price_payment``), and
  ``t_i = E_i + R_i`` with the pivot term ``R_i = W_{-i}(x*_{-i}) - W_{-i}(0, x_{-i}) >= 0``,
  which does not depend on ``x_i``. Totals are not equal: they differ by exactly ``R_i``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mechanisms.games import team
from mechanisms.learning import free_coordinates, projected_gradient_norm, projected_gradient_play

Array = jax.Array


def price_signals(loss: Callable[..., Array], x: Array, *params) -> Array:
    """DPM signals ``G = -grad_x L(x, *params)``: one backward pass for all agents."""
    return -jax.grad(loss)(x, *params)


def team_signals(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """``G_i = -dL/dx_i = a_i - b_i x_i - kappa X`` of the team game, via ``jax.grad``."""
    return price_signals(team.team_loss, x, reports, kappa)


def externality_prices(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """The part of ``G_i`` that is not ``i``'s own marginal value: ``p_i = v_i'(x_i) - G_i``."""
    own = jax.grad(lambda z: jnp.sum(team.values(z, reports)))(x)
    return own - team_signals(x, reports, kappa)


@jax.jit
def clarke_pivot_payments(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """Clarke pivot payments ``t_i = W_{-i}(x*_{-i}) - W_{-i}(x)`` (what ``i`` pays), all i.

    Non-negative for every ``x >= 0`` (the congestion cost only rises with ``x_i``).
    """
    return team.leave_one_out_welfare(reports, kappa) - team.others_welfare(x, reports, kappa)


def marginal_price_payment(x: Array, kappa: float) -> Array:
    """``E_i = int_0^{x_i} p_i(s, x_{-i}) ds = C(X) - C(X - x_i)``: the gradient price
    accumulated along ``i``'s own coordinate with the others at the outcome."""
    total = jnp.sum(x)
    return team.congestion_cost(total, kappa) - team.congestion_cost(total - x, kappa)


#: step rules of the team game's gradient play: ``clearing`` (default of the team market),
#: ``newton`` and ``fixed``
STEP_RULES = ("clearing", "newton", "fixed")


def default_steps(reports: team.TeamTypes, kappa: float, rule: str = "fixed") -> Array:
    """Per-agent steps of a step rule: ``fixed``: ``eta_i = 1 / (b_i + kappa N)``;
    ``newton`` and ``clearing``: ``eta_i = 1 / b_i``, the agent's own curvature (see
    ``newton_price_move``, ``clearing_price_move``).

    ``fixed`` is a contraction, but a slow one: its factor is ``1 - O(b / (kappa N))``, so the
    rounds to a given residual grow like ``N`` (see ``newton_price_move`` for why every
    step that is diagonal in the agents has this defect).
    """
    if rule in ("newton", "clearing"):
        return 1.0 / reports.b
    if rule == "fixed":
        return 1.0 / (reports.b + kappa * reports.a.shape[0])
    raise ValueError(f"unknown step rule {rule!r} (expected one of {', '.join(STEP_RULES)})")


def newton_price_move(x: Array, signals: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """The ``newton`` rule's public broadcast: the price move ``pi = kappa * dX`` the mechanism
    announces with the signals, ``pi = kappa sum_F G_j / b_j / (1 + kappa sum_F 1 / b_j)``
    over the free agents ``F`` (``x_j > 0`` or ``G_j >= 0``), O(N), reported curvatures.

    Derived for this project (the paper, MBI Grassi 2025, gives the signal ``G_i = -dL/dx_i``
    and no step rule or rate). Agent ``i`` sees ``G_i``, its own curvature ``b_i`` and the
    public ``pi``, and plays

        x_i <- max(0, x_i + (G_i - pi) / b_i),                         (agent side)

    the move that zeroes its next signal ``G_i' = G_i - b_i dx_i - kappa dX`` if the
    aggregate price ``kappa X`` moves by ``pi``. On ``F`` this is exactly the Newton step of
    the team loss: ``H_F = diag(b_F) + kappa 1 1^T`` and, by Sherman-Morrison,
    ``H_F^{-1} G_F = (G_F - pi 1) / b_F``: the rank-one coupling that makes the team loss
    ill-conditioned (``cond H ~ kappa N / b``) is carried by one public scalar.

    Guarantee (truthful curvatures, any ``x^0 >= 0``; with an overstated value ``a_hat`` read
    ``a`` as the reports). The agent rule gives ``x_i^{t+1} = max(0, (a_i - p^t) / b_i)`` with
    ``p^t = kappa X^t + pi^t``, so the joint dynamic is a scalar iteration on the price. Let
    ``h(p) = kappa sum_j max(0, (a_j - p) / b_j) - p`` (convex, strictly decreasing, piecewise
    linear; its root ``p* = kappa X*`` is the optimal price), ``S(p) = sum_{a_j > p} 1 / b_j``,
    ``P(F) = kappa sum_F (a_j / b_j) / (1 + kappa S_F)``, ``e_t = p* - p^t``.

    1. ``p^0 = P(F^0) <= p*`` for every set ``F``: ``P(F) <= p*`` iff
       ``kappa sum_F (a_j - p*) / b_j <= p* = kappa sum_{A*} (a_j - p*) / b_j``.
    2. For ``t >= 1``, ``F^t = {j : a_j > p^{t-1}}`` and ``p^t = p^{t-1} + h(p^{t-1}) / (1 +
       kappa S(p^{t-1}))``: Newton's method on ``h`` from the left, so
       ``p^{t-1} <= p^t <= p*`` (monotone, never overshoots).
    3. Contraction: ``e_{t+1} <= r_t e_t`` with ``r_t = kappa (S(p^t) - S(p*)) / (1 + kappa
       S(p^t)) <= kappa (S_all - S*) / (1 + kappa S_all) < 1``: the share of the price slope
       ``1 + kappa S`` held by agents free now but idle at the optimum. It has no factor
       of ``N``, and ``r_t -> 0`` as the free set shrinks to the optimal active set ``A*``
       (superlinear).
    4. Finite: once ``{a_j > p^t} = A*`` the next price is ``p*`` exactly. If every agent
       is active at the optimum, ``x^1 = x*`` from any start: one round for every ``N``.
    5. The residual at ``x^{t+1}`` is ``h(p^t) <= (1 + kappa S(p^t)) e_t``.
    6. Fixed points, for any agent steps ``eta_i > 0``: ``G_i = pi`` on ``F`` forces
       ``pi = kappa pi S_F / (1 + kappa S_F)``, so ``pi = 0`` and ``G_F = 0``: the KKT point,
       the closed-form optimum. The outcome and the Clarke payments (hence DSIC) are those of
       the ``fixed`` rule.

    Why a public scalar is needed: for ``x <- x + D G`` with any positive diagonal ``D``
    (agents' own steps, nothing aggregate), ``D^{1/2} H D^{1/2}`` has an eigenvalue
    ``>= kappa tr D`` (test vector ``D^{1/2} 1``), so stability needs ``tr D < 2 / kappa``;
    then at least half the agents have ``d_i <= 4 / (kappa N)``, and a vector on two of
    them orthogonal to ``D^{1/2} 1`` has Rayleigh quotient ``<= 4 b_max / (kappa N)``: the
    contraction factor is ``>= 1 - 4 b_max / (kappa N)``, i.e. ``Omega(N)`` rounds.

    Note on scaling: at fixed ``kappa`` the optimal active set itself shrinks with ``N``
    (the congestion price ``kappa X*`` rises towards the largest values), so ``r_t`` stays
    near 1/2 for the first rounds and the count grows like ``log N`` (measured in
    ``benchmarks/bench_spine.py``); with congestion per capita (``kappa = kappa_0 / N``)
    the shares, and the rounds, are flat in ``N``.
    """
    free = free_coordinates(x, signals)
    inv_b = jnp.where(free, 1.0 / reports.b, 0.0)
    return kappa * jnp.sum(signals * inv_b) / (1.0 + kappa * jnp.sum(inv_b))


def newton_price(x: Array, signals: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """The price ``p = kappa X + pi`` that the ``newton`` rule's agents answer: ``P(F)`` of the
    free set (item 1 of ``newton_price_move``); ``x_i <- max(0, (a_i - p) / b_i)``."""
    return kappa * jnp.sum(x) + newton_price_move(x, signals, reports, kappa)


class ClearingPrice(NamedTuple):
    """The ``clearing`` rule's price ``p*`` and how it was found."""

    price: Array
    iterations: Array  # Newton iterations run inside the mechanism (the last one confirms)
    sorted: Array  # True when the iteration hit its cap and the O(N log N) sort gave ``p*``


def newton_iteration_cap(n: int) -> int:
    """Inner Newton iterations the ``clearing`` rule runs before it sorts: ``bit_length(N) + 2``."""
    return int(n).bit_length() + 2


def clearing_price(
    x: Array, signals: Array, reports: team.TeamTypes, kappa: float, max_iterations: int | None = None,
) -> ClearingPrice:
    """The optimal price ``p*`` (root of ``h``, see ``newton_price_move``) on the reports, exact.

    Runs the ``newton`` rule's price iteration inside the mechanism, with the agents' best
    responses simulated on the reports: ``p^0 = newton_price(x, G)`` at the current state,
    then ``p <- newton_price(x(p), G(x(p)))`` with ``x(p) = team.usage_at_price(p)``, i.e.
    ``p <- P({a_j > p})``, until the free set stops changing (``jax.lax.while_loop``).

    Guarantee (items 1-4 of ``newton_price_move``): the prices rise monotonically to ``p*``
    and the free sets ``{a_j > p}`` shrink strictly until they equal the optimal active set
    ``A*``, so the loop ends after at most ``|{a_j > p^0}| - |A*| + 2 <= N + 2`` iterations,
    and when the free set ``F`` repeats the price ``P(F)`` solves ``h`` on its own piece:
    ``p = p*`` exactly (to rounding). Each iteration is O(N) (one fused pass). Past
    ``max_iterations`` (default ``newton_iteration_cap``: ``log2 N + 2``) ``p*`` comes from
    the closed form instead (``team.optimal_aggregate``: one sort and a binary search,
    O(N log N)), so a round costs ``O(N min(k, log N) + N log N [k > log N])`` for ``k``
    Newton iterations: O(N log N) in the worst case. Measured (``benchmarks/bench_spine.py``,
    ``a ~ U[1,5]``, ``b ~ U[0.5,2]``): ``k`` = the ``newton`` rule's round count (5 to 12 for
    ``N = 10^2 ... 10^6`` at ``kappa = 0.5``, 5-6 at ``kappa = 50/N``), far below the cap,
    and from a converged state ``k = 1``.
    """
    cap = newton_iteration_cap(reports.a.shape[0]) if max_iterations is None else max_iterations

    def body(s):
        p, free, _, k = s
        xp = team.usage_at_price(reports, p)
        gp = team_signals(xp, reports, kappa)
        nxt = free_coordinates(xp, gp)
        return newton_price(xp, gp, reports, kappa), nxt, jnp.any(nxt != free), k + 1

    start = (newton_price(x, signals, reports, kappa), free_coordinates(x, signals), jnp.asarray(True), jnp.asarray(0))
    p, _, changing, k = jax.lax.while_loop(lambda s: s[2] & (s[3] < cap), body, start)
    p = jax.lax.cond(changing, lambda: kappa * team.optimal_aggregate(reports, kappa), lambda: p)
    return ClearingPrice(p, k, changing)


def clearing_price_move(x: Array, signals: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """The ``clearing`` rule's broadcast: ``pi = p* - kappa X`` with ``p*`` the exact optimal
    price on the reports (``clearing_price``), so that the ``newton`` rule's agent side

        x_i <- max(0, x_i + (G_i - pi) / b_i) = max(0, (a_i - p*) / b_i) = x*_i

    lands on the reported optimum in one round, from any ``x >= 0`` and for every ``N``:
    ``dpm_solve`` stops after 1 round, ``mbi run`` after 2 (the move and the round whose
    residual at ``x*`` confirms it). The work the ``newton`` rule spreads over rounds is done
    inside the mechanism on the reports (``clearing_price``: O(N) per Newton iteration,
    O(N log N) in the worst case); the agents still see only ``G_i``, ``b_i`` and ``pi``.

    Guarantee (truthful curvatures; with misreports read the reports for the types): the
    only fixed point is the closed-form optimum, for any agent steps ``eta_i > 0`` (at a
    fixed point ``G_i = pi`` on the free set, i.e. ``x_i = (a_i - p*) / b_i``), so the
    outcome, the Clarke payments and DSIC are those of the other rules. Since
    ``kappa X + pi = p*`` does not depend on ``x``, every agent faces the fixed price
    ``p*``: with steps other than ``1 / b_i`` (a scenario's ``step``) agent ``i`` converges
    alone, at rate ``|1 - eta_i b_i|`` (needs ``eta_i b_i < 2``), whatever ``N`` is.
    """
    return clearing_price(x, signals, reports, kappa).price - kappa * jnp.sum(x)


def announced_price_move(x: Array, signals: Array, reports: team.TeamTypes, kappa: float, rule: str) -> Array:
    """What the mechanism broadcasts with the signals: ``clearing_price_move`` under
    ``clearing``, ``newton_price_move`` under ``newton``, nothing (0) under ``fixed``."""
    if rule == "clearing":
        return clearing_price_move(x, signals, reports, kappa)
    if rule == "newton":
        return newton_price_move(x, signals, reports, kappa)
    return jnp.zeros((), signals.dtype)


class DPMState(NamedTuple):
    """State of the DPM price/best-response loop."""

    x: Array
    signals: Array
    rounds: Array
    residual: Array


def dpm_init(x0: Array, reports: team.TeamTypes, kappa: float) -> DPMState:
    g = team_signals(x0, reports, kappa)
    return DPMState(x0, g, jnp.asarray(0), projected_gradient_norm(x0, g))


def dpm_step(state: DPMState, reports: team.TeamTypes, kappa: float, steps: Array, rule: str = "fixed") -> DPMState:
    """One round: the mechanism broadcasts ``pi`` (rule), agents play
    ``x_i <- max(0, x_i + eta_i (G_i - pi))``, the mechanism re-prices."""
    move = announced_price_move(state.x, state.signals, reports, kappa, rule)
    x = projected_gradient_play(state.x, state.signals - move, steps)
    g = team_signals(x, reports, kappa)
    return DPMState(x, g, state.rounds + 1, projected_gradient_norm(x, g))


def dpm_solve(
    reports: team.TeamTypes, kappa: float, steps: Array, x0: Array, tol: float = 1e-10, max_rounds: int = 10_000,
    rule: str = "fixed",
) -> DPMState:
    """Iterate ``dpm_step`` until the projected signal is ``<= tol`` or ``max_rounds``."""

    def cond(s: DPMState) -> Array:
        return (s.residual > tol) & (s.rounds < max_rounds)

    return jax.lax.while_loop(
        cond, lambda s: dpm_step(s, reports, kappa, steps, rule), dpm_init(x0, reports, kappa)
    )


def team_outcome(reports: team.TeamTypes, kappa: float) -> Array:
    """The direct mechanism's outcome: the DPM fixed point, i.e. the closed-form optimum."""
    return team.optimal_usage(reports, kappa)


@jax.jit
def team_utilities(reports: team.TeamTypes, true_types: team.TeamTypes, kappa: float) -> Array:
    """Realised utility ``u_i = v_i(x_i; theta_i) - t_i`` when the DPM runs to its fixed point on
    ``reports`` and charges Clarke payments (for ``properties.dsic_violation``)."""
    x = team_outcome(reports, kappa)
    return team.values(x, true_types) - clarke_pivot_payments(x, reports, kappa)


@jax.jit
def team_dsic_violation(true_types: team.TeamTypes, deviations: team.TeamTypes, kappa: float):
    """``properties.dsic_violation`` of the DPM/Clarke team mechanism (others truthful)."""
    from mechanisms import properties

    return properties.dsic_violation(lambda r, t: team_utilities(r, t, kappa), true_types, deviations)


def capped_clarke_payments(x: Array, reports: team.TeamTypes, kappa: float) -> Array:
    """Clarke payments capped by what each agent's own report justifies (what ``i`` pays):

        t_i = min( W_{-i}(x*_{-i}) - W_{-i}(x),  max(v_i(x_i; theta_hat_i), 0) ).

    Guarantees at every ``x >= 0`` (not only at the optimum): no subsidy (``t_i >= 0``) and
    individual rationality under the reports (``v_i(x_i; theta_hat_i) - t_i >= 0``), so an
    agent that reports truthfully never loses by taking part, whatever the others report;
    in particular an agent using nothing pays nothing. Where the Clarke pivot is already IR,
    e.g. at the reported optimum ``x*(theta_hat)`` (Clarke 1971; Groves 1973), the payments
    are Clarke's. Why the cap is needed: reports and usage are separate steps, so others
    who report a huge value and then use nothing would otherwise make ``W_{-i}(x*_{-i})``
    large and charge the honest agents for an externality that never happens.
    """
    return capped_clarke_given_pivots(x, reports, kappa, team.leave_one_out_welfare(reports, kappa))


def capped_clarke_given_pivots(x: Array, reports: team.TeamTypes, kappa: float, pivots: Array) -> Array:
    """``capped_clarke_payments`` with the pivot welfares ``W_{-i}(x*_{-i})`` given
    (``team.leave_one_out_welfare`` of the reports): they depend on the reports only, so a
    reader of many rounds under the same reports (the audit) computes them once."""
    return jnp.minimum(pivots - team.others_welfare(x, reports, kappa), jnp.maximum(team.values(x, reports), 0.0))
