"""The team API end to end: bring-your-own agents, VCG award, escrow posted or voided by
a verifier, budgets enforced by the ledger, interrupts, and the audit of it all."""

from __future__ import annotations

import asyncio
import sys

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from sqlalchemy import text
from typing_extensions import TypedDict

import mbiagents as mbi
from mbiagents.errors import LedgerError
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import EventRow, Resolution, TransferRow
from mbiagents.verify.audit import audit_run
from tests.conftest import drop_append_only_triggers

TASKS = [mbi.Task(id="code", description="write code", value=10.0, acceptance=["tests pass"]),
         mbi.Task(id="docs", description="write docs", value=8.0)]


def team(work_calls=None, bad=("lazy",)):
    calls = work_calls if work_calls is not None else []

    def work_for(aid):
        def work(task):
            calls.append((aid, task.id))
            return "bad" if aid in bad else f"{aid} did {task.id}"
        return work

    return [mbi.Agent("coder", bid=lambda t: 3.0, work=work_for("coder")),
            mbi.Agent("writer", bid=lambda t: 5.0 if t.id == "docs" else None, work=work_for("writer")),
            mbi.Agent("lazy", bid=lambda t: 4.0, work=work_for("lazy"))]


def no_bad(task, out):
    return ("bad" not in str(out), "contains 'bad'")


def checks(report):
    return {c.name: c.ok for c in report.checks}


@pytest.mark.parametrize("db", ["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def test_reject_voids_escrow_and_task_is_reoffered(db, request):
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    market = mbi.TaskMarket(team(), ledger=url, verifier=no_bad)
    res = market.run(TASKS)
    rounds = market.ledger.read_rounds(res.run_id)
    assert len(rounds) == 4  # two market rounds: award + delivery each
    award0 = rounds[0].payload("outcome")["assignment"]
    assert award0 == {"code": "coder", "docs": "lazy"}
    # lazy's escrow was pending, then voided; coder's posted
    states = {pid.split(":")[-1]: st for pid, st, _ in rounds[1].resolutions}
    assert states == {"coder": "posted", "lazy": "voided"}
    # the rejected task is offered again in round 1 and done by someone else
    assert rounds[2].payload("tasks")["ids"] == ["docs"]
    assert {r["task"] for r in res.results} == {"code", "docs"}
    a = res.summary["agents"]
    assert a["lazy"]["payment"] == 0 and a["lazy"]["won"] == 1 and a["lazy"]["accepted"] == 0
    # VCG recomputed here: round 0 coder (3 on code) vs lazy next best 4 -> paid 4
    t0 = rounds[0].payload("payments")["t"]
    assert a["coder"]["payment"] == pytest.approx(-t0[0] + -rounds[2].payload("payments")["t"][0])
    bal = market.ledger.balances(res.run_id)
    assert bal["agent:lazy"] == 0 and sum(bal.values()) == 0
    report = market.audit(res.run_id)
    assert report.ok, report.as_json()
    assert checks(report)["escrow"] and checks(report)["payment_x_acceptance"]


def test_forged_resolution_fails_the_audit(sqlite_url):
    market = mbi.TaskMarket(team(), ledger=sqlite_url, verifier=no_bad)
    res = market.run(TASKS)
    engine = market.ledger.engine
    drop_append_only_triggers(engine)
    with engine.begin() as conn:  # pay the rejected agent after all
        pid, = conn.execute(text("select pending_id from pending_resolutions where state = 'voided'")).scalars()
        amount = conn.execute(text("select amount from pending_transfers where id = :i"), {"i": pid}).scalar_one()
        conn.execute(text("update pending_resolutions set state = 'posted', amount = :a where pending_id = :i"),
                     {"a": amount, "i": pid})
    c = checks(audit_run(market.ledger, res.run_id))
    assert not c["payment_x_acceptance"] and not c["hash_chain"]
    with engine.begin() as conn:  # an escrow never resolved
        conn.execute(text("delete from pending_resolutions where pending_id = :i"), {"i": pid})
    assert not checks(audit_run(market.ledger, res.run_id))["escrow"]


@pytest.mark.parametrize("db", ["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def test_ledger_escrow_write_path(db, request):
    led = open_ledger(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    rid = led.create_run(name="n", game="g", mechanism="m", seed=0, scenario={}, agent_ids=["a"], floors={"a": 0})
    led.write_round(rid, 0, [EventRow("x", {})], [TransferRow("grant", "treasury", "agent:a", 5)],
                    pending=[TransferRow("escrow", "treasury", "agent:a", 7)])
    pid = f"{rid}:0:escrow:treasury:agent:a"
    assert led.balances(rid)["agent:a"] == 5  # pending moves nothing
    with pytest.raises(LedgerError, match="posts 8, pending amount is 7"):
        led.resolve_pending(rid, 1, [], [Resolution(pid, "posted", 8)])
    with pytest.raises(LedgerError, match="below its floor"):
        led.write_round(rid, 1, [], [TransferRow("spend", "agent:a", "treasury", 6)])
    led.resolve_pending(rid, 1, [], [Resolution(pid, "posted")])
    assert led.balances(rid)["agent:a"] == 12
    with pytest.raises(LedgerError, match="already resolved"):
        led.resolve_pending(rid, 2, [], [Resolution(pid, "voided")])
    assert led.resolve_pending(rid, 1, [], [Resolution(pid, "posted")]).duplicate  # the same round again
    led.finish_run(rid, "completed")
    with pytest.raises(LedgerError, match="completed"):
        led.write_round(rid, 2, [], [])
    with pytest.raises(Exception, match="completed"), led.engine.begin() as conn:  # the database refuses too
        conn.execute(text("insert into rounds values (:r, 2, 'x', 'y', 0, 0)"), {"r": rid})
    with pytest.raises(Exception, match="append-only"), led.engine.begin() as conn:
        conn.execute(text("update pending_resolutions set state = 'voided', amount = 0"))
    led.dispose()


def test_invalid_bids_are_logged_valid_bids_never_dropped(sqlite_url):
    agents = [mbi.Agent("nan", bid=lambda t: float("nan"), work=lambda t: "x"),
              mbi.Agent("neg", bid=-1.0, work=lambda t: "x"),
              mbi.Agent("boom", bid=lambda t: 1 / 0, work=lambda t: "x"),
              mbi.Agent("ok", bid=lambda t: 2.5, work=lambda t: "done")]
    market = mbi.TaskMarket(agents, ledger=sqlite_url, max_bid=100)
    res = market.run(TASKS[:1])
    r0 = market.ledger.read_rounds(res.run_id)[0]
    assert r0.payload("reports")["costs"] == [[None], [None], [None], [2.5]]
    rejected = {a: p for _, k, a, p in r0.events if k == "bid_rejected"}
    assert set(rejected) == {"nan", "neg", "boom"} and "ZeroDivisionError" in rejected["boom"]
    assert res.results[0]["agent"] == "ok" and market.audit(res.run_id).ok


def test_own_agents_runnable_graph_and_async(sqlite_url):
    class State(TypedDict):
        task: dict
        output: str

    g = StateGraph(State)
    g.add_node("write", lambda s: {"output": "graph wrote " + s["task"]["id"]})
    g.add_edge(START, "write")
    g.add_edge("write", END)

    async def abid(task):
        await asyncio.sleep(0)
        return 9.0

    agents = [mbi.Agent("graph", bid=1.0, work=g.compile()),
              mbi.Agent("runnable", bid=RunnableLambda(lambda d: 2.0), work=RunnableLambda(lambda d: {"output": 7})),
              mbi.Agent("async", bid=abid, work=lambda t: "late")]
    market = mbi.TaskMarket(agents, ledger=sqlite_url)
    res = market.run(TASKS)
    got = {r["task"]: (r["agent"], r["output"]) for r in res.results}
    assert got == {"code": ("graph", "graph wrote code"), "docs": ("runnable", 7)}
    assert market.audit(res.run_id).ok


def test_arun_and_run_inside_a_running_loop(sqlite_url):
    market = mbi.TaskMarket(team(bad=()), ledger=sqlite_url)

    async def inside():
        a = await market.arun(TASKS)
        b = market.run(TASKS)  # sync call from inside a loop: a worker thread, not asyncio.run here
        return a, b

    a, b = asyncio.run(inside())
    assert a.run_id != b.run_id and len(a.results) == len(b.results) == 2
    assert market.audit(a.run_id).ok and market.audit(b.run_id).ok


def test_an_amount_stored_as_text_fails_the_audit_naming_it(sqlite_url):
    """SQLite keeps a text amount its CHECK lets through (``'abc' > 0``): the audit of a run
    with budgets names the row (``double_entry``), counts it as no money, and does not crash."""
    agents = [mbi.Agent("a", bid=1.0, work=lambda t, ctx: "done", budget=mbi.Budget(grant=5.0)),
              mbi.Agent("b", bid=2.0, work=lambda t, ctx: "done", budget=mbi.Budget(grant=5.0))]
    market = mbi.TaskMarket(agents, ledger=sqlite_url)
    res = market.run(TASKS)
    engine = market.ledger.engine
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        tid = conn.execute(text("select id from transfers where debit = 'treasury' order by round_index, id")).scalar()
        conn.execute(text("update transfers set amount = 'abc' where id = :i"), {"i": tid})
    report = audit_run(market.ledger, res.run_id)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert "amount 'abc' is not a positive integer" in failed["double_entry"] and tid in failed["double_entry"]
    assert "hash_chain" in failed
    with engine.begin() as conn:  # and a resolution's amount
        pid = conn.execute(text("select pending_id from pending_resolutions order by pending_id")).scalar()
        conn.execute(text("update pending_resolutions set amount = 'abc' where pending_id = :i"), {"i": pid})
    failed = {c.name: c.detail for c in audit_run(market.ledger, res.run_id).checks if not c.ok}
    assert f"{pid} posted with amount 'abc'" in failed["escrow"]


def test_budget_runs_out_mid_task(sqlite_url):
    def work(task, ctx):
        for i in range(3):  # three priced calls, each reserving 0.6 and costing 0.5
            with ctx.charge(reserve=0.6, what="model") as c:
                c.actual = 0.5
        return "finished"

    def bid(task, ctx):  # an agent may look at its own wallet (never at others' costs)
        return 1.0 if ctx.wallet.left() >= 600_000 else None

    agents = [mbi.Agent("poor", bid=bid, work=work, budget=mbi.Budget(grant=1.0)),
              mbi.Agent("rich", bid=2.0, work=work, budget=mbi.Budget(grant=10.0))]
    market = mbi.TaskMarket(agents, ledger=sqlite_url, max_rounds=2)
    res = market.run(TASKS[:1])
    rounds = market.ledger.read_rounds(res.run_id)
    d1 = rounds[1].payload("deliveries")["items"]
    assert d1[0]["agent"] == "poor" and not d1[0]["accepted"] and "budget exceeded" in d1[0]["reason"]
    exceeded = [p for _, k, a, p in rounds[1].events if k == "budget_exceeded"]
    assert len(exceeded) == 1
    a = res.summary["agents"]
    assert a["poor"]["spend"] == pytest.approx(0.5) and a["poor"]["payment"] == 0  # 0.5 left < the next 0.6
    assert a["poor"]["balance"] == pytest.approx(0.5) and a["poor"]["won"] == 1  # then it abstains
    assert a["rich"]["accepted"] == 1 and a["rich"]["utility"] == pytest.approx(a["rich"]["payment"] - 1.5)
    assert min(market.ledger.balances(res.run_id)[f"agent:{x}"] for x in ("poor", "rich")) >= 0
    report = market.audit(res.run_id)
    assert report.ok and checks(report)["no_overdraft"] and checks(report)["spend_recompute"]


def test_warn_shrinks_and_pause_interrupts_for_a_top_up(sqlite_url):
    def work(task, ctx):
        with ctx.charge(reserve=0.8, what="model", shrinkable=True) as c:
            c.actual = min(0.8, c.reserved / 1e6)
        with ctx.charge(reserve=0.8, what="tool:search") as c:
            c.actual = 0.8
        return "ok"

    warn = mbi.TaskMarket([mbi.Agent("w", bid=1.0, work=work, budget=mbi.Budget(grant=0.5, on_exhausted="warn"))],
                          ledger=sqlite_url, max_rounds=1)
    res = warn.run(TASKS[:1])
    assert res.summary["agents"]["w"]["spend"] == pytest.approx(0.5) and not res.results
    assert warn.audit(res.run_id).ok

    pause = mbi.TaskMarket([mbi.Agent("p", bid=1.0, work=work, budget=mbi.Budget(grant=1.0, on_exhausted="pause"))],
                           ledger=sqlite_url, max_rounds=1)
    first = pause.run(TASKS[:1], thread_id="t-pause")
    assert first.interrupted and first.interrupts[0].value["budget_exceeded"]["agent"] == "p"
    done = pause.run(thread_id="t-pause", resume=2.0)  # top up 2.0 and go on
    assert not done.interrupted and done.results[0]["task"] == "code"
    agent = done.summary["agents"]["p"]
    assert agent["topup"] == pytest.approx(2.0) and agent["balance"] >= 0
    assert pause.audit(done.run_id).ok


def test_human_verifier_through_interrupt(sqlite_url):
    market = mbi.TaskMarket(team(bad=()), ledger=sqlite_url, verifier=mbi.verifiers.human(), max_rounds=1)
    first = market.run(TASKS, thread_id="h")
    asks = {i.value["verify"]["task"]["id"]: i.id for i in first.interrupts}
    assert set(asks) == {"code", "docs"}
    out = market.run(thread_id="h", resume={asks["code"]: True, asks["docs"]: {"accepted": False, "reason": "no"}})
    assert not out.interrupted and market.audit(out.run_id).ok
    items = market.ledger.read_rounds(out.run_id)[1].payload("deliveries")["items"]
    assert sorted(i["accepted"] for i in items) == [False, True]


def test_command_verifier(sqlite_url):
    check = [sys.executable, "-c", "import sys; sys.exit(0 if 'good' in open(sys.argv[1]).read() else 3)",
             "{deliverable}"]
    agents = [mbi.Agent("a", bid=1.0, work=lambda t: "good" if t.id == "code" else "nope")]
    market = mbi.TaskMarket(agents, ledger=sqlite_url, verifier=mbi.verifiers.command(check), max_rounds=2)
    res = market.run(TASKS)
    assert [r["task"] for r in res.results] == ["code"]
    items = market.ledger.read_rounds(res.run_id)[3].payload("deliveries")["items"]
    assert items[0]["task"] == "docs" and "exited 3" in items[0]["reason"]
    assert market.audit(res.run_id).ok


def test_report_shows_deliveries_acceptance_budget_and_spend(sqlite_url, tmp_path):
    from mbiagents.report import build_report

    def work(task, ctx):
        with ctx.charge(reserve=0.2, what="tool:search") as c:
            c.actual = 0.125
        return "bad" if task.id == "docs" else "fine"

    market = mbi.TaskMarket([mbi.Agent("a", bid=1.0, work=work, budget=mbi.Budget(grant=3.0))],
                            ledger=sqlite_url, verifier=no_bad, max_rounds=1)
    res = market.run(TASKS[:1])
    out = build_report(market.ledger, res.run_id, tmp_path / "rep")
    html = (tmp_path / "rep" / "index.html").read_text()
    assert out.audit_ok and 'id="deliveries"' in html and "fine" in html
    for column in ("payment", "spend", "utility", "grant", "balance"):
        assert f"<th>{column}</th>" in html
    agent = res.summary["agents"]["a"]
    assert agent["spend"] == 0.125 and agent["utility"] == agent["payment"] - 0.125
