"""LLM agents in the task market: bids through Send fan-out, validation, fallback, deliverables."""

from __future__ import annotations

import json

from openai_server import RecordedRequest, Reply

from mbiagents.verify.audit import audit_run
from mbiagents.ledger.schema import open_ledger
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES


def test_llm_task_market_settles_validated_bids_only(openai_server, sqlite_url):
    def script(req: RecordedRequest):
        if req.agent is None:  # capability probe
            return None
        if req.step == "report":
            if req.agent == "backend":
                return Reply.json({"api-endpoint": 4.0, "churn-report": 9.0, "release-notes": 7.0},
                                  prompt_tokens=200, completion_tokens=20)
            if req.agent == "analyst":  # hostile: a negative bid, then prose, to grab every task
                return Reply.json({"api-endpoint": -1e9, "churn-report": -1e9, "release-notes": -1e9})
            # the writer bids truthfully
            return Reply.json({"api-endpoint": 15.0, "churn-report": 11.0, "release-notes": 2.5})
        return Reply.json({"text": f"deliverable of {req.agent}"})

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(script)
    sc = load_scenario(EXAMPLES / "llm_task_market.toml")
    res = run_scenario(sc, ledger_url=sqlite_url, llm=openai_server.base_url)
    s = res.summary
    # the analyst's hostile bid never validates: it abstains, wins nothing and is paid nothing.
    # Unit demand, costs backend (4, 9, 7), writer (15, 11, 2.5): the optimum leaves churn-report
    # undone (W* = 16 + 7.5); Clarke pivot: backend gets 4 + 23.5 - 7.5 = 20, writer 2.5 + 23.5 - 16 = 10.
    assert s["assignment"] == {"api-endpoint": "backend", "churn-report": None, "release-notes": "writer"}
    a = s["agents"]
    assert a["analyst"]["tasks"] == [] and a["analyst"]["payment"] == 0.0
    assert a["analyst"]["llm"]["fallbacks"] == 1 and a["backend"]["llm"]["fallbacks"] == 0
    assert a["backend"]["payment"] == -20.0 and a["writer"]["payment"] == -10.0
    assert a["backend"]["utility"] == 16.0 and a["writer"]["utility"] == 7.5
    assert s["welfare"] == 23.5 and s["optimal_welfare"] == 35.5  # the analyst (churn at 3) abstained
    ledger = open_ledger(sqlite_url)
    rounds = ledger.read_rounds(res.run_id)
    ev = [(k, ag, json.loads(p)) for r in rounds for _, k, ag, p in r.events if ag is not None]
    delivered = {ag: p["value"]["text"] for k, ag, p in ev if k == "llm_deliver"}
    assert delivered == {"backend": "deliverable of backend", "writer": "deliverable of writer"}
    hostile = [p for k, ag, p in ev if k == "llm_report" and ag == "analyst"][0]
    assert hostile["used_fallback"] and hostile["errors"]
    report = audit_run(ledger, res.run_id)
    assert report.ok, report.as_json()
