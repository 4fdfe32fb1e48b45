"""CLI start: how long ``mbi audit`` of a small run takes in a new process.

Run: ``python benchmarks/bench_cli_start.py [--repeat 3]``. In a scratch folder it runs
``mbi run examples/shared_capacity.toml`` once, then times new processes (wall, median
and best of ``--repeat``):

- importing ``mbiagents.cli`` and ``mbi audit --help`` (what every command pays);
- ``mbi audit`` with JAX's persistent compilation cache off (``MBI_JAX_CACHE=0``: it
  compiles its programs every time), its first run with an empty cache, and a second
  run with the cache the first one left (goal: <= 2 s).

Times are the machine's: read them with the load printed under the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "shared_capacity.toml"
MBI = [sys.executable, "-c", "from mbiagents.cli import main; main()"]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MBI_JAX_CACHE": str(tmp / "run-cache")}
        subprocess.run([*MBI, "run", str(SCENARIO)], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        rows: list[tuple[str, list[float]]] = []
        off = {**env, "MBI_JAX_CACHE": "0"}
        rows.append(("import mbiagents.cli", [timed([sys.executable, "-c", "import mbiagents.cli"], off, tmp)
                                              for _ in range(args.repeat)]))
        rows.append(("mbi audit --help", [timed([*MBI, "audit", "--help"], off, tmp) for _ in range(args.repeat)]))
        rows.append(("mbi audit, no compilation cache", [timed([*MBI, "audit"], off, tmp)
                                                         for _ in range(args.repeat)]))
        first, second = [], []
        for i in range(args.repeat):
            cache = {**env, "MBI_JAX_CACHE": str(tmp / f"cache-{i}")}  # empty: the first audit fills it
            first.append(timed([*MBI, "audit"], cache, tmp))
            second.append(timed([*MBI, "audit"], cache, tmp))
        rows += [("mbi audit, first run (empty cache)", first), ("mbi audit, second run (cache warm)", second)]
    table = Table(title=f"CLI start: a new process each ({SCENARIO.name}, {args.repeat} runs)")
    for col in ("command", "median", "best", "goal"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for name, ts in rows:
        goal = "<= 2 s" if name.startswith("mbi audit, second") else ""
        table.add_row(name, f"{statistics.median(ts):.2f} s", f"{min(ts):.2f} s", goal)
    console = Console()
    console.print(table)
    console.print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
