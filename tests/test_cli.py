"""The ``mbi`` command end to end: run, audit, tampering, bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from mbiagents.cli import app
from mechanisms.games import team

from tests.conftest import EXAMPLES, drop_append_only_triggers

runner = CliRunner()


def run_json(*args):
    res = runner.invoke(app, ["run", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def run_example(tmp_path_factory, name):
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'ledger.db'}"
    return url, run_json(str(EXAMPLES / name), "--ledger", url)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    return run_example(tmp_path_factory, "shared_capacity.toml")


def test_run_reaches_closed_form_optimum(example_run):
    _, out = example_run
    a = jnp.array([4.0, 3.0, 2.5, 1.8])
    b = jnp.array([1.0, 0.5, 2.0, 1.0])
    w_star = float(team.optimal_welfare(team.TeamTypes(a, b), 0.5))  # independent of the run
    assert out["converged"]
    assert abs(out["welfare"] - w_star) <= 1e-6 * abs(w_star)
    assert abs(out["optimal_welfare"] - w_star) <= 1e-12
    assert set(out["agents"]) == {"alice", "bob", "carol", "dan"}
    for row in out["agents"].values():
        assert row["utility"] == pytest.approx(row["value"] - row["payment"], abs=1e-12)
        assert row["utility"] >= -1e-6  # IR for truthful agents


def test_audit_passes_then_catches_a_changed_amount(example_run, tmp_path):
    url, out = example_run
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", out["run_id"], "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and {c["name"] for c in report["checks"]} >= {
        "double_entry", "idempotency", "hash_chain", "rounds_complete", "payments_recompute"}
    failed = audit_tampered_copy(url, out["run_id"], tmp_path, round_index=3, delta=1)
    assert "round 3" in failed["hash_chain"]
    assert "round 3" in failed["payments_recompute"]
    assert "np.float64" not in failed["payments_recompute"]  # plain floats in messages (issue 13)


def audit_tampered_copy(url, run_id, tmp_path, round_index, delta):
    """Add ``delta`` minor units to one transfer of a round in a copy of the ledger; audit
    the copy (must exit 1) and return ``{failed check: first failure}``."""
    dst = tmp_path / "tampered.db"
    shutil.copy(Path(url.removeprefix("sqlite:///")), dst)
    engine = create_engine(f"sqlite:///{dst}")
    drop_append_only_triggers(engine)  # the database refuses the update until then, as for an attacker
    with engine.begin() as conn:
        tid = conn.execute(text("select id from transfers where round_index = :r order by id limit 1"),
                           {"r": round_index}).scalar_one()
        conn.execute(text("update transfers set amount = amount + :d where id = :i"), {"i": tid, "d": delta})
    engine.dispose()
    res = runner.invoke(app, ["audit", "--ledger", f"sqlite:///{dst}", "--run", run_id, "--json"])
    assert res.exit_code == 1
    return {c["name"]: c["first_failure"] for c in json.loads(res.stdout)["checks"] if not c["ok"]}


def test_misreporting_agent_earns_less_than_truthful(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    honest = run_json(str(EXAMPLES / "shared_capacity.toml"), "--ledger", url)
    liar = run_json(str(EXAMPLES / "shared_capacity_misreport.toml"), "--ledger", url)
    assert liar["agents"]["dan"]["utility"] < honest["agents"]["dan"]["utility"] - 1e-3
    assert liar["welfare"] < honest["welfare"]


def test_round_limit(tmp_path):
    out = run_json(str(EXAMPLES / "shared_capacity.toml"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}",
                   "--rounds", "3")
    assert out["rounds"] == 3 and not out["converged"]


@pytest.mark.parametrize("content, fragment", [
    (None, "no such scenario file"),
    ('[scenario]\nname="x"\ngame="team"\nmechanism="dpm"\n[game]\ncongestion=1\n[[agents]]\nid="a"\nvalue=1\ncurvature=0\n',
     "agents[0].curvature"),
    ('[scenario]\nname="x"\ngame="team"\nmechanism="vcg"\n', "scenario.mechanism"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, content, fragment):
    scen = tmp_path / "s.toml"
    if content is not None:
        scen.write_text(content)
    ledger = tmp_path / "l.db"
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{ledger}"])
    assert res.exit_code == 2
    assert fragment in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert not ledger.exists()


def test_audit_unknown_run_and_empty_ledger(example_run, tmp_path):
    url, _ = example_run
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", "nope"])
    assert res.exit_code == 2 and "no run 'nope'" in res.stderr
    res = runner.invoke(app, ["audit", "--ledger", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert res.exit_code == 2 and "empty" in res.stderr


def test_console_script_help_and_run(tmp_path):
    mbi = shutil.which("mbi") or str(Path(sys.executable).with_name("mbi"))
    res = subprocess.run([mbi, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "run" in res.stdout and "audit" in res.stdout
    res = subprocess.run([mbi, "run", str(EXAMPLES / "shared_capacity.toml"), "--json"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "mbi-ledger.db").exists()  # the default ledger is a SQLite file in the working folder


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    return run_example(tmp_path_factory, "task_market.toml")


def test_task_market_run_json_shape_and_sign(task_run):
    _, out = task_run
    assert {"run_id", "rounds", "converged", "welfare", "optimal_welfare", "agents", "assignment"} <= set(out)
    assert out["rounds"] == 4 and out["welfare"] <= out["optimal_welfare"] + 1e-9
    assert out["assignment"] == {"write-docs": "alice", "fix-bug": "bob", "review-pr": "carol", "release": "dan"}
    for row in out["agents"].values():
        assert row["utility"] == pytest.approx(-row["cost"] - row["payment"], abs=1e-9)
        if row["tasks"]:
            assert row["payment"] < 0  # paid for its work
    dan = out["agents"]["dan"]
    assert dan["utility"] < dan["utility_if_truthful"]  # the misreport costs it


def test_task_market_summary_table(tmp_path):
    res = runner.invoke(app, ["run", str(EXAMPLES / "task_market.toml"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert res.exit_code == 0, res.output
    assert "tasks" in res.stdout and "fix-bug x4" in res.stdout and "assignment (last round)" in res.stdout
    assert "utility if" in res.stdout


def test_task_market_audit_passes_then_catches_tampering(task_run, tmp_path):
    url, out = task_run
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", out["run_id"], "--json"])
    assert res.exit_code == 0, res.output
    names = {c["name"] for c in json.loads(res.stdout)["checks"]}
    assert {"payments_recompute", "assignment_recompute", "ir", "dsic_search", "efficiency"} <= names
    failed = audit_tampered_copy(url, out["run_id"], tmp_path, round_index=2, delta=500_000)  # a winner claims more
    assert "round 2" in failed["payments_recompute"] and "round 2" in failed["hash_chain"]


def test_task_market_bad_input_exit_2_writes_nothing(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text('[scenario]\nname="x"\ngame="assignment"\nmechanism="vcg"\n[[tasks]]\nid="t"\nvalue=1\n'
                    '[[agents]]\nid="a"\ncosts={ t = -1.0 }\n')
    ledger = tmp_path / "l.db"
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{ledger}"])
    assert res.exit_code == 2 and "agents[0].costs.t" in res.stderr and res.stderr.count("\n") == 1
    assert not ledger.exists()


def test_game_of_the_wrong_type_is_a_one_line_error(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text('[scenario]\nname="x"\ngame=["team"]\nmechanism="dpm"\n')
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert res.exit_code == 2 and "scenario.game: unknown game" in res.stderr and "Traceback" not in res.output


def test_unusable_llm_backend_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ledger = tmp_path / "l.db"
    res = runner.invoke(app, ["run", str(EXAMPLES / "llm_shared_capacity.toml"), "--llm", "openai",
                              "--ledger", f"sqlite:///{ledger}"])
    assert res.exit_code == 2 and "OPENAI_API_KEY" in res.stderr and res.stderr.count("\n") == 1
    assert not ledger.exists()


def test_report_folder_is_not_created_for_a_bad_scenario(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text('[scenario]\nname="x"\ngame="team"\nmechanism="dpm"\n[game]\ncongestion=0\n')
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{tmp_path / 'l.db'}",
                              "--report", str(tmp_path / "rep")])
    assert res.exit_code == 2 and not (tmp_path / "rep").exists()


def test_run_json_is_strict_json_for_short_principal_runs(tmp_path):
    def no_nan(name):
        raise AssertionError(f"{name} in --json output")

    res = runner.invoke(app, ["run", str(EXAMPLES / "principal.toml"), "--rounds", "10", "--json",
                              "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout, parse_constant=no_nan)
    assert out["regret"]["exponent_in_run"] is None


def test_tampered_run_header_fails_the_audit_not_the_input(example_run, tmp_path):
    url, out = example_run
    dst = tmp_path / "tampered.db"
    shutil.copy(Path(url.removeprefix("sqlite:///")), dst)
    engine = create_engine(f"sqlite:///{dst}")
    with engine.begin() as conn:  # runs are not append-only (status is set at the end): no trigger to drop
        conn.execute(text("update runs set scenario_json = '{}' where id = :i"), {"i": out["run_id"]})
    engine.dispose()
    res = runner.invoke(app, ["audit", "--ledger", f"sqlite:///{dst}", "--run", out["run_id"], "--json"])
    assert res.exit_code == 1
    failed = {c["name"]: c["first_failure"] for c in json.loads(res.stdout)["checks"] if not c["ok"]}
    assert "run header" in failed["hash_chain"]


@pytest.mark.parametrize("width", [80, 120])
def test_summary_shows_ids_whole_on_a_narrow_terminal(width, monkeypatch):
    # issue 13: an 80-column terminal cut agent ids to "plann…"
    import io

    from rich.console import Console

    import mbiagents.cli as cli
    from mbiagents.runner import RunResult

    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(width=width, file=buf))
    use = {"calls": 3, "prompt_tokens": 100, "completion_tokens": 20, "cost": 0.0, "fallbacks": 0}
    ids = ("planner-operations-team", "analyst-interactive", "writer")
    agents = {a: {"tasks": ["churn-report", "release-notes"], "cost": 3.0, "payment": -12.5, "utility": 9.5,
                  "utility_if_truthful": 1.0, "llm": use} for a in ids}
    res = RunResult("r" * 32, 1, False, {"agents": agents, "welfare": 1.0, "optimal_welfare": 2.0, "welfare_gap": 0.5},
                    "sqlite:///x.db", columns=("tasks", "cost", "payment", "utility", "utility_if_truthful"))
    cli._print_run_summary("llm-task-market", res)
    text_out = buf.getvalue()
    assert "…" not in text_out
    assert max(map(len, text_out.splitlines())) <= width or width == 80  # narrow: one line per agent may wrap
    for word in (*ids, "churn-report", "release-notes", "-12.500000", "1.000000"):
        assert word in text_out


def test_run_help_shows_defaults_and_llm_table_literally():
    res = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    flat = " ".join(res.output.split())  # click wraps at the terminal width
    assert "[default: sqlite:///mbi-" in flat and "scenario's [llm] table" in flat


def test_run_summary_of_a_large_population_shows_the_first_agents_and_a_count(tmp_path):
    """A team of 80 generated agents: the table shows the SUMMARY_ROWS agents that paid the
    most (recomputed from --json, which still has every agent) and says how many more there are."""
    from mbiagents.cli import SUMMARY_ROWS

    scen = tmp_path / "pop.toml"
    scen.write_text('[scenario]\nname="pop"\ngame="team"\nmechanism="dpm"\nrounds=3\nseed=1\n'
                    '[game]\ncongestion=0.5\n[population]\nsize=80\nvalue=[1.0, 5.0]\ncurvature=[0.5, 2.0]\n')
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"], terminal_width=200)
    assert res.exit_code == 0, res.output
    shown = {w for line in res.output.splitlines() for w in line.replace("│", " ").split() if w[:1] == "a"
             and w[1:].isdigit()}
    assert f"and {80 - SUMMARY_ROWS:,} more agents" in res.output
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{tmp_path / 'l2.db'}", "--json"])
    agents = json.loads(res.stdout)["agents"]
    assert res.exit_code == 0 and len(agents) == 80
    paid = sorted(agents, key=lambda a: -abs(agents[a]["total_paid"]))  # stable: ties in id order
    assert shown == set(paid[:SUMMARY_ROWS])
    assert any(agents[a]["total_paid"] > 0 for a in shown)  # the agents that paid are among those shown
