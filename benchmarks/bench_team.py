"""Overhead of the task market per task, against the agents' own time.

A team of ``N`` agents and ``M`` tasks per run (one market round: every task is awarded
and accepted): each agent's ``bid`` takes ``bid_s`` and its ``work`` takes ``work_s``
(asyncio sleeps standing in for model calls, which take seconds). The agents of a step run
concurrently, so the agents' own time on the critical path of a run is ``bid_s + work_s``;
everything else of the wall time is the market's: the LangGraph graph and its checkpoints
(in memory), two VCG solves of the award (``mechanisms.vcg``), two ledger transactions on
an SQLite file (award with the pending escrow, delivery with the resolutions), the
verifier calls. Reported per size: the market's own time per run (a run with instant
agents: all of its wall time is the market's), per task, and as a share of the agents'
time (goal <= 5 %); and the overhead measured inside a run with the slow agents (wall -
agents' time), which also holds the event loop's scheduling delays on a busy machine.
The first run of each size (JAX compilation) is not timed.

Run: PYTHONPATH=. python benchmarks/bench_team.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import mbiagents as mbi


def make_market(n: int, ledger: str, bid_s: float, work_s: float) -> mbi.TaskMarket:
    def agent(i: int) -> mbi.Agent:
        async def bid(task):
            await asyncio.sleep(bid_s)
            return 1.0 + ((i * 7 + hash(task.id)) % 13) / 10

        async def work(task):
            await asyncio.sleep(work_s)
            return f"agent {i} did {task.id}"

        return mbi.Agent(f"a{i}", bid=bid, work=work)

    return mbi.TaskMarket([agent(i) for i in range(n)], ledger=ledger, max_rounds=1)


async def measure(n: int, m: int, bid_s: float, work_s: float, repeats: int, folder: Path) -> dict:
    market = make_market(n, f"sqlite:///{folder / f'bench-{n}-{m}.db'}", bid_s, work_s)
    tasks = [mbi.Task(id=f"t{j}", description=f"task {j}", value=10.0) for j in range(m)]
    await market.arun(tasks)  # warm-up: JAX compiles the VCG solves for this shape
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = await market.arun(tasks)
        walls.append(time.perf_counter() - t0)
        assert len(res.results) == min(n, m)
    wall = statistics.median(walls)
    agents = bid_s + work_s
    over = wall - agents
    return {"N": n, "M": m, "wall_s": wall, "overhead_ms": over * 1e3, "per_task_ms": over * 1e3 / m,
            "ratio": over / agents if agents else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bid-s", type=float, default=1.0, help="seconds an agent takes to bid")
    ap.add_argument("--work-s", type=float, default=10.0, help="seconds an agent takes to work")
    args = ap.parse_args()
    sizes = [(4, 4), (16, 16)] if args.quick else [(4, 4), (16, 16), (32, 32)]
    agents_s = args.bid_s + args.work_s
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, m in sizes:
            alone = asyncio.run(measure(n, m, 0.0, 0.0, 5, Path(tmp)))  # instant agents: all of it is the market
            live = asyncio.run(measure(n, m, args.bid_s, args.work_s, 1 if args.quick else 2, Path(tmp)))
            rows.append((n, m, alone["wall_s"], live["overhead_ms"] / 1e3))
    print(f"agents' own time per run: bid {args.bid_s:g} s + work {args.work_s:g} s (concurrent agents)")
    print(f"{'N':>4}{'M':>5}{'market s':>10}{'per task ms':>13}{'market/agents':>15}{'in-run overhead s':>19}"
          f"{'in-run/agents':>15}")
    for n, m, alone, live in rows:
        print(f"{n:>4}{m:>5}{alone:>10.3f}{alone * 1e3 / m:>13.1f}{alone / agents_s * 100:>14.2f}%{live:>19.3f}"
              f"{live / agents_s * 100:>14.2f}%")


if __name__ == "__main__":
    main()
