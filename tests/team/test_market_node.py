"""The market as a node of the user's own StateGraph: the parent's checkpointer (SQLite
and PostgreSQL) and thread id; a process killed between award and acceptance resumes
without asking for finished work again or paying twice."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from mbiagents.verify.audit import audit_run
from tests.conftest import ROOT
from tests.team.parent_graph import build, main


def _check_run(market, out):
    assert out["report"] == "code by coder, docs by writer"
    led = market.ledger
    rounds = led.read_rounds(out["run_id"])
    assert len(rounds) == 2 and led.get_run(out["run_id"]).status == "completed"
    assert sorted(st for _, st, _ in rounds[1].resolutions) == ["posted", "posted"]
    report = audit_run(led, out["run_id"])
    assert report.ok, report.as_json()


def test_market_node_in_parent_graph_sqlite_saver(sqlite_url, tmp_path):
    g, market = build(sqlite_url, tmp_path / "calls.txt")
    with sqlite3.connect(tmp_path / "ck.db", check_same_thread=False) as conn:
        saver = SqliteSaver(conn)
        graph = g.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "parent-1"}}
        out = graph.invoke({"goal": "g"}, config)
        _check_run(market, out)
        # the subgraph checkpointed under the parent's thread (its own namespace)
        namespaces = {c.config["configurable"]["checkpoint_ns"] for c in saver.list(config)}
        assert "" in namespaces
        assert graph.get_state(config).values["summary"]["agents"]["coder"]["accepted"] == 1


@pytest.mark.postgres
def test_market_node_in_parent_graph_postgres_saver(pg_url, tmp_path):
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    g, market = build(pg_url, tmp_path / "calls.txt")
    market.ledger  # the ledger's schema first: the saver's tables then share the database
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0, row_factory=dict_row) as conn:
        saver = PostgresSaver(conn)
        saver.setup()
        graph = g.compile(checkpointer=saver)
        out = graph.invoke({"goal": "g"}, {"configurable": {"thread_id": "parent-pg"}})
        _check_run(market, out)
    market.ledger.dispose()


def test_kill_between_award_and_acceptance_then_resume(sqlite_url, tmp_path):
    calls, ck = tmp_path / "calls.txt", tmp_path / "ck.db"
    proc = subprocess.run([sys.executable, "-m", "tests.team.parent_graph", sqlite_url, str(ck), str(calls), "docs"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert calls.read_text().split("\n")[:-1] == ["coder code"]  # the writer was killed mid-task
    g, market = build(sqlite_url, calls)
    (run_id, status, n_rounds), = market.ledger.engine.connect().exec_driver_sql(
        "select r.id, r.status, count(x.\"index\") from runs r join rounds x on x.run_id = r.id group by r.id").all()
    assert (status, n_rounds) == ("running", 1)  # awarded (escrow pending), not yet accepted
    with sqlite3.connect(ck, check_same_thread=False) as conn:
        saver = SqliteSaver(conn)
        graph = g.compile(checkpointer=saver)
        out = graph.invoke(None, {"configurable": {"thread_id": "job-1"}})
    assert out["run_id"] == run_id
    _check_run(market, out)
    # the finished work was not requested again; each escrow resolved once
    assert sorted(calls.read_text().split("\n")[:-1]) == ["coder code", "writer docs"]
    bal = market.ledger.balances(run_id)
    assert bal["treasury"] == -(bal["agent:coder"] + bal["agent:writer"]) and bal["agent:coder"] > 0


def test_main_runs_uninterrupted(sqlite_url, tmp_path):
    main(sqlite_url, str(tmp_path / "ck.db"), str(tmp_path / "calls.txt"), "")
    assert sorted((tmp_path / "calls.txt").read_text().split()) == sorted(["coder", "code", "writer", "docs"])
