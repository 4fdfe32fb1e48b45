"""``mbi replay`` and ``mbi export``, and the CLI's one-line errors for bad ledgers."""

import csv
import json
import sqlite3

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.ledger.schema import head_revision, open_ledger, upgrade
from mbiagents.ledger.store import make_engine
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES, drop_append_only_triggers

SCENARIO = EXAMPLES / "shared_capacity.toml"
runner = CliRunner()


@pytest.fixture(scope="module")
def ledger_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "ledger.db"
    url = f"sqlite:///{path}"
    return url, run_scenario(load_scenario(SCENARIO), ledger_url=url, rounds=5, checkpoint=False).run_id


def test_replay_matches_round_by_round(ledger_run):
    url, run_id = ledger_run
    res = runner.invoke(app, ["replay", "--ledger", url, "--run", run_id, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["rounds"] == 5
    assert all(r["payments"] and r["outcome_recompute"] and r["signals_recompute"] for r in out["per_round"])
    res = runner.invoke(app, ["replay", "--ledger", url, "--run", run_id])
    assert res.exit_code == 0 and "replay of run" in res.stdout


def test_replay_names_the_mismatching_round(ledger_run, tmp_path):
    url, run_id = ledger_run
    dst = tmp_path / "t.db"
    dst.write_bytes(open(url.removeprefix("sqlite:///"), "rb").read())
    engine = make_engine(f"sqlite:///{dst}")
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("update events set payload = replace(payload, '\"aggregate\":', '\"aggregate\":1') "
                             "where round_index = 2 and kind = 'outcome'")
    res = runner.invoke(app, ["replay", "--ledger", f"sqlite:///{dst}", "--run", run_id])
    assert res.exit_code == 1 and "round 2 does not replay" in res.stderr


def test_export_csv_jsonl_parquet(ledger_run, tmp_path):
    url, run_id = ledger_run
    ledger = open_ledger(url)
    rounds = ledger.read_rounds(run_id)
    n_t, n_e = sum(len(r.transfers) for r in rounds), sum(len(r.events) for r in rounds)
    for fmt in ("csv", "parquet"):
        res = runner.invoke(app, ["export", "--ledger", url, "--run", run_id, "--format", fmt,
                                  "--out", str(tmp_path / fmt), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["transfers"] == n_t
    with open(tmp_path / "csv" / "transfers.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_t and sum(int(r["amount"]) for r in rows) == sum(t[4] for r in rounds for t in r.transfers)
    table = pq.read_table(tmp_path / "parquet" / "events.parquet")
    assert table.num_rows == n_e and table.schema.field("payload").type == "string"
    res = runner.invoke(app, ["export", "--ledger", url, "--run", run_id, "--format", "jsonl",
                              "--out", str(tmp_path / "l.jsonl")])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in open(tmp_path / "l.jsonl")]
    assert records[0]["record"] == "run" and records[0]["run_id"] == run_id
    kinds = [r["record"] for r in records]
    assert kinds.count("transfer") == n_t and kinds.count("event") == n_e and kinds.count("round") == 5
    ev = next(r for r in records if r["record"] == "event" and r["kind"] == "actions")
    assert ev["payload"]["x"] == rounds[0].payload("actions")["x"].tolist()


def test_trajectories_refused_for_continuous_actions(ledger_run, tmp_path):
    url, run_id = ledger_run
    res = runner.invoke(app, ["export", "--ledger", url, "--run", run_id, "--format", "jsonl", "--trajectories",
                              "--out", str(tmp_path / "t.jsonl")])
    assert res.exit_code == 2 and "no discrete actions" in res.stderr


# ---- bad ledgers: one line, exit 2, nothing written ---------------------------------
def one_line_error(res, fragment):
    assert res.exit_code == 2, res.output
    assert fragment in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("command", ["run", "audit", "replay", "export"])
def test_unreachable_ledger(command, tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    args = {"run": ["run", str(SCENARIO)], "audit": ["audit"], "replay": ["replay"],
            "export": ["export", "--out", str(tmp_path / "x.jsonl")]}[command]
    one_line_error(runner.invoke(app, [*args, "--ledger", url]), "cannot be reached")
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("command", ["audit", "replay", "export"])
def test_unknown_run(ledger_run, command, tmp_path):
    url, _ = ledger_run
    extra = ["--out", str(tmp_path / "x.jsonl")] if command == "export" else []
    one_line_error(runner.invoke(app, [command, "--ledger", url, "--run", "nope", *extra]), "no run 'nope'")
    assert not (tmp_path / "x.jsonl").exists()


def test_older_schema_asks_for_db_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(make_engine(url), "0001")
    one_line_error(runner.invoke(app, ["run", str(SCENARIO), "--ledger", url]), "mbi db upgrade")
    one_line_error(runner.invoke(app, ["audit", "--ledger", url]), "mbi db upgrade")
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 0
        assert conn.execute("select version_num from alembic_version").fetchone()[0] == "0001"
    res = runner.invoke(app, ["db", "upgrade", "--ledger", url])
    assert res.exit_code == 0 and head_revision() in res.stdout


def test_locked_sqlite_ledger(tmp_path):
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"
    open_ledger(url).dispose()
    holder = sqlite3.connect(path, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        one_line_error(runner.invoke(app, ["run", str(SCENARIO), "--ledger", url, "--rounds", "2"]), "locked")
    finally:
        holder.rollback()
        holder.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 0
    assert not (tmp_path / "l.db-checkpoints").exists()
