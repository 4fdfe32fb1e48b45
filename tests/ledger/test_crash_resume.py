"""Atomic rounds and resume: a killed run leaves whole rounds; --resume finishes it exactly.

The process is killed with ``MBI_FAULT`` (``mbiagents.faults``: ``os._exit(70)``) between
the mechanism and settlement, and inside the settlement transaction.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.faults import FAULT_ENV, FAULT_EXIT_CODE
from mbiagents.verify.audit import audit_run
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import Ledger, round_hash
from mbiagents.runner import resume_run, run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES, ROOT

SCENARIO = EXAMPLES / "shared_capacity.toml"
ROUNDS = 12
CRASH_AT = 7


def ledger_rows(ledger: Ledger, run_id: str, as_run: str | None = None):
    """Events, transfers and array records per round, with the run id replaced by ``as_run``."""
    sub = (lambda s: s.replace(run_id, as_run)) if as_run else (lambda s: s)
    return [(r.index, r.events, [(sub(t[0]), *t[1:]) for t in r.transfers], r.arrays)
            for r in ledger.read_rounds(run_id)]


def assert_same_ledger_as_uninterrupted(url: str, run_id: str) -> None:
    ledger = open_ledger(url)
    ref = run_scenario(load_scenario(SCENARIO), ledger_url=url, rounds=ROUNDS).run_id
    ledger = open_ledger(url)
    resumed = ledger_rows(ledger, run_id)
    assert resumed == ledger_rows(ledger, ref, as_run=run_id)  # byte for byte, run id aside
    prev = ledger.get_run(run_id).header_hash  # the same rows chain to the same hashes
    for (index, events, transfers, arrays), stored in zip(ledger_rows(ledger, ref, as_run=run_id),
                                                          ledger.read_rounds(run_id)):
        prev = round_hash(prev, index, events, transfers, arrays=arrays)
        assert stored.hash == prev
    assert audit_run(ledger, run_id).ok
    assert ledger.get_run(run_id).status == "completed"


def crash(url: str, point: str) -> str:
    env = {**os.environ, FAULT_ENV: f"{point}:{CRASH_AT}", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "mbiagents.cli", "run", str(SCENARIO), "--ledger", url,
                          "--rounds", str(ROUNDS), "--json"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == FAULT_EXIT_CODE, res.stderr
    ledger = open_ledger(url)
    (run_id, status), = ledger.engine.connect().execute(text("select id, status from runs")).all()
    assert status == "running"
    # whole rounds or none: rounds 0..CRASH_AT-1, nothing of round CRASH_AT
    assert [r.index for r in ledger.read_rounds(run_id)] == list(range(CRASH_AT))
    with ledger.engine.connect() as conn:
        for table in ("events", "transfers"):
            n = conn.execute(text(f"select count(*) from {table} where round_index >= {CRASH_AT}")).scalar()
            assert n == 0
    ledger.dispose()
    return run_id


@pytest.mark.parametrize("point", ["mechanism", "settle"])
def test_killed_run_leaves_whole_rounds_and_resumes_to_the_uninterrupted_ledger(sqlite_url, point):
    run_id = crash(sqlite_url, point)
    res = CliRunner().invoke(app, ["run", "--resume", run_id, "--ledger", sqlite_url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["run_id"] == run_id and out["resumed"] and out["rounds"] == ROUNDS
    assert_same_ledger_as_uninterrupted(sqlite_url, run_id)


@pytest.mark.postgres
def test_killed_run_resumes_on_postgresql(pg_url):
    run_id = crash(pg_url, "settle")
    assert resume_run(run_id, ledger_url=pg_url).resumed
    assert_same_ledger_as_uninterrupted(pg_url, run_id)
    with open_ledger(pg_url).engine.connect() as conn:  # checkpoints live outside the ledger's schema
        assert conn.execute(text("select count(*) from mbi_checkpoints.checkpoints")).scalar() > 0


def test_retried_round_after_a_timeout_is_a_duplicate(sqlite_url, monkeypatch):
    """The commit lands but the caller sees a timeout: resuming rewrites the round as a duplicate."""
    real = Ledger.write_round
    seen = []

    def flaky(self, run_id, index, events, transfers):
        result = real(self, run_id, index, events, transfers)
        seen.append(result.duplicate)
        if index == 4 and len(seen) == 5:
            raise TimeoutError("commit acknowledged too late")
        return result

    monkeypatch.setattr(Ledger, "write_round", flaky)
    with pytest.raises(TimeoutError):
        run_scenario(load_scenario(SCENARIO), ledger_url=sqlite_url, rounds=ROUNDS)
    (run_id,) = open_ledger(sqlite_url).engine.connect().execute(text("select id from runs")).scalars()
    assert open_ledger(sqlite_url).get_run(run_id).status == "failed"
    resume_run(run_id, ledger_url=sqlite_url)
    assert True in seen[5:]  # round 4 was written again and recognised as a duplicate
    monkeypatch.setattr(Ledger, "write_round", real)
    assert_same_ledger_as_uninterrupted(sqlite_url, run_id)


def test_resume_refuses_completed_and_unknown_runs(sqlite_url):
    run_id = run_scenario(load_scenario(SCENARIO), ledger_url=sqlite_url, rounds=2).run_id
    runner = CliRunner()
    for rid, fragment in ((run_id, "already completed"), ("nope", "no run 'nope'")):
        res = runner.invoke(app, ["run", "--resume", rid, "--ledger", sqlite_url])
        assert res.exit_code == 2 and fragment in res.stderr and res.stderr.count("\n") == 1


def test_numpy_state_round_trips_through_the_checkpointer(sqlite_url):
    from mbiagents.checkpoint import open_checkpointer
    from mbiagents.graph import build_graph

    run_id = run_scenario(load_scenario(SCENARIO), ledger_url=sqlite_url, rounds=3).run_id
    with open_checkpointer(open_ledger(sqlite_url)) as saver:
        values = build_graph(saver).get_state({"configurable": {"thread_id": run_id}}).values
    market = values["market"]  # the team market's TeamState, a TypedDict of numpy arrays
    assert values["round"] == 3 and isinstance(market["actions"], np.ndarray)
    last = open_ledger(sqlite_url).read_rounds(run_id)[-1]
    assert market["actions"].tolist() == last.payload("actions")["x"].tolist()
    reports = values["step"]["reports"]
    assert isinstance(reports["value"], np.ndarray) and reports["value"].dtype == np.float64


@pytest.mark.postgres
def test_checkpoint_setup_lock_wait_is_bounded(pg_url, monkeypatch):
    # issue 13: a set-up lock held forever by another session ends in a one-line LedgerError
    import psycopg

    from mbiagents import checkpoint
    from mbiagents.errors import LedgerError

    led = open_ledger(pg_url)
    monkeypatch.setattr(checkpoint, "SETUP_LOCK_WAIT_S", 0.3)
    holder = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (checkpoint.SETUP_LOCK,))
        with pytest.raises(LedgerError, match="set-up lock"):
            with checkpoint.open_checkpointer(led):
                pass
    finally:
        holder.close()
        led.dispose()
