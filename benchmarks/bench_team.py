"""Overhead of the task market per task, against the agents' own time.

A team of ``N`` agents and ``M`` tasks per run (one market round: every task is awarded
and accepted): each agent's ``bid`` takes ``bid_s`` and its ``work`` takes ``work_s``
(asyncio sleeps standing in for model calls, which take seconds). The agents of a step run
concurrently, so the agents' own time on the critical path of a run is ``bid_s + work_s``;
everything else of the wall time is the market's: the LangGraph graph and its checkpoints
(in memory), two VCG solves of the award (``mechanisms.vcg``), two ledger transactions on
an SQLite file (award with the pending escrow, delivery with the resolutions), the
verifier calls. Reported: wall per run, market overhead per run and per task (ms), and
overhead / agents' time (goal <= 5 %). The first run (JAX compilation) is not timed.

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
    ap.add_argument("--work-s", type=float, default=5.0, help="seconds an agent takes to work")
    args = ap.parse_args()
    sizes = [(4, 4), (16, 16)] if args.quick else [(4, 4), (16, 16), (32, 32)]
    repeats = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asyncio.run(measure(n, m, args.bid_s, args.work_s, repeats, Path(tmp))) for n, m in sizes]
    print(f"agents' own time per run: bid {args.bid_s:g} s + work {args.work_s:g} s (concurrent agents)")
    print(f"{'N':>4}{'M':>5}{'wall s':>10}{'overhead ms':>13}{'per task ms':>13}{'overhead/agents':>17}")
    for r in rows:
        print(f"{r['N']:>4}{r['M']:>5}{r['wall_s']:>10.3f}{r['overhead_ms']:>13.1f}{r['per_task_ms']:>13.2f}"
              f"{r['ratio'] * 100:>16.2f}%")


if __name__ == "__main__":
    main()
