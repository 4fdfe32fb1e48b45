"""VCG payments for the task market: reference (n+1 assignment solves) vs the unit-demand
fast path (one solve + one Bellman-Ford), and AGV payments with Monte Carlo over the prior.

    PYTHONPATH=. python benchmarks/bench_vcg.py [--quick]

Random unit-demand instances: ``c_ij ~ U[0, 1]``, ``V_j ~ U[0.5, 1.5]`` (about a quarter
of the pairs unprofitable), seed fixed. Times exclude compilation (ahead-of-time compiled
first); each time is the best of ``--repeats`` runs (the reference runs once above n=100).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

import mechanisms  # noqa: F401  (x64)
from mechanisms import bayesian, vcg


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best, out


def instance(n: int, m: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.0, 1.0, (n, m))), jnp.asarray(rng.uniform(0.5, 1.5, m))


def bench_vcg(sizes: list[int], repeats: int) -> Table:
    table = Table(title="VCG payments, unit demand, n = m (seconds)")
    for col in ("n", "reference (n+1 solves)", "fast path", "speed-up", "max |p_ref - p_fast|"):
        table.add_column(col, justify="right")
    for n in sizes:
        c, v = instance(n, n, seed=n)
        caps = jnp.ones(n, jnp.int64)
        ref_c = vcg.clarke_pivot_payments.lower(c, v, caps).compile()
        fast_c = vcg.unit_demand_payments.lower(c, v).compile()
        t_fast, fast = _best_time(lambda: fast_c(c, v), repeats)
        t_ref, ref = _best_time(lambda: ref_c(c, v, caps), repeats if n <= 100 else 1)
        diff = float(jnp.max(jnp.abs(ref.received - fast.received)))
        table.add_row(str(n), f"{t_ref:.4f}", f"{t_fast:.5f}", f"{t_ref / t_fast:.0f}x", f"{diff:.1e}")
    return table


def bench_agv(n: int, samples: int) -> Table:
    c, v = instance(n, n, seed=1)
    prior = bayesian.UniformCostPrior(jnp.zeros((n, n)), jnp.ones((n, n)))
    caps = jnp.ones(n, jnp.int64)
    key = jax.random.key(0)
    bayesian.agv_payments(c, v, caps, prior, key, 2)  # compile the JAX parts
    t0 = time.perf_counter()
    t = jax.block_until_ready(bayesian.agv_payments(c, v, caps, prior, key, samples))
    dt = time.perf_counter() - t0
    table = Table(title="AGV payments, task market, one round")
    for col in ("n = m", "prior samples", "assignment solves", "seconds / round", "|sum of payments|"):
        table.add_column(col, justify="right")
    table.add_row(str(n), str(samples), str(n * samples), f"{dt:.2f}", f"{abs(float(jnp.sum(t))):.1e}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (n <= 100, 500 AGV samples)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    sizes = [50, 100] if args.quick else [50, 100, 200, 400]
    console.print(bench_vcg(sizes, args.repeats))
    console.print(bench_agv(50, 500 if args.quick else 10_000))


if __name__ == "__main__":
    main()
