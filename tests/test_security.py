"""Issue 16: a scenario file, a ledger path or a model server must never run code, leak a
secret, or destroy data. One section per item of the issue (LLM items: tests/agents/test_llm_security.py)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES

SCENARIO = EXAMPLES / "shared_capacity.toml"
runner = CliRunner()


def one_line_error(res, fragment: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert fragment in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_ledger(tmp_path_factory):
    path = tmp_path_factory.mktemp("sec") / "ledger.db"
    url = f"sqlite:///{path}"
    run_id = run_scenario(load_scenario(SCENARIO), ledger_url=url, rounds=3, checkpoint=False).run_id
    return path, url, run_id


# ---- 1. export / report never write over files silently, never into the ledger ------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_refuses_existing_output_unless_forced(small_ledger, tmp_path, fmt):
    _, url, run_id = small_ledger
    out = tmp_path / ("x.jsonl" if fmt == "jsonl" else "x")
    target = out if fmt == "jsonl" else out / "events.csv"
    target.parent.mkdir(exist_ok=True)
    target.write_text("precious")
    args = ["export", "--ledger", url, "--run", run_id, "--format", fmt, "--out", str(out)]
    one_line_error(runner.invoke(app, args), "pass --force")
    assert target.read_text() == "precious"
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert target.read_text() != "precious"
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".part")]  # no temporary file left


@pytest.mark.parametrize("side", ["", "-wal", "-checkpoints"])
def test_export_never_writes_into_the_ledger(small_ledger, side):
    path, url, run_id = small_ledger
    target = path.with_name(path.name + side)
    before = digest(path)
    for force in ([], ["--force"]):
        res = runner.invoke(app, ["export", "--ledger", url, "--run", run_id, "--out", str(target), *force])
        one_line_error(res, "database file this command has open")
    assert digest(path) == before and path.stat().st_size > 0


def test_report_refuses_existing_report_and_the_ledger(small_ledger, tmp_path):
    path, url, run_id = small_ledger
    out = tmp_path / "r"
    out.mkdir()
    (out / "index.html").write_text("precious")
    one_line_error(runner.invoke(app, ["report", "--ledger", url, "--run", run_id, "--out", str(out)]), "pass --force")
    assert (out / "index.html").read_text() == "precious"
    assert runner.invoke(app, ["report", "--ledger", url, "--run", run_id, "--out", str(out), "--force"]).exit_code == 0
    assert "<html" in (out / "index.html").read_text()
    # a ledger named like a report file, in the report's folder: never written, even with --force
    ledger = tmp_path / "l" / "report.json"
    ledger.parent.mkdir()
    ledger.write_bytes(path.read_bytes())
    before = digest(ledger)
    res = runner.invoke(app, ["report", "--ledger", f"sqlite:///{ledger}", "--run", run_id, "--out", str(ledger.parent),
                              "--force"])
    one_line_error(res, "database file this command has open")
    assert digest(ledger) == before


# ---- 4 (ledger side). a database password never appears in a message -----------------------
def test_database_password_is_not_in_error_messages(tmp_path):
    secret = "hunter2-Sekret"
    url = f"postgresql+psycopg://mbi:{secret}@127.0.0.1:1/none"
    for args in (["audit"], ["db", "upgrade"], ["export", "--out", str(tmp_path / "x.jsonl")]):
        res = runner.invoke(app, [*args, "--ledger", url])
        assert res.exit_code == 2 and secret not in res.output, res.output
        assert "***" in res.stderr


# ---- 8. migration under a lock; --resume honours --rounds; non-database files ----------------
def _first_run(url: str, barrier, results) -> None:
    from mbiagents.ledger.schema import open_ledger

    barrier.wait()
    try:
        led = open_ledger(url)
        led.create_run(name="x", game="team", mechanism="dpm", seed=0, scenario={}, agent_ids=["a"])
        led.dispose()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001
        results.put(f"{type(exc).__name__}: {exc}")


def test_simultaneous_first_runs_migrate_a_new_sqlite_ledger_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(2):
        url = f"sqlite:///{tmp_path / f'new{trial}.db'}"
        n = 12
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_first_run, args=(url, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        assert outcomes == ["ok"] * n, [o for o in outcomes if o != "ok"][:3]
        with sqlite3.connect(tmp_path / f"new{trial}.db") as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == n


def test_resume_without_checkpoint_honours_the_original_rounds(sqlite_url):
    from tests.ledger.test_crash_resume import CRASH_AT, ROUNDS, crash

    run_id = crash(sqlite_url, "settle")
    for side in ("", "-wal", "-shm"):  # the checkpoint file is lost
        Path(sqlite_url.removeprefix("sqlite:///") + "-checkpoints" + side).unlink(missing_ok=True)
    res = runner.invoke(app, ["run", "--resume", run_id, "--ledger", sqlite_url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["rounds"] == ROUNDS > CRASH_AT  # not the scenario's own 60


@pytest.mark.parametrize("command", [["audit"], ["run", str(SCENARIO), "--rounds", "2"], ["db", "upgrade"]])
def test_ledger_at_a_non_database_file_is_one_line(tmp_path, command):
    path = tmp_path / "notes.txt"
    path.write_text("not a database at all\n" * 100)
    before = digest(path)
    one_line_error(runner.invoke(app, [*command, "--ledger", f"sqlite:///{path}"]), "not")
    assert digest(path) == before


def test_db_upgrade_refuses_an_unrelated_database_unless_forced(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table customers (id integer primary key, name text)")
    url = f"sqlite:///{path}"
    one_line_error(runner.invoke(app, ["db", "upgrade", "--ledger", url]), "not an mbiagents ledger")
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")] == ["customers"]
    res = runner.invoke(app, ["db", "upgrade", "--ledger", url, "--force"])
    assert res.exit_code == 0, res.output
    # an mbiagents ledger or an empty database needs no --force
    assert runner.invoke(app, ["db", "upgrade", "--ledger", f"sqlite:///{tmp_path / 'fresh.db'}"]).exit_code == 0


# ---- 7 (mechanism). capped Clarke payments: IR under the reports at every x, Clarke at x* ------
def test_capped_clarke_payments_are_ir_everywhere_and_clarke_at_the_optimum():
    import numpy as np

    from mechanisms import dpm
    from mechanisms.games import team

    rng = np.random.default_rng(0)
    kappa = 0.5
    for _ in range(50):
        n = int(rng.integers(2, 7))
        rep = team.TeamTypes(rng.uniform(0.5, 100, n), rng.uniform(1e-3, 5, n))
        x = rng.uniform(0, 5, n) * rng.integers(0, 2, n)  # some agents use nothing
        t = np.asarray(dpm.capped_clarke_payments(x, rep, kappa))
        v = np.asarray(team.values(x, rep))
        # independent recomputation of the Clarke pivot: the others' values minus the whole congestion cost
        others = lambda y, i: float(np.sum(np.delete(rep.a * y - rep.b * y * y / 2, i))  # noqa: E731
                                    - kappa * np.sum(y) ** 2 / 2)
        x_star = np.asarray(team.optimal_usage(rep, kappa))
        for i in range(n):
            sub = team.TeamTypes(np.delete(rep.a, i), np.delete(rep.b, i))
            best = float(team.optimal_welfare(sub, kappa))
            clarke = best - others(x, i)
            assert t[i] == pytest.approx(min(clarke, max(v[i], 0.0)), abs=1e-9)
            assert 0.0 <= t[i] <= max(v[i], 0.0) + 1e-12
            if x[i] == 0:
                assert t[i] == 0.0
        # at the reported optimum the cap does not bind: the payments are Clarke's
        np.testing.assert_allclose(dpm.capped_clarke_payments(x_star, rep, kappa),
                                   dpm.clarke_pivot_payments(x_star, rep, kappa), atol=1e-9)


def test_simultaneous_first_opens_from_threads_migrate_a_new_sqlite_ledger_once(tmp_path):
    """Two markets of one process opening the same new ledger from worker threads (two
    ``arun`` at once): one migrates, the others wait and find it done."""
    import threading

    from mbiagents.ledger.schema import open_ledger

    for trial in range(3):
        url = f"sqlite:///{tmp_path / f'threads{trial}.db'}"
        n = 6
        barrier, errors, ledgers = threading.Barrier(n), [], []

        def first_open():
            barrier.wait()
            try:
                ledgers.append(open_ledger(url))
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(repr(exc))

        threads = [threading.Thread(target=first_open) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(ledgers) == n
        for led in ledgers:
            led.dispose()
