"""DPM vs model-free RL on the team game: rounds and wall-clock time to 99% of optimal welfare.

    PYTHONPATH=. /work/venv/bin/python benchmarks/bench_rl_vs_dpm.py [--quick]

Instance: types a_i ~ U(1, 3), b_i ~ U(0.5, 1.5), congestion kappa = 1/N (per-capita
congestion, so the optimum stays interior as N grows); both methods start at x = 0.
Target: W(x) >= 0.99 W* (W(0) = 0 < W*); for RL, W is evaluated at the policy mean.
DPM: ``dpm.dpm_step`` with ``dpm.default_steps``. RL: independent REINFORCE with Gaussian
policies, per-agent baselines, Adam; (step, sigma) tuned on a separate tuning seed over a
small grid, the best kept, then evaluated on the benchmark seeds. Both loops are jitted
``lax.while_loop``s; JIT compile time is excluded (each function is warmed up once before
timing). Medians over seeds. Runs capped at ``max_rounds`` are reported as ``>``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.console import Console
from rich.table import Table

import mechanisms  # noqa: F401
from mechanisms import dpm, rl
from mechanisms.games import team


def instance(n: int, seed: int):
    rng = np.random.default_rng(seed)
    types = team.TeamTypes(jnp.asarray(rng.uniform(1.0, 3.0, n)), jnp.asarray(rng.uniform(0.5, 1.5, n)))
    return types, 1.0 / n


def _timed(f, *args, reps: int = 3):
    jax.block_until_ready(f(*args))  # warm-up: compile excluded
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(*args))
        best.append(time.perf_counter() - t0)
    return out, float(np.median(best))


@jax.jit
def dpm_until(types, kappa, target):
    steps = dpm.default_steps(types, kappa)

    def cond(s):
        return (team.welfare(s.x, types, kappa) < target) & (s.rounds < 100_000)

    return jax.lax.while_loop(cond, lambda s: dpm.dpm_step(s, types, kappa, steps), dpm.dpm_init(jnp.zeros_like(types.a), types, kappa))


def rl_runner(lr: float, sigma: float, max_rounds: int):
    opt = optax.adam(lr)

    @jax.jit
    def run(types, kappa, target, key):
        s0 = rl.reinforce_init(jnp.zeros_like(types.a), opt, key, types, kappa)
        return rl.reinforce_until(s0, types, kappa, opt, sigma, target, max_rounds)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    ns = (10, 100) if args.quick else (10, 100, 1000)
    seeds = (0, 1) if args.quick else (0, 1, 2)
    max_rounds = 50_000 if args.quick else 300_000
    grid = [(lr, s) for lr in (0.03, 0.1, 0.3, 1.0) for s in (0.1, 0.3)]
    console = Console(width=150)
    table = Table(title="DPM vs model-free RL (independent REINFORCE), rounds/time to W >= 0.99 W*")
    for col in ("N", "RL (lr, sigma)", "RL W/W* at stop", "DPM rounds", "RL rounds", "rounds RL/DPM", "DPM time", "RL time", "time RL/DPM", "paper"):
        table.add_column(col, justify="right")
    for n in ns:
        # tuning on a separate seed (instance and policy noise)
        types_t, kappa = instance(n, 1000)
        target_t = 0.99 * team.optimal_welfare(types_t, kappa)
        scores = []
        for lr, sigma in grid:
            s = rl_runner(lr, sigma, max_rounds)(types_t, kappa, target_t, jax.random.PRNGKey(1000))
            reached = float(s.mean_welfare) >= float(target_t)
            # rank: rounds if the target was reached, else (censored) by the welfare fraction reached
            scores.append((0, int(s.rounds)) if reached else (1, -float(s.mean_welfare / target_t)))
        lr, sigma = grid[min(range(len(grid)), key=lambda i: scores[i])]
        run = rl_runner(lr, sigma, max_rounds)
        d_rounds, d_time, r_rounds, r_time, censored, frac = [], [], [], [], False, []
        for seed in seeds:
            types, kappa = instance(n, seed)
            target = 0.99 * team.optimal_welfare(types, kappa)
            ds, dt = _timed(dpm_until, types, kappa, target)
            rs, rt = _timed(run, types, kappa, target, jax.random.PRNGKey(seed))
            censored |= float(rs.mean_welfare) < float(target)
            frac.append(float(rs.mean_welfare / (target / 0.99)))
            d_rounds.append(int(ds.rounds)); d_time.append(dt); r_rounds.append(int(rs.rounds)); r_time.append(rt)
        dr, rr, dtm, rtm = (float(np.median(v)) for v in (d_rounds, r_rounds, d_time, r_time))
        gt = ">" if censored else ""
        table.add_row(
            str(n), f"{lr:g}, {sigma:g}", f"{np.median(frac):.4f}", f"{dr:.0f}", f"{gt}{rr:.0f}", f"{gt}{rr / dr:.0f}x",
            f"{dtm * 1e3:.2f} ms", f"{rtm * 1e3:.1f} ms", f"{gt}{rtm / dtm:.0f}x", "50x",
        )
    console.print(table)
    console.print(f"seeds {list(seeds)}, medians; compile time excluded (warm-up call before timing); "
                  f"RL capped at {max_rounds} rounds; kappa = 1/N; device {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
