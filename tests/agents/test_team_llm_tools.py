"""The built-in LLM agent with tools: the real openai SDK over HTTP to the loopback server,
which answers with tool calls (some of them hostile); budgets charged per call."""

from __future__ import annotations

import json

import pytest
from openai_server import RecordedRequest, Reply

import mbiagents as mbi
from mbiagents.llm_settings import LLMSettings

TASK = mbi.Task(id="fizz", description="write fizzbuzz", value=20.0, acceptance=["prints FizzBuzz at 15"])


def settings(srv, **kw):
    return LLMSettings(backend="custom", base_url=srv.base_url, model="scripted", max_retries=0,
                       validation_retries=2, **kw)


def run_python(code: str) -> str:
    """Run Python code and return what it printed."""
    return f"ran {len(code)} chars: FizzBuzz"


def test_tool_calls_roundtrip_and_hostile_answers(openai_server, sqlite_url):
    srv = openai_server

    @srv.script
    def answer(req: RecordedRequest):
        if req.step == "bid":
            if req.agent == "hostile":  # NaN, a string, then an out-of-range number: rejected, logged
                n = sum(r.agent == "hostile" and r.step == "bid" for r in srv.requests)
                return [Reply.text('{"cost": NaN}'), Reply.json({"cost": "cheap"}), Reply.json({"cost": 1e9})][n - 1]
            return Reply.json({"cost": 2.0 if req.agent == "coder" else 5.0})
        done = len(req.tool_results)
        if req.agent == "coder":
            script = [Reply.tool_call("nope", {}),                      # unknown tool
                      Reply.tool_call("run_python", "{not json"),        # malformed arguments
                      Reply.tool_call("run_python", {"code": 5}),        # wrong type
                      Reply.tool_calls([("run_python", {"code": "print(1)"}), ("run_python", {"code": "x"})]),
                      Reply.text("def fizzbuzz(n): ...")]
            return script[done] if done <= 3 else script[4]  # the two-call reply adds two results
        return Reply.text("writer text")

    coder = mbi.LLMAgent("coder", settings=settings(srv), tools=[mbi.Tool(run_python, price=0.25)],
                         budget=mbi.Budget(grant=5.0))
    other = mbi.LLMAgent("writer", settings=settings(srv))
    hostile = mbi.LLMAgent("hostile", settings=settings(srv))
    market = mbi.TaskMarket([coder, other, hostile], ledger=sqlite_url, max_rounds=1, max_bid=100)
    res = market.run([TASK])
    assert [(r["agent"], r["output"]) for r in res.results] == [("coder", "def fizzbuzz(n): ...")]
    work = [r for r in srv.requests if r.agent == "coder" and r.step == "work"]
    assert [t["function"]["name"] for t in work[0].tools] == ["run_python"]
    assert work[0].tools[0]["function"]["parameters"]["properties"]["code"]["type"] == "string"
    replies = [m["content"] for m in work[-1].tool_results]
    assert "unknown tool 'nope'" in replies[0] and "invalid arguments" in replies[1] and "invalid arguments" in replies[2]
    assert replies[3].startswith("ran 8 chars") and replies[4].startswith("ran 1 chars")
    rounds = market.ledger.read_rounds(res.run_id)
    rejected = {a: json.loads(p) for _, k, a, p in rounds[0].events if k == "bid_rejected"}
    assert "not a number in [0, 100]" in rejected["hostile"]["reasons"]["fizz"]  # the third answer, 1e9
    assert len([r for r in srv.requests if r.agent == "hostile"]) == 3  # re-asked after NaN and a string
    calls = rounds[1].payload("usage")["calls"]
    tools = [c for c in calls if c["what"] == "tool:run_python"]
    assert len(tools) == 2 and all(c["charged"] == 250_000 for c in tools)  # only valid calls ran (and cost)
    assert res.summary["agents"]["coder"]["spend"] == pytest.approx(0.5)
    assert market.audit(res.run_id).ok


def test_llm_budget_runs_out_mid_task(openai_server, sqlite_url):
    srv = openai_server
    srv.script(lambda req: Reply.json({"cost": 1.0}) if req.step == "bid"
               else Reply.tool_call("run_python", {"code": "loop"}, prompt_tokens=500, completion_tokens=500))
    # 1 unit per 1k tokens: each call costs 1.0 and reserves more; the grant covers about two calls
    agent = mbi.LLMAgent("spender", settings=settings(srv, price_per_1k_tokens=1.0, max_tokens=200),
                         tools=[run_python], budget=mbi.Budget(grant=2.5), max_steps=20)
    market = mbi.TaskMarket([agent], ledger=sqlite_url, max_rounds=1)
    res = market.run([TASK])
    assert not res.results
    rounds = market.ledger.read_rounds(res.run_id)
    item, = rounds[1].payload("deliveries")["items"]
    assert not item["accepted"] and "budget exceeded" in item["reason"]
    assert any(k == "budget_exceeded" for _, k, _, _ in rounds[1].events)
    assert market.ledger.balances(res.run_id)["agent:spender"] >= 0
    report = market.audit(res.run_id)
    assert report.ok and {c.name for c in report.checks} >= {"no_overdraft", "spend_recompute"}
    assert len([r for r in srv.requests if r.step == "work"]) < 20


def test_an_agents_calls_share_one_connection_and_the_run_closes_it(openai_server, sqlite_url):
    """Bid, work steps and tool rounds of an LLM agent go through one client and one kept-alive
    connection (not a client, a TCP handshake, per call); the market closes it when the run ends."""
    srv = openai_server

    @srv.script
    def answer(req: RecordedRequest):
        if req.step == "bid":
            return Reply.json({"cost": 2.0})
        return Reply.tool_call("run_python", {"code": "print(1)"}) if len(req.tool_results) < 3 else Reply.text("done")

    coder = mbi.LLMAgent("coder", settings=settings(srv), tools=[mbi.Tool(run_python)])
    market = mbi.TaskMarket([coder], ledger=sqlite_url, max_rounds=1, max_bid=100)
    res = market.run([TASK])
    assert [r["output"] for r in res.results] == ["done"]
    mine = [r for r in srv.requests if r.agent == "coder"]
    assert [r.step for r in mine] == ["bid"] + ["work"] * 4
    assert len({r.peer for r in mine}) == 1, [r.peer for r in mine]
    assert len(coder._clients) == 0  # closed with the run (its loop is gone too)
    before = len(srv.requests)
    again = market.run([TASK])  # a new run on a new event loop: a new client, closed again
    assert [r["output"] for r in again.results] == ["done"] and len(coder._clients) == 0
    assert len({r.peer for r in srv.requests[before:]}) == 1


def test_a_run_ending_leaves_a_concurrent_runs_calls_on_the_shared_agent_alone(openai_server, sqlite_url):
    """Two markets on one event loop share an agent: the first ends (and closes the agent's
    client) while the second is inside a slow work call on it; that call completes, and the
    client is closed once it returns."""
    import asyncio

    srv = openai_server

    @srv.script
    def answer(req: RecordedRequest):
        if req.step == "bid":
            return Reply.json({"cost": 1.0})
        return Reply.text("slow done", delay_s=0.6) if "slow" in req.last_user else Reply.text("quick done")

    shared = mbi.LLMAgent("shared", settings=settings(srv))
    quick = mbi.TaskMarket([shared], ledger=sqlite_url, max_rounds=1, max_bid=100)
    slow = mbi.TaskMarket([shared], ledger=sqlite_url, max_rounds=1, max_bid=100)

    async def both():
        return await asyncio.gather(quick.arun([mbi.Task(id="q", description="quick", value=5.0)]),
                                    slow.arun([mbi.Task(id="s", description="slow", value=5.0)]))

    a, b = asyncio.run(both())
    assert [r["output"] for r in a.results] == ["quick done"]
    assert [r["output"] for r in b.results] == ["slow done"]  # not "client has been closed"
    assert not shared._users and not shared._closing
