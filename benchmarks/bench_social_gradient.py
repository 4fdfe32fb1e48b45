"""Social-gradient flow vs hypergradient descent: Pigou, parallel links, quadratic game.

    PYTHONPATH=. /work/venv/bin/python benchmarks/bench_social_gradient.py [--quick]

Each method runs a jitted ``lax.scan`` of ``R`` rounds with observed equilibria; "rounds" is
the first round whose incentive-induced equilibrium is within ``tol`` (sup norm) of the
social optimum (closed form or an independent solve); "time" is rounds x the measured time
per round (compile excluded: one warm-up call first). Steps: each method's best on a small
grid. The social-gradient planner uses only grad S at the observed joint action; the
hypergradient baseline differentiates through the agents' true equilibrium map.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

import mechanisms  # noqa: F401
from mechanisms import social_gradient as sg
from mechanisms.games import routing as rt

GRID = (0.05, 0.1, 0.25, 0.5, 1.0)


def _time_per_round(f, rounds):
    jax.block_until_ready(f())
    t0 = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, (time.perf_counter() - t0) / rounds


def _first_hit(xs, x_opt, tol):
    err = np.max(np.abs(np.asarray(xs) - np.asarray(x_opt)[None, :]), axis=1)
    hit = np.nonzero(err <= tol)[0]
    return (int(hit[0]) if hit.size else None), float(err[-1])


def best_of_grid(make, x_opt, rounds, tol):
    """Run ``make(step)`` over GRID; return (rounds to tol, step, time/round, final error)."""
    best = (None, None, None, np.inf)
    for step in GRID:
        f = jax.jit(lambda: make(step))
        (_, trace), tpr = _time_per_round(f, rounds)
        hit, err = _first_hit(trace.x, x_opt, tol)
        if hit is not None and (best[0] is None or hit < best[0]):
            best = (hit, step, tpr, err)
        elif best[0] is None and err < best[3]:
            best = (None, step, tpr, err)
    return best


def fmt(res, rounds):
    hit, step, tpr, err = res
    if hit is None:
        return f">{rounds}", f"{step:g}", "-", f"{err:.1e}"
    return str(hit), f"{step:g}", f"{hit * tpr * 1e3:.2f} ms", f"{err:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    console = Console(width=150)
    tol, rounds = 1e-6, 400

    # Pigou
    net = rt.pigou()
    eq = lambda p: rt.wardrop_equilibrium(net, p)  # noqa: E731
    cost = lambda x: rt.social_cost(x, net)  # noqa: E731
    fp = lambda x, p: rt.routing_equilibrium_step(x, p, net, 0.5)  # noqa: E731
    st, tr = jax.jit(lambda: sg.social_gradient_flow(jnp.zeros(2), eq, cost, 0.25, 60, rt.project_tangent))()
    toll = float(st.p[0] - st.p[1])
    t_pig = Table(title="Pigou network (demand 1, latencies x and 1)")
    for c in ("quantity", "ours", "paper / theory"):
        t_pig.add_column(c, justify="right")
    t_pig.add_row("toll on variable link after 60 rounds (alpha = 1/4)", f"{toll:.12f}", "1/2 (Pigouvian x l'(x))")
    t_pig.add_row("|toll - 1/2|", f"{abs(toll - 0.5):.1e}", "-")
    t_pig.add_row("social cost: no toll -> final", f"{float(tr.social_cost[0]):.4f} -> {float(tr.social_cost[-1]):.10f}", "1 -> 3/4")
    x_opt = jnp.array([0.5, 0.5])
    r_sg = best_of_grid(lambda a: sg.social_gradient_flow(jnp.zeros(2), eq, cost, a, rounds, rt.project_tangent), x_opt, rounds, tol)
    h0 = jax.jit(lambda: sg.hypergradient_flow(jnp.zeros(2), eq, fp, cost, 0.25, 50))()[0]
    r_hg = best_of_grid(lambda b: sg.hypergradient_flow(jnp.array([0.1, 0.0]), eq, fp, cost, b, rounds), x_opt, rounds, tol)
    t_pig.add_row("social gradient: rounds to |x - x°| <= 1e-6 (best alpha)", f"{fmt(r_sg, rounds)[0]} (alpha {fmt(r_sg, rounds)[1]})", "-")
    t_pig.add_row("hypergradient from zero toll: toll after 50 rounds", f"{float(h0[0] - h0[1]):.6f} (beta 0.25)", "-")
    t_pig.add_row("hypergradient from toll 0.1: rounds (best beta)", f"{fmt(r_hg, rounds)[0]} (beta {fmt(r_hg, rounds)[1]})", "-")
    console.print(t_pig)

    table = Table(title=f"Social gradient vs hypergradient: rounds/time until the equilibrium is within {tol:g} of the optimum")
    for c in ("game", "SG rounds", "SG step", "SG time", "SG final err", "HG rounds", "HG step", "HG time", "HG final err", "needs agents' costs"):
        table.add_column(c, justify="right")
    # three parallel links, polynomial latencies
    net3 = rt.ParallelLinks(jnp.array([0.0, 0.5, 1.0]), jnp.array([1.0, 2.0, 0.5]), jnp.array([1.0, 2.0, 4.0]), jnp.asarray(2.0))
    eq3 = lambda p: rt.wardrop_equilibrium(net3, p, eta=0.1)  # noqa: E731
    cost3 = lambda x: rt.social_cost(x, net3)  # noqa: E731
    fp3 = lambda x, p: rt.routing_equilibrium_step(x, p, net3, 0.1)  # noqa: E731
    x3 = jax.jit(lambda: rt.routing_optimum(net3))()
    r_sg = best_of_grid(lambda a: sg.social_gradient_flow(jnp.zeros(3), eq3, cost3, a, rounds, rt.project_tangent), x3, rounds, tol)
    r_hg = best_of_grid(lambda b: sg.hypergradient_flow(jnp.zeros(3), eq3, fp3, cost3, b, rounds), x3, rounds, tol)
    table.add_row("3 parallel links", *fmt(r_sg, rounds), *fmt(r_hg, rounds), "SG no / HG yes")
    ns = (10, 100) if args.quick else (10, 100, 1000)
    for n in ns:
        rng = np.random.default_rng(n)
        game = rt.QuadraticGame(jnp.asarray(rng.uniform(0.5, 2.0, n)), jnp.asarray(rng.uniform(1.0, 3.0, n)), jnp.asarray(0.3), jnp.asarray(1.0))
        eqq = lambda p, game=game: rt.quadratic_equilibrium(game, p)  # noqa: E731
        cq = lambda x, game=game: rt.quadratic_social_cost(x, game)  # noqa: E731
        fpq = lambda x, p, game=game: x - 0.1 * (rt.quadratic_pseudo_gradient(x, game) + p)  # noqa: E731
        xo = rt.quadratic_optimum(game)
        r_sg = best_of_grid(lambda a: sg.social_gradient_flow(jnp.zeros(n), eqq, cq, a, rounds), xo, rounds, tol)
        r_hg = best_of_grid(lambda b: sg.hypergradient_flow(jnp.zeros(n), eqq, fpq, cq, b, rounds), xo, rounds, tol)
        table.add_row(f"quadratic N={n}", *fmt(r_sg, rounds), *fmt(r_hg, rounds), "SG no / HG yes")
    console.print(table)
    console.print(f"step grid {GRID}; {rounds} rounds max; compile excluded; device {jax.devices()[0].platform}. "
                  "The paper reports no timings; its claims are qualitative (descent, convergence to the optimal incentive).")


if __name__ == "__main__":
    main()
