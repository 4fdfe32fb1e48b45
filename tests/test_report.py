"""``mbi report``: the data behind the plots, recomputed independently; bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import TREASURY, RoundRecord, canonical_json
from mbiagents.markets.report_data import default_report_data
from mbiagents.report import build_report
from mbiagents.report.data import ReportData, collect, llm_usage
from mbiagents.report.plots import MAX_AGENTS_PLOTTED, incentives_plot, llm_plot, plotted_agents, tasks_plot
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES

runner = CliRunner()
A = np.array([4.0, 3.0, 2.5, 1.8])  # examples/shared_capacity.toml
B = np.array([1.0, 0.5, 2.0, 1.0])
KAPPA = 0.5
ROUNDS = 12


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'ledger.db'}"
    res = run_scenario(load_scenario(EXAMPLES / "shared_capacity.toml"), ledger_url=url, rounds=ROUNDS)
    ledger = open_ledger(url)
    yield url, res.run_id, collect(ledger, res.run_id), ledger
    ledger.dispose()


def _welfare(x: np.ndarray) -> float:  # W(x) = sum a x - b x^2/2 - kappa X^2/2, by hand
    return float(np.sum(A * x - 0.5 * B * x * x) - 0.5 * KAPPA * np.sum(x) ** 2)


def test_welfare_series_recomputed_independently(small_run):
    _, _, data, ledger = small_run
    assert data.n_rounds == ROUNDS and data.rounds == list(range(ROUNDS))
    w_star = -minimize(lambda x: -_welfare(x), np.ones(4), bounds=[(0, None)] * 4, tol=1e-14).fun
    xs = [np.array(json.loads(r.payload_json(seq))["x"]) for r in ledger.read_rounds(data.run["id"])
          for seq, k, a, p in r.events if k == "actions"]
    expected = [_welfare(x) for x in xs]
    assert data.series["welfare"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert data.series["optimal_welfare"] == pytest.approx([w_star] * ROUNDS, rel=1e-8)
    gap = np.array(data.welfare_gap())
    assert np.all(gap >= -1e-9) and gap[-1] < gap[0]  # gradient play closes the gap
    for i, a in enumerate(data.agent_ids):
        assert data.series["actions"][a] == [x[i] for x in xs]


def test_payments_budget_and_utility_match_the_ledger(small_run):
    _, run_id, data, ledger = small_run
    balances = ledger.balances(run_id)
    for a in data.agent_ids:
        assert data.cumulative_payments()[a][-1] == pytest.approx(-balances[f"agent:{a}"] / 1e6, abs=1e-9)
    assert float(np.sum(data.collected)) == pytest.approx(balances[TREASURY] / 1e6, abs=1e-9)
    xs = np.column_stack([data.series["actions"][a] for a in data.agent_ids])
    values = A * xs - 0.5 * B * xs * xs
    cost = 0.5 * KAPPA * xs.sum(axis=1) ** 2
    assert data.series["operator_cost"] == pytest.approx(cost.tolist(), rel=1e-12)
    util = data.utility()
    for i, a in enumerate(data.agent_ids):
        assert util[a] == pytest.approx((values[:, i] - np.array(data.payments[a])).tolist(), abs=1e-12)
    assert data.audit.ok and not data.llm


def test_report_files_and_self_contained_html(small_run, tmp_path):
    url, run_id, _, ledger = small_run
    res = build_report(ledger, run_id, tmp_path / "out")
    assert res.files == ["welfare.png", "actions.png", "payments.png", "budget.png", "report.json", "index.html"]
    for f in res.files:
        assert (tmp_path / "out" / f).stat().st_size > 0
    html = res.index.read_text()
    assert html.count('src="data:image/png;base64,') == 4
    assert "http://" not in html and "https://" not in html
    assert html.index("Audit") < html.index("Welfare")  # verdict at the top
    for name in ("double_entry", "hash_chain", "payments_recompute", "signals_recompute"):
        assert name in html
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["audit"]["ok"] and len(saved["series"]["welfare"]) == ROUNDS


# ---- generic series: task markets, incentives, LLM agents, many agents --------------------
def _rec(index: int, events: list[tuple[str, str | None, object]]) -> RoundRecord:
    return RoundRecord(index, "", "", [(s, k, a, canonical_json(p)) for s, (k, a, p) in enumerate(events)])


def _answer(agent, step, *, fallback=False, attempts=1, calls=1, tokens=(100, 10), cost=0.002):
    rec = {"agent_id": agent, "step": step, "attempt": 0, "model": "m-1", "latency_s": 0.5,
           "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cost": cost}
    return {"agent_id": agent, "step": step, "value": {}, "used_fallback": fallback, "attempts": attempts,
            "errors": ["bad json"] * (attempts - 1), "raw": [], "records": [rec] * calls}


def test_default_report_data_reads_assignment_costs_and_incentives():
    ids = ["a", "b"]
    rounds = [
        _rec(0, [("tasks", None, {"ids": ["t1", "t2"], "values": [5, 5]}),
                 ("reports", None, {"costs": [[1.0, None], [2.0, 3.0]]}),
                 ("outcome", None, {"assignment": {"t1": "a", "t2": "b"}, "welfare": 7.0, "optimal_welfare": 7.0,
                                    "incentives": {"toll": 0.1}, "social_cost": 3.0})]),
        _rec(1, [("tasks", None, {"ids": ["t3", "t4"], "values": [5, 5]}),
                 ("outcome", None, {"assignment": {"t3": "b", "t4": None}, "welfare": 4.0, "optimal_welfare": 5.0,
                                    "incentives": {"toll": 0.3}, "social_cost": 2.5})]),
    ]
    d = default_report_data(ids, rounds)
    assert d["assignment"] == [{"t1": "a", "t2": "b"}, {"t3": "b", "t4": None}]
    assert d["reported_costs"][0] == {"a": {"t1": 1.0}, "b": {"t1": 2.0, "t2": 3.0}}
    assert d["reported_costs"][1] == {"a": {"t3": 1.0}, "b": {"t3": 2.0, "t4": 3.0}}  # carried forward
    assert d["welfare"] == [7.0, 4.0] and d["optimal_welfare"] == [7.0, 5.0]
    assert d["incentives"] == {"toll": [0.1, 0.3]} and d["social_cost"] == [3.0, 2.5]
    assert "actions" not in d and "signals" not in d


def test_task_incentive_and_llm_sections_render_only_with_data(tmp_path):
    ids = ["a", "b"]
    rounds = [
        _rec(0, [("outcome", None, {"assignment": {"t1": "a"}}),
                 ("llm_report", "a", _answer("a", "report")),
                 ("llm_act", "a", _answer("a", "act", fallback=True, attempts=3, calls=3))]),
        _rec(1, [("outcome", None, {"assignment": {"t1": "b"}}),
                 ("llm_report", "b", _answer("b", "report", tokens=(50, 5)))]),
    ]
    usage = llm_usage(rounds)
    assert usage["a"].calls == 4 and usage["a"].prompt_tokens == 400 and usage["a"].completion_tokens == 40
    assert usage["a"].fallbacks == 1 and usage["a"].retries == 2 and usage["a"].errors == 2
    assert usage["a"].fallbacks_per_round == [1, 0] and usage["a"].retries_per_round == [2, 0]
    assert usage["b"].tokens_per_round == [0, 55] and usage["b"].models == ["m-1"]
    series = default_report_data(ids, rounds)
    series["reported_costs"] = [{"a": {"t1": 1.0}}, {"b": {"t1": 2.0}}]
    series["true_costs"] = [{"a": {"t1": 1.5}}, {"b": {"t1": 2.0}}]
    data = ReportData(run={"id": "x"}, agent_ids=ids, rounds=[0, 1], series=series,
                      payments={"a": [0.0, 0.0], "b": [0.0, 0.0]}, audit=None, llm=usage)
    assert tasks_plot(data, tmp_path) and (tmp_path / "tasks.png").exists()
    assert llm_plot(data, tmp_path) and (tmp_path / "llm.png").exists()
    assert incentives_plot(data, tmp_path) is None  # no incentive data: no section
    bare = ReportData(run={"id": "x"}, agent_ids=ids, rounds=[0, 1], series={}, payments=data.payments, audit=None)
    assert tasks_plot(bare, tmp_path) is None and llm_plot(bare, tmp_path) is None


def test_many_agents_plot_a_named_subset():
    ids = [f"agent{i:02d}" for i in range(20)]
    payments = {a: [float(i % 7)] for i, a in enumerate(ids)}
    data = ReportData(run={}, agent_ids=ids, rounds=[0], series={}, payments=payments, audit=None)
    shown, note = plotted_agents(data)
    assert len(shown) == MAX_AGENTS_PLOTTED and shown == sorted(shown, key=ids.index)
    assert sorted(payments[a][0] for a in shown) == [4.0] * 3 + [5.0] * 3 + [6.0] * 2 and "8 of 20 agents" in note
    assert plotted_agents(ReportData({}, ids[:3], [0], {}, payments, None))[1] == ""


# ---- the command ------------------------------------------------------------------------
def _one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0]


def test_cli_report_json(small_run, tmp_path):
    url, run_id, _, _ = small_run
    res = runner.invoke(app, ["report", "--ledger", url, "--run", run_id, "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["audit_ok"] and out["run_id"] == run_id and Path(out["index"]).is_file()


def test_cli_report_unknown_run(small_run, tmp_path):
    res = runner.invoke(app, ["report", "--ledger", small_run[0], "--run", "nope", "--out", str(tmp_path / "r")])
    _one_line_error(res, "no run 'nope'")


def test_cli_report_empty_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    ledger = open_ledger(url)
    sc = load_scenario(EXAMPLES / "shared_capacity.toml")
    run_id = ledger.create_run(name="empty", game="team", mechanism="dpm", seed=1,
                               scenario=sc.model_dump(mode="json"), agent_ids=[a.id for a in sc.agents])
    ledger.dispose()
    res = runner.invoke(app, ["report", "--ledger", url, "--run", run_id, "--out", str(tmp_path / "r")])
    _one_line_error(res, "no rounds")


def test_cli_report_unwritable_folder(small_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = runner.invoke(app, ["report", "--ledger", small_run[0], "--out", str(blocker / "sub")])
    _one_line_error(res, "cannot write")
    res = runner.invoke(app, ["report", "--ledger", small_run[0], "--out", str(blocker)])
    _one_line_error(res, "not a folder")


def test_cli_run_report_checks_the_folder_before_running(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    db = tmp_path / "l.db"
    res = runner.invoke(app, ["run", str(EXAMPLES / "shared_capacity.toml"), "--ledger", f"sqlite:///{db}",
                              "--rounds", "2", "--report", str(blocker / "r")])
    _one_line_error(res, "cannot write")
    assert not db.exists()  # nothing ran


def test_cli_run_writes_the_report(tmp_path):
    res = runner.invoke(app, ["run", str(EXAMPLES / "shared_capacity.toml"), "--ledger",
                              f"sqlite:///{tmp_path / 'l.db'}", "--rounds", "3", "--report", str(tmp_path / "r"),
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["report"]["audit_ok"] and (tmp_path / "r" / "index.html").is_file()
    assert math.isfinite(out["welfare"])


def test_failed_audit_is_shown_at_the_top(small_run):
    from dataclasses import replace

    from mbiagents.verify.audit import AuditReport, Check
    from mbiagents.report import render_html

    _, _, data, _ = small_run
    bad = Check("payments_recompute")
    bad.fail("round 3 agent bob: transferred 5 minor units, recomputed payment 4e-06 rounds to 4")
    audit = AuditReport(data.run["id"], data.n_rounds, 0, [Check("double_entry"), bad])
    html = render_html(replace(data, audit=audit), [], {}, "")
    assert 'class="verdict fail">FAIL' in html and "FAIL (1)" in html
    assert html.index("round 3 agent bob") < html.index("Summary")


def test_other_markets_get_the_generic_sections(tmp_path):
    """A congestion (tolling) run: logged welfare and tolls plot; no actions or gap without data."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    res = run_scenario(load_scenario(EXAMPLES / "tolling.toml"), ledger_url=url, rounds=10)
    ledger = open_ledger(url)
    out = build_report(ledger, res.run_id, tmp_path / "r")
    data = collect(ledger, res.run_id)
    ledger.dispose()
    assert out.audit_ok and out.files == ["welfare.png", "payments.png", "budget.png", "report.json", "index.html"]
    assert data.welfare_gap() is None and "actions" not in data.series
    assert float(np.sum(data.collected)) == pytest.approx(sum(sum(p) for p in data.payments.values()))


def test_social_gradient_run_reports_tolls_and_social_cost(tmp_path):
    """Pigou: the posted toll series ends at the Pigouvian 1/2 and welfare at -3/4 (= -S*)."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    res = run_scenario(load_scenario(EXAMPLES / "pigou_tolling.toml"), ledger_url=url)
    ledger = open_ledger(url)
    out = build_report(ledger, res.run_id, tmp_path / "r")
    data = collect(ledger, res.run_id)
    ledger.dispose()
    assert out.audit_ok and "incentives.png" in out.files
    tolls = data.series["incentives"]
    assert max(v[-1] for v in tolls.values()) == pytest.approx(0.5, abs=1e-3)
    assert data.series["social_cost"][-1] == pytest.approx(0.75, abs=1e-6)
    assert data.series["welfare"][-1] == pytest.approx(data.series["optimal_welfare"][-1], abs=1e-6)
