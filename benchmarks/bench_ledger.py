"""Ledger benchmark: the write path against the driver, the audit against a read, disk per agent-round.

Run: ``python benchmarks/bench_ledger.py [--quick] [--pg URL]``. Every ratio is measured
in the same run, side by side:

- **write path**: rounds of 1,000 agents through ``Ledger.write_round`` (array records for
  the actions and payments, one transfer per agent, hash chain, account check, one
  transaction per round) against the *same rows*, pre-encoded, inserted through the
  driver in one transaction per round (``executemany`` on SQLite, ``COPY`` on
  PostgreSQL), the two interleaved round by round (goal: write path <= 1.3x the driver);
- **audit**: ``mbi audit`` of a team-market run of 1,000 agents (10^6 transfers; ``--quick``:
  10^5) against reading the run's rows through the driver, ``--repeat`` pairs back to back
  (medians, and the range of the pairs' ratios; goal: <= 2x), and the audit's
  peak traced memory for that run and for one a quarter as long (goal: independent of
  the number of rounds);
- **disk**: bytes per agent-round of a policy population (team market, 1,000 agents),
  marginal over rounds (the size difference of two run lengths), every round settled
  and netted over ``settlement_interval = 10`` (goal: <= 64 bytes).

PostgreSQL: a scratch database is created and dropped through ``--pg`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
from contextlib import nullcontext
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from mbiagents.ledger.payments import payment_transfers  # noqa: E402
from mbiagents.ledger.schema import open_ledger  # noqa: E402
from mbiagents.ledger.store import (ARRAY_COLUMNS, EVENT_COLUMNS, ROUND_COLUMNS, RUN_ROWS_SQL, TRANSFER_COLUMNS,  # noqa: E402
                                    EventRow, bulk_insert, driver_rows)
from mbiagents.runner import run_scenario  # noqa: E402
from mbiagents.scenario import parse_scenario  # noqa: E402
from mbiagents.verify.audit import audit_run  # noqa: E402

AGENTS = 1000


def team_scenario(n: int, rounds: int, settlement_interval: int = 1):
    rng = np.random.default_rng(0)
    # tiny steps under the newton rule: play stays far from convergence and about half the
    # agents pay every round (under the default clearing rule the idle agents reach zero at
    # once and pay nothing, a lighter ledger than this benchmark is meant to measure)
    agents = [{"id": f"a{i}", "policy": "truthful", "value": float(v), "curvature": float(c), "step": 1e-5}
              for i, (v, c) in enumerate(zip(rng.uniform(1, 5, n), rng.uniform(0.5, 2, n)))]
    return parse_scenario({"scenario": {"name": "bench", "game": "team", "mechanism": "dpm", "rounds": rounds,
                                        "seed": 0},
                           "game": {"congestion": 0.5, "settlement_interval": settlement_interval,
                                    "step": "newton"},
                           "agents": agents}, "bench")


def write_vs_driver(url: str, rounds: int) -> tuple[float, float]:
    """(seconds through ``write_round``, seconds for the same rows through the driver).

    Interleaved round by round (path and driver, who goes first alternating), so that a
    change of load on a shared machine hits both sides alike; the driver's rows are those the
    path wrote for a source run, read back and pre-encoded before the clock starts.
    """
    ledger = open_ledger(url)
    ids = [f"a{i}" for i in range(AGENTS)]
    new_run = lambda: ledger.create_run(name="bench", game="team", mechanism="dpm", seed=0,  # noqa: E731
                                        scenario={}, agent_ids=ids)
    warm, source, run_id, twin = new_run(), new_run(), new_run(), new_run()
    rng = np.random.default_rng(1)
    batches = []
    for r in range(rounds):
        t = rng.uniform(-2, 2, AGENTS)
        batches.append(([EventRow("actions", {"x": rng.uniform(0, 1, AGENTS)}), EventRow("payments", {"t": t})],
                        payment_transfers(ids, t, "clarke")))
    for r, (events, transfers) in enumerate(batches[:3]):  # warm-up: connections, statements, caches
        ledger.write_round(warm, r, events, transfers)
    for r, (events, transfers) in enumerate(batches):  # the rows the driver side inserts
        ledger.write_round(source, r, events, transfers)
    rows = []
    for rec in ledger.iter_rounds(source):
        rows.append(((twin, rec.index, rec.prev_hash, rec.hash, len(rec.events), len(rec.transfers)),
                     [(twin, rec.index, *e) for e in rec.events], [(twin, rec.index, *a) for a in rec.arrays],
                     [(i.replace(source, twin), twin, rec.index, k, d, c, m) for i, k, d, c, m in rec.transfers]))
    blocks = ["".join(f"{i}\t{ru}\t{ri}\t{k}\t{d}\t{c}\t{m}\n" for i, ru, ri, k, d, c, m in tr) for *_, tr in rows]
    def path(r: int) -> float:
        t0 = time.perf_counter()
        ledger.write_round(run_id, r, *batches[r])
        return time.perf_counter() - t0

    def driver(r: int) -> float:
        (head, ev, arr, tr), block = rows[r], blocks[r]
        t0 = time.perf_counter()
        # a pooled connection per round, as the path takes one: both sides write through the
        # same database connection (two would invalidate each other's page cache every round)
        with ledger.engine.connect() as conn, conn.begin():
            bulk_insert(conn, "rounds", ROUND_COLUMNS, [head])
            bulk_insert(conn, "events", EVENT_COLUMNS, ev)
            bulk_insert(conn, "arrays", ARRAY_COLUMNS, arr)
            if conn.dialect.name == "postgresql":
                with conn.connection.dbapi_connection.cursor() as cur, \
                        cur.copy(f"COPY transfers ({', '.join(TRANSFER_COLUMNS)}) FROM STDIN") as copy:
                    copy.write(block)
            else:
                bulk_insert(conn, "transfers", TRANSFER_COLUMNS, tr)
        return time.perf_counter() - t0

    t_path = t_driver = 0.0
    for r in range(rounds):  # who goes first alternates: neither side always inherits the other's checkpoint
        if r % 2:
            t_driver += driver(r)
            t_path += path(r)
        else:
            t_path += path(r)
            t_driver += driver(r)
    ledger.dispose()
    return t_path, t_driver


def read_rows(url: str, run_id: str) -> float:
    """Seconds to read every row of a run through the driver: the four queries ``iter_rounds``
    streams (rounds, events, arrays, transfers), each row fetched and dropped."""
    ledger = open_ledger(url)
    t0 = time.perf_counter()
    with ledger.engine.connect() as conn:
        for sql in RUN_ROWS_SQL.values():
            for _ in driver_rows(conn, sql, run_id):
                pass
    t = time.perf_counter() - t0
    ledger.dispose()
    return t


def audit_vs_read(url: str, rounds: int, repeat: int = 3) -> dict:
    """The audit of a run against reading its rows, ``repeat`` pairs back to back (read,
    then audit); the medians of each side, and each pair's ratio."""
    res = run_scenario(team_scenario(AGENTS, rounds), ledger_url=url, rounds=rounds, checkpoint=False)
    short = run_scenario(team_scenario(AGENTS, rounds // 4), ledger_url=url, rounds=rounds // 4, checkpoint=False)
    ledger = open_ledger(url)
    audit_run(ledger, short.run_id)  # warm-up: JIT of the recomputation, as in the run before it
    read_rows(url, res.run_id)  # warm-up: the page cache, for both sides
    reads, audits = [], []
    for _ in range(repeat):
        reads.append(read_rows(url, res.run_id))
        t0 = time.perf_counter()
        report = audit_run(ledger, res.run_id)
        audits.append(time.perf_counter() - t0)
    t_read, t_audit = statistics.median(reads), statistics.median(audits)
    pair_ratios = sorted(a / r for a, r in zip(audits, reads))
    peaks = []
    for run_id in (short.run_id, res.run_id):
        tracemalloc.start()
        audit_run(ledger, run_id)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    ledger.dispose()
    return {"transfers": report.transfers, "ok": report.ok, "audit": t_audit, "read": t_read,
            "pairs": pair_ratios, "peak_short": peaks[0], "peak_long": peaks[1], "rounds": rounds}


def sqlite_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def bytes_per_agent_round(tmp: Path, settlement_interval: int, r1: int = 20, r2: int = 60) -> float:
    """Marginal SQLite bytes per agent-round: (size after r2 rounds - after r1) / (N (r2 - r1))."""
    sizes = []
    for r in (r1, r2):
        path = tmp / f"disk-{settlement_interval}-{r}.db"
        res = run_scenario(team_scenario(AGENTS, r, settlement_interval), ledger_url=f"sqlite:///{path}",
                           rounds=r, checkpoint=False)
        assert res.rounds == r
        sizes.append(sqlite_size(path))
    return (sizes[1] - sizes[0]) / (AGENTS * (r2 - r1))


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
    ap.add_argument("--skip-audit", action="store_true", help="write path and disk only")
    ap.add_argument("--only", choices=("write", "audit", "disk"), help="one part of the benchmark")
    ap.add_argument("--repeat", type=int, default=5, help="read/audit pairs per database (default 5)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, not {args.repeat}")
    run = {part: args.only in (None, part) for part in ("write", "audit", "disk")}
    run["audit"] = run["audit"] and not args.skip_audit
    write_rounds, audit_rounds = (20, 100) if args.quick else (200, 1000)
    console = Console()
    table = Table(title=f"ledger: rounds of {AGENTS} agents, measured side by side in one run")
    for col in ("database", "what", "result", "peer in the same run", "ratio", "goal"):
        table.add_column(col, justify="left" if col in ("what", "peer in the same run") else "right")
    n = write_rounds * AGENTS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, url_cm in (("SQLite", None), ("PostgreSQL", ScratchPostgres(args.pg))) if run["write"] else ():
            with (url_cm or nullcontext(f"sqlite:///{tmp / 'write.db'}")) as url:
                t_path, t_drv = write_vs_driver(url, write_rounds)
            table.add_row(name, f"write path, {n:,} transfers", f"{n / t_path:,.0f} /s ({t_path:.2f} s)",
                          f"same rows through the driver: {t_drv:.2f} s", f"{t_path / t_drv:.2f}x", "<= 1.3x")
        if run["audit"]:
            for name, url_cm in (("SQLite", None), ("PostgreSQL", ScratchPostgres(args.pg))):
                with (url_cm or nullcontext(f"sqlite:///{tmp / 'audit.db'}")) as url:
                    a = audit_vs_read(url, audit_rounds, args.repeat)
                table.add_row(name, f"mbi audit, {a['transfers']:,} transfers ({'pass' if a['ok'] else 'FAIL'}), "
                              f"median of {args.repeat}", f"{a['audit']:.2f} s",
                              f"reading the run's rows: {a['read']:.2f} s",
                              f"{a['audit'] / a['read']:.2f}x (pairs {a['pairs'][0]:.2f}-{a['pairs'][-1]:.2f}x)",
                              "<= 2x")
                table.add_row(name, "audit peak traced memory", f"{a['peak_long']:.1f} MiB ({a['rounds']} rounds)",
                              f"{a['peak_short']:.1f} MiB ({a['rounds'] // 4} rounds)",
                              f"{a['peak_long'] / a['peak_short']:.2f}x", "~1x")
        for k in (1, 10) if run["disk"] else ():
            b = bytes_per_agent_round(tmp, k)
            table.add_row("SQLite", f"disk per agent-round, settlement_interval = {k}", f"{b:.1f} B", "", "",
                          "<= 64 B" if k > 1 else "")
    console.print(table)


if __name__ == "__main__":
    main()
