"""The report's LLM section agrees with the run's own usage totals (scripted server)."""

from __future__ import annotations

from openai_server import RecordedRequest, Reply

from mbiagents.ledger.schema import open_ledger
from mbiagents.report import build_report
from mbiagents.report.data import collect
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES


def test_llm_usage_in_report_matches_run_summary(openai_server, sqlite_url, tmp_path):
    def script(req: RecordedRequest):
        if req.agent is None:
            return None
        if req.agent == "analyst":  # always invalid: re-asked, then the fallback
            return Reply.text("no")
        if req.step == "report":
            return Reply.json({"value": 4.0, "curvature": 1.0}, prompt_tokens=100, completion_tokens=10)
        return Reply.json({"usage": 1.5}, prompt_tokens=120, completion_tokens=8)

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(script)
    res = run_scenario(load_scenario(EXAMPLES / "llm_shared_capacity.toml"), ledger_url=sqlite_url, rounds=2,
                       llm=openai_server.base_url)
    ledger = open_ledger(sqlite_url)
    data = collect(ledger, res.run_id)
    for aid, row in res.summary["agents"].items():
        if "llm" not in row:
            assert aid not in data.llm
            continue
        u, s = data.llm[aid], row["llm"]
        assert (u.calls, u.prompt_tokens, u.completion_tokens, u.fallbacks) == (
            s["calls"], s["prompt_tokens"], s["completion_tokens"], s["fallbacks"])
        assert abs(u.cost - s["cost"]) < 1e-12
        assert sum(u.fallbacks_per_round) == u.fallbacks and len(u.retries_per_round) == 2
    assert data.llm["analyst"].fallbacks == 4 and data.llm["analyst"].retries > 0
    assert data.llm["planner"].fallbacks == 0 and data.llm["planner"].retries == 0
    out = build_report(ledger, res.run_id, tmp_path / "r")
    ledger.dispose()
    assert "llm.png" in out.files and "LLM usage" in out.index.read_text()
