"""A user's own LangGraph graph that embeds the task market as a node (used by the tests,
also in a subprocess that is killed between award and acceptance)."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

import mbiagents as mbi


class Parent(TypedDict, total=False):
    goal: str
    tasks: list
    results: list
    run_id: str
    summary: dict
    report: str


def build(ledger_url: str, calls: Path, crash_on: str | None = None):
    """Parent graph plan -> market -> report. Each work call appends ``agent task`` to
    ``calls``; work on ``crash_on`` kills the process (after the other work is done)."""

    def work_for(aid):
        def work(task):
            if task.id == crash_on:
                time.sleep(0.5)  # let the other winner finish and be checkpointed
                os._exit(17)
            with calls.open("a") as f:
                f.write(f"{aid} {task.id}\n")
            return f"{aid}: {task.description}"
        return work

    agents = [mbi.Agent("coder", bid=lambda t: 3.0 if t.id == "code" else 6.0, work=work_for("coder")),
              mbi.Agent("writer", bid=lambda t: 2.0 if t.id == "docs" else None, work=work_for("writer"))]
    market = mbi.TaskMarket(agents, ledger=ledger_url, verifier=lambda t, out: bool(out))

    def plan(state):
        return {"tasks": [mbi.Task(id="code", description="code " + state["goal"], value=10.0).model_dump(),
                          mbi.Task(id="docs", description="docs " + state["goal"], value=8.0).model_dump()]}

    def report(state):
        return {"report": ", ".join(f"{r['task']} by {r['agent']}" for r in state["results"])}

    g = StateGraph(Parent)
    g.add_node("plan", plan)
    g.add_node("market", market.as_node())
    g.add_node("report", report)
    g.add_edge(START, "plan")
    g.add_edge("plan", "market")
    g.add_edge("market", "report")
    g.add_edge("report", END)
    return g, market


def main(ledger_url: str, checkpoints: str, calls: str, crash_on: str) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    g, _ = build(ledger_url, Path(calls), crash_on or None)
    with sqlite3.connect(checkpoints, check_same_thread=False) as conn:
        saver = SqliteSaver(conn)
        graph = g.compile(checkpointer=saver)
        graph.invoke({"goal": "x"}, {"configurable": {"thread_id": "job-1"}}, durability="sync")


if __name__ == "__main__":
    main(*sys.argv[1:5])
