"""Ledger benchmark: settled transfers per second on SQLite and PostgreSQL, and audit time.

Run: ``python benchmarks/bench_ledger.py [--quick] [--pg URL]``. Writes rounds of 1,000
agents through ``Ledger.write_round`` (canonical JSON events, hash chain, one transaction
per round: the full write path) and reports transfers per second (targets: >= 100,000/s
on SQLite, >= 30,000/s on PostgreSQL). Then it runs the team market with 1,000 agents for
1,000 rounds (10^6 transfers; ``--quick``: 100 rounds) and times ``mbi audit`` of that run
(target: <= 20 s for 10^6). PostgreSQL: a scratch database is created and dropped through
``--pg`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from mbiagents.verify.audit import audit_run  # noqa: E402
from mbiagents.ledger.schema import open_ledger  # noqa: E402
from mbiagents.ledger.store import EventRow  # noqa: E402
from mbiagents.ledger.payments import payment_transfers  # noqa: E402
from mbiagents.runner import run_scenario  # noqa: E402
from mbiagents.scenario import parse_scenario  # noqa: E402

AGENTS = 1000


def team_scenario(n: int, rounds: int):
    rng = np.random.default_rng(0)
    # tiny steps: gradient play stays far from convergence, so every round is written
    agents = [{"id": f"a{i}", "policy": "truthful", "value": float(v), "curvature": float(c), "step": 1e-5}
              for i, (v, c) in enumerate(zip(rng.uniform(1, 5, n), rng.uniform(0.5, 2, n)))]
    return parse_scenario({"scenario": {"name": "bench", "game": "team", "mechanism": "dpm", "rounds": rounds,
                                      "seed": 0}, "game": {"congestion": 0.5}, "agents": agents}, "bench")


def write_rate(url: str, rounds: int) -> float:
    """Transfers per second through the full write path (events, hash chain, transaction)."""
    ledger = open_ledger(url)
    ids = [f"a{i}" for i in range(AGENTS)]
    run_id = ledger.create_run(name="bench", game="team", mechanism="dpm", seed=0, scenario={}, agent_ids=ids)
    rng = np.random.default_rng(1)
    batches = []
    for r in range(rounds):
        t = rng.uniform(-2, 2, AGENTS)
        events = [EventRow("actions", {"x": rng.uniform(0, 1, AGENTS).tolist()}), EventRow("payments", {"t": t.tolist()})]
        batches.append((events, payment_transfers(ids, t, "clarke")))
    n = 0
    t0 = time.perf_counter()
    for r, (events, transfers) in enumerate(batches):
        n += ledger.write_round(run_id, r, events, transfers).n_transfers
    rate = n / (time.perf_counter() - t0)
    ledger.dispose()
    return rate


def audit_time(url: str, rounds: int) -> tuple[int, float, float, bool]:
    """(transfers, seconds to write the run, seconds to audit it, audit ok)."""
    t0 = time.perf_counter()
    res = run_scenario(team_scenario(AGENTS, rounds), ledger_url=url, rounds=rounds, checkpoint=False)
    t_run = time.perf_counter() - t0
    ledger = open_ledger(url)
    t0 = time.perf_counter()
    report = audit_run(ledger, res.run_id)
    return report.transfers, t_run, time.perf_counter() - t0, report.ok


class ScratchPostgres:
    def __init__(self, admin: str):
        self.admin = create_engine(admin, isolation_level="AUTOCOMMIT")
        self.name = f"mbi_bench_{uuid.uuid4().hex[:8]}"
        self.url = admin.rsplit("/", 1)[0] + f"/{self.name}"

    def __enter__(self) -> str:
        with self.admin.connect() as c:
            c.execute(text(f'create database "{self.name}"'))
        return self.url

    def __exit__(self, *exc) -> None:
        with self.admin.connect() as c:
            c.execute(text(f'drop database if exists "{self.name}" with (force)'))
        self.admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    write_rounds, audit_rounds = (20, 100) if args.quick else (200, 1000)
    console = Console()
    table = Table(title=f"ledger: rounds of {AGENTS} agents, hash chain, one transaction per round")
    for col in ("database", "what", "result", "target"):
        table.add_column(col, justify="right" if col != "what" else "left")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite:///{Path(tmp) / 'bench.db'}"
        table.add_row("SQLite", f"write {write_rounds * AGENTS:,} transfers", f"{write_rate(sqlite, write_rounds):,.0f} /s",
                      ">= 100,000 /s")
        with ScratchPostgres(args.pg) as pg:
            table.add_row("PostgreSQL", f"write {write_rounds * AGENTS:,} transfers", f"{write_rate(pg, write_rounds):,.0f} /s",
                          ">= 30,000 /s")
        for name, url_cm in (("SQLite", None), ("PostgreSQL", ScratchPostgres(args.pg))):
            if url_cm is None:
                n, t_run, t_audit, ok = audit_time(f"sqlite:///{Path(tmp) / 'audit.db'}", audit_rounds)
            else:
                with url_cm as pg:
                    n, t_run, t_audit, ok = audit_time(pg, audit_rounds)
            table.add_row(name, f"mbi audit of {n:,} transfers ({'pass' if ok else 'FAIL'}; run took {t_run:.1f} s)",
                          f"{t_audit:.2f} s", "<= 20 s for 10^6")
    console.print(table)


if __name__ == "__main__":
    main()
