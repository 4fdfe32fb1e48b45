"""Spine benchmark: DPM step and full rounds against N, DPM vs a NumPy gradient, and the
rounds the DPM's step rules need to converge against N.

Run: ``python benchmarks/bench_spine.py [--quick] [--only convergence]``. Prints one table
per part, the fitted log-log slopes (target <= 1.1: linear), the jitted-DPM / NumPy time
ratio (target <= 1.0 for N >= 1e5) and the rounds to a 1e-8 residual of the ``clearing``,
``newton`` and ``fixed`` step rules for N = 10^2 ... 10^6 (goal: flat in N), on the
mechanism-level loop (``mechanisms.dpm.dpm_solve``, no ledger), with ``clearing``'s inner
iterations and the cost of a round and of the whole solve against ``newton``. JIT compile time is excluded (one warm-up call
per size). ``--million`` runs only the team game with N = 10^6 policy agents end to end
(per-round wall time, peak RSS; ``bench_million``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._util import best_time, loglog_slope  # noqa: E402
from mechanisms import dpm  # noqa: E402
from mechanisms.games import team  # noqa: E402
from mechanisms.learning import projected_gradient_norm, projected_gradient_play  # noqa: E402

KAPPA = 0.5


def random_types(n: int, seed: int = 0) -> team.TeamTypes:
    rng = np.random.default_rng(seed)
    return team.TeamTypes(jnp.asarray(rng.uniform(1.0, 5.0, n)), jnp.asarray(rng.uniform(0.5, 2.0, n)))


@jax.jit
def dpm_round(x, types, steps):
    """One DPM step: signals from one jax.grad, projected gradient play, residual."""
    g = dpm.team_signals(x, types, KAPPA)
    x_next = projected_gradient_play(x, g, steps)
    return x_next, projected_gradient_norm(x, g)


def numpy_round(x, a, b, steps):
    """The same step with the closed-form gradient in NumPy (temporaries and all)."""
    g = a - b * x - KAPPA * x.sum()
    x_next = np.maximum(0.0, x + steps * g)
    blocked = (x <= 0.0) & (g < 0.0)
    return x_next, np.max(np.where(blocked, 0.0, np.abs(g)))


def bench_step(sizes) -> tuple[Table, float, dict[int, float]]:
    table = Table(title="DPM step (signals + gradient play + residual), best of 7")
    for c in ("N", "jitted DPM (ms)", "NumPy closed form (ms)", "DPM / NumPy"):
        table.add_column(c, justify="right")
    times, ratios = [], {}
    for n in sizes:
        types = random_types(n)
        steps = dpm.default_steps(types, KAPPA)
        x = jnp.zeros(n)
        jax.block_until_ready(dpm_round(x, types, steps))
        x = dpm_round(x, types, steps)[0]
        t_jax = best_time(lambda: jax.block_until_ready(dpm_round(x, types, steps)), repeat=7, number=5)
        a, b, s, xn = (np.asarray(v) for v in (types.a, types.b, steps, x))
        t_np = best_time(lambda: numpy_round(xn, a, b, s), repeat=7, number=5)
        times.append(t_jax)
        ratios[n] = t_jax / t_np
        table.add_row(f"{n:,}", f"{t_jax * 1e3:.3f}", f"{t_np * 1e3:.3f}", f"{t_jax / t_np:.2f}")
    return table, loglog_slope(sizes, times), ratios


def bench_rounds(sizes, rounds: int) -> tuple[Table, float]:
    from mbiagents.runner import run_scenario
    from mbiagents.scenario import parse_scenario

    table = Table(title=f"Full rounds: graph + Clarke payments + ledger (SQLite, one transfer per agent), {rounds} rounds")
    for c in ("N", "s / round", "transfers / s"):
        table.add_column(c, justify="right")
    times = []
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            agents = [{"id": f"a{i}", "value": float(v), "curvature": float(c)}
                      for i, (v, c) in enumerate(zip(rng.uniform(1, 5, n), rng.uniform(0.5, 2, n)))]
            sc = parse_scenario({"scenario": {"name": f"bench-{n}", "game": "team", "mechanism": "dpm",
                                              "rounds": rounds, "tolerance": 1e-300},
                                 # fixed steps keep every agent moving and paying each round (under
                                 # the default clearing rule idle agents stop at once, pay nothing)
                                 "game": {"congestion": KAPPA, "step": "fixed"}, "agents": agents})
            url = f"sqlite:///{os.path.join(tmp, f'b{n}.db')}"
            run_scenario(sc, ledger_url=url, rounds=1)  # warm-up: JIT for this N
            marks = []

            def on_round(i, m, marks=marks):
                marks.append(__import__("time").perf_counter())

            run_scenario(sc, ledger_url=url, rounds=rounds, on_round=on_round)
            per_round = (marks[-1] - marks[0]) / (len(marks) - 1)
            times.append(per_round)
            table.add_row(f"{n:,}", f"{per_round:.4f}", f"{n / per_round:,.0f}")
    return table, loglog_slope(sizes, times)


MILLION_SCRIPT = r"""
import json, resource, shutil, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
n, rounds, k, profile = (int(a) for a in sys.argv[2:6])
tmp = tempfile.mkdtemp()
ledger_url = sys.argv[6] or f"sqlite:///{tmp}/million.db"
out = {}
t0 = time.perf_counter()
import numpy as np
from mbiagents.runner import run_scenario
from mbiagents.scenario import parse_scenario
out["import_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
# a generated population: the header stores this table, not n agents
sc = parse_scenario({"scenario": {"name": "million", "game": "team", "mechanism": "dpm", "rounds": rounds,
                                  "tolerance": 1e-300}, "game": {"congestion": 0.5, "settlement_interval": k},
                     "population": {"size": n, "seed": 1, "value": [1.0, 5.0], "curvature": [0.5, 2.0]}})
out["parse_s"] = time.perf_counter() - t0
from mbiagents.ledger.store import Ledger
create_run = Ledger.create_run
def timed_create_run(self, **kw):  # the run's set-up: header and accounts (timed apart from round 0)
    t, c = time.perf_counter(), time.process_time()
    try:
        return create_run(self, **kw)
    finally:
        out["create_run_s"], out["create_run_cpu_s"] = time.perf_counter() - t, time.process_time() - c
Ledger.create_run = timed_create_run
marks = [time.perf_counter()]
if profile:
    import cProfile, pstats
    prof = cProfile.Profile()
    prof.enable()
cpu = [time.process_time()]
res = run_scenario(sc, ledger_url=ledger_url, rounds=rounds, checkpoint=False,
                   on_round=lambda i, m: (marks.append(time.perf_counter()), cpu.append(time.process_time())))
out["end_s"] = time.perf_counter() - marks[-1]
if profile:
    prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
out["round_s"] = [b - a for a, b in zip(marks, marks[1:])]
out["round_cpu_s"] = [b - a for a, b in zip(cpu, cpu[1:])]
out["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
run_id = res.run_id
del res
# the worst settlement: every agent pays (n netted transfers in one round), signed-head Merkle root included
from mbiagents.ledger.payments import minor_transfers
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.signing import RunSigner
from mbiagents.ledger.store import EventRow
ledger = open_ledger(ledger_url)
with ledger.engine.connect() as conn:  # the netted transfers each settlement wrote
    out["transfers"] = dict(conn.exec_driver_sql("SELECT round_index, count(*) FROM transfers WHERE run_id = ? "
                                                 "GROUP BY round_index", (run_id,)).all())
ledger.dispose()
ledger = open_ledger(f"sqlite:///{tmp}/worst.db")  # a ledger of its own: the kept one holds only the run
ledger.signer = RunSigner.from_environment(None)
ids = sc.agent_ids()
worst = ledger.create_run(name="worst", game="team", mechanism="dpm", seed=0, scenario={}, agent_ids=ids)
rng = np.random.default_rng(2)
minor, x = rng.integers(1, 10**6, n), rng.uniform(0, 1, n)
t, c = time.perf_counter(), time.process_time()
ledger.write_round(worst, 0, [EventRow("actions", {"x": x}), EventRow("payments", {"t": minor / 1e6})],
                   minor_transfers(ids, minor, "clarke"))
out["worst_s"], out["worst_cpu_s"] = time.perf_counter() - t, time.process_time() - c
ledger.finish_run(worst, "completed")
ledger.dispose()
out["rss_worst_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
shutil.rmtree(tmp)
print(json.dumps(out))
"""


def bench_million(n: int = 10**6, rounds: int = 4, k: int = 2, profile: bool = False, ledger: str = "") -> Table:
    """A team run of ``n`` policy agents (a generated ``[population]``) end to end
    (mechanism, payments, ledger on SQLite), netted every ``k`` rounds, in a fresh
    process: per-round wall and CPU time and peak RSS (``profile``: cProfile to stderr;
    ``ledger``: write there and keep it, e.g. for ``mbi audit``; default: a temporary file).

    Round 0 also holds the run's set-up (ledger header, accounts, JIT); the other rounds
    are the steady state: rounds ``k-1, 2k-1, ...`` and the last settle (one transfer per
    agent), the others write only the round's array records.
    """
    import json
    import subprocess

    res = subprocess.run([sys.executable, "-c", MILLION_SCRIPT, str(Path(__file__).resolve().parents[1]),
                          str(n), str(rounds), str(k), str(int(profile)), ledger], capture_output=True, text=True)
    if profile or res.returncode:
        sys.stderr.write(res.stderr)
    res.check_returncode()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    table = Table(title=f"Team run end to end, N = {n:,} policy agents, SQLite, settlement every {k} rounds "
                        f"(import {out['import_s']:.1f} s, scenario parse {out['parse_s']:.2f} s, "
                        f"peak RSS {out['rss_gb']:.2f} GiB, {out['rss_worst_gb']:.2f} GiB with the worst settlement)")
    for c in ("round", "what", "wall (s)", "CPU (s)"):
        table.add_column(c, justify="right")
    table.add_row("set-up", f"ledger header + {n + 1:,} accounts", f"{out['create_run_s']:.2f}",
                  f"{out['create_run_cpu_s']:.2f}")
    for i, (t, c) in enumerate(zip(out["round_s"], out["round_cpu_s"])):
        what = "build market + JIT + " if i == 0 else ""
        what += (f"settles ({out['transfers'].get(str(i), 0):,} transfers)" if (i + 1) % k == 0 or i == rounds - 1
                 else "arrays only")
        t0, c0 = (out["create_run_s"], out["create_run_cpu_s"]) if i == 0 else (0, 0)
        table.add_row(str(i), what, f"{t - t0:.2f}", f"{c - c0:.2f}")
    steady, steady_cpu = out["round_s"][1:], out["round_cpu_s"][1:]
    table.add_row("mean 1..", f"{len(steady)} steady rounds", f"{sum(steady) / len(steady):.2f}",
                  f"{sum(steady_cpu) / len(steady_cpu):.2f}")
    table.add_row("end", "finish + summary", f"{out['end_s']:.2f}", "")
    table.add_row("worst", f"one settlement of {n:,} transfers (every agent pays; write_round only)",
                  f"{out['worst_s']:.2f}", f"{out['worst_cpu_s']:.2f}")
    return table


@partial(jax.jit, static_argnames=("kappa", "rule", "max_rounds"))
def solve_rounds(types, kappa: float, rule: str, max_rounds: int):
    """Rounds to a 1e-8 projected residual from ``x = 0`` (capped), and the final residual."""
    steps = dpm.default_steps(types, kappa, rule)
    s = dpm.dpm_solve(types, kappa, steps, jnp.zeros_like(types.a), tol=TOL, max_rounds=max_rounds, rule=rule)
    return s.rounds, s.residual, s.x


@partial(jax.jit, static_argnames=("kappa", "rule"))
def first_round(types, kappa: float, rule: str):
    """The first round from ``x = 0`` (signals, broadcast, agents' move): the costliest one of
    ``clearing``, whose inner Newton iterations start from the farthest price."""
    steps = dpm.default_steps(types, kappa, rule)
    return dpm.dpm_step(dpm.dpm_init(jnp.zeros_like(types.a), types, kappa), types, kappa, steps, rule).x


@partial(jax.jit, static_argnames=("kappa",))
def inner_iterations(types, kappa: float):
    """``clearing``'s inner Newton iterations in its first round (from ``x = 0``)."""
    x = jnp.zeros_like(types.a)
    c = dpm.clearing_price(x, dpm.team_signals(x, types, kappa), types, kappa)
    return c.iterations, c.sorted


TOL = 1e-8
RULES = ("clearing", "newton", "fixed")


def bench_convergence(sizes, fixed_cap: int) -> tuple[Table, Table]:
    """Rounds to a 1e-8 residual against N, for every step rule, at fixed ``kappa = 0.5``
    (the issue's setting: the optimal active set shrinks like N^{-1/2}) and at congestion
    per capita ``kappa = 50 / N`` (the shares of active agents stay fixed); and what a round
    costs: ``clearing``'s inner iterations, one round and the whole solve of ``clearing``
    against ``newton``, and the O(N log N) closed form (``clearing``'s fallback)."""
    rounds = Table(title=f"DPM rounds to a {TOL:g} residual from x = 0 (mechanism loop, no ledger)")
    for c in ("N", *(f"{r} κ=.5" for r in RULES), *(f"{r} κ=50/N" for r in RULES), "|x-x*| max"):
        rounds.add_column(c, justify="right")
    cost = Table(title="Cost of a round, κ = 0.5 (best of 3; first round from x = 0)")
    for c in ("N", "inner iter κ=.5", "inner iter κ=50/N", "newton ms/round", "clearing ms/round",
              "clearing / newton", "newton ms to tol", "clearing ms to tol", "sort p* ms"):
        cost.add_column(c, justify="right")
    for n in sizes:
        types = random_types(n)
        row, err, iters = [f"{n:,}"], 0.0, []
        for kappa in (KAPPA, 50.0 / n):
            for rule in RULES:
                cap = 1000 if rule != "fixed" else fixed_cap
                r, residual, x = jax.block_until_ready(solve_rounds(types, kappa, rule, cap))
                if int(r) >= cap and float(residual) > TOL:
                    row.append(f">{cap} ({float(residual):.0e})")
                else:
                    row.append(f"{int(r):,}")
                if rule != "fixed":
                    err = max(err, float(jnp.max(jnp.abs(x - team.optimal_usage(types, kappa)))))
            k, sorted_ = jax.block_until_ready(inner_iterations(types, kappa))
            iters.append(f"{int(k)}" + (" + sort" if bool(sorted_) else ""))
        rounds.add_row(*row, f"{err:.1e}")
        timed = {}
        for rule in ("newton", "clearing"):
            jax.block_until_ready(first_round(types, KAPPA, rule))
            timed[rule, "round"] = best_time(lambda: jax.block_until_ready(first_round(types, KAPPA, rule)), repeat=3)
            timed[rule, "solve"] = best_time(lambda: jax.block_until_ready(solve_rounds(types, KAPPA, rule, 1000)),
                                             repeat=3)
        sort_p = jax.jit(lambda t: KAPPA * team.optimal_aggregate(t, KAPPA))
        jax.block_until_ready(sort_p(types))
        t_sort = best_time(lambda: jax.block_until_ready(sort_p(types)), repeat=3)
        ms = {key: v * 1e3 for key, v in timed.items()}
        cost.add_row(f"{n:,}", *iters, f"{ms['newton', 'round']:.2f}", f"{ms['clearing', 'round']:.2f}",
                     f"{ms['clearing', 'round'] / ms['newton', 'round']:.1f}", f"{ms['newton', 'solve']:.2f}",
                     f"{ms['clearing', 'solve']:.2f}", f"{t_sort * 1e3:.2f}")
    return rounds, cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", choices=["convergence"], help="run only this part")
    ap.add_argument("--million", action="store_true", help="only the N = 10^6 end-to-end team run")
    ap.add_argument("--n", type=int, default=10**6, help="agents of the --million run")
    ap.add_argument("--profile", action="store_true", help="--million: cProfile the run (to stderr)")
    ap.add_argument("--ledger", default="", help="--million: ledger URL to write and keep (default: a temporary file)")
    args = ap.parse_args()
    console = Console()
    if args.million:
        console.print(bench_million(args.n, profile=args.profile, ledger=args.ledger))
        return
    conv_sizes = [10**2, 10**3, 10**4] if args.quick else [10**2, 10**3, 10**4, 10**5, 10**6]
    for table in bench_convergence(conv_sizes, fixed_cap=2000 if args.quick else 5000):
        Console(width=170).print(table)  # wide enough for every column when piped
    if args.only == "convergence":
        return
    step_sizes = [10**3, 10**4, 10**5] if args.quick else [10**3, 10**4, 10**5, 10**6]
    round_sizes = [10**2, 10**3, 10**4] if args.quick else [10**2, 10**3, 10**4, 10**5]
    t1, slope_step, ratios = bench_step(step_sizes)
    console.print(t1)
    t2, slope_round = bench_rounds(round_sizes, rounds=4 if args.quick else 6)
    console.print(t2)
    big = [n for n in ratios if n >= 10**5]
    console.print(f"log-log slope, DPM step: {slope_step:.3f} (target <= 1.1)")
    console.print(f"log-log slope, full round: {slope_round:.3f} (target <= 1.1)")
    console.print("DPM / NumPy at N >= 1e5: " + ", ".join(f"N={n:,}: {ratios[n]:.2f}" for n in big)
                  + " (target <= 1.0)")


if __name__ == "__main__":
    main()
