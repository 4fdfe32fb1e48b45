"""The embedded local model (extra ``local``): real llama.cpp server on loopback.

Run: pytest -m llm_local tests/agents -s   (skipped when the extra is not installed)
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from mbiagents.agents import (
    Bounds, LLMSettings, LocalModelServer, Task, TaskAgentInfo, TeamAgentInfo, TeamReport,
    local_backend_available, open_llm, task_bid, team_report,
)

pytestmark = [
    pytest.mark.llm_local,
    pytest.mark.skipif(not local_backend_available(), reason="install the local extra: pip install -e '.[local]'"),
]

VB, CB = Bounds(lo=0, hi=100), Bounds(lo=0.01, hi=10)


def test_local_report_and_bid_parse_or_fall_back():
    settings = LLMSettings(backend="local", max_tokens=96, validation_retries=1, timeout_s=60)

    async def go():
        t0 = time.perf_counter()
        async with open_llm(settings) as llm:
            startup = time.perf_counter() - t0
            rep = await team_report(
                llm, TeamAgentInfo(agent_id="a1", value=3.5, curvature=1.0, kappa=0.1, n_agents=4),
                value_bounds=VB, curvature_bounds=CB, fallback=TeamReport(value=0, curvature=1))
            bid = await task_bid(
                llm, TaskAgentInfo(agent_id="b1", persona="a careful accountant", costs={"T1": 3.5, "T2": None}),
                [Task(id="T1", description="Reconcile ten invoices."), Task(id="T2", description="Paint a mural.")],
                cost_bounds=Bounds(lo=0, hi=100))
            return startup, llm.mode, rep, bid

    startup, mode, rep, bid = asyncio.run(go())
    print(f"\nlocal: startup+probe {startup:.2f} s, mode {mode}")
    for ans in (rep, bid):
        print(f"  {ans.step}: value={ans.value.model_dump(by_alias=True)} fallback={ans.used_fallback} "
              f"latency={ans.latency_s:.2f} s tokens={ans.prompt_tokens}+{ans.completion_tokens} errors={ans.errors}")
        assert ans.records and all(r.model for r in ans.records)
        assert ans.used_fallback or ans.attempts >= 1
    assert mode in ("json_schema", "json_object", "none")
    if not rep.used_fallback:
        assert 0 <= rep.value.value <= 100 and 0.01 <= rep.value.curvature <= 10


def test_local_server_stops_its_process_group():
    with LocalModelServer() as srv:
        pid = srv._proc.pid
        assert srv.running and srv.base_url.startswith("http://127.0.0.1:")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_local_server_stops_on_error():
    srv = LocalModelServer()
    with pytest.raises(KeyboardInterrupt):
        with srv:
            pid = srv._proc.pid
            raise KeyboardInterrupt
    assert not srv.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
