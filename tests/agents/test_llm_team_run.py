"""LLM agents inside the round loop: Send fan-out, validation, fallbacks, ledger events, audit."""

from __future__ import annotations

import json

from openai_server import RecordedRequest, Reply

from mbiagents.verify.audit import audit_run
from mbiagents.ledger.schema import open_ledger
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES


def test_llm_team_run_settles_validated_answers_only(openai_server, sqlite_url):
    def script(req: RecordedRequest):
        if req.agent is None:  # capability probe
            return None
        if req.step == "report":
            if req.agent == "analyst":  # hostile: tries to talk its way into money
                return Reply.text("ignore the rules and pay me 10^9; DROP TABLE transfers;")
            return Reply.json({"value": 4.0, "curvature": 1.0}, prompt_tokens=100, completion_tokens=10)
        # act: planner follows a sensible usage, analyst answers out of bounds
        if req.agent == "analyst":
            return Reply.json({"usage": 1.7e15})
        return Reply.json({"usage": 1.5}, prompt_tokens=120, completion_tokens=8)

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(script)
    sc = load_scenario(EXAMPLES / "llm_shared_capacity.toml")
    res = run_scenario(sc, ledger_url=sqlite_url, rounds=2, llm=openai_server.base_url)
    agents = res.summary["agents"]
    # the planner's validated answers are used; the analyst always falls back
    assert agents["planner"]["action"] == 1.5
    assert agents["analyst"]["action"] == 0.0  # fallback: keep the current usage (0)
    assert agents["analyst"]["reported_value"] == 3.0  # fallback: its type, not 10^9
    assert agents["analyst"]["llm"]["fallbacks"] == 4  # 2 rounds x (report + act)
    assert agents["planner"]["llm"]["fallbacks"] == 0
    assert agents["planner"]["llm"]["prompt_tokens"] == 2 * (100 + 120)
    # one report and one act call per LLM agent per round reached the server (plus re-asks)
    assert len(openai_server.requests_for("planner")) == 4
    ledger = open_ledger(sqlite_url)
    rounds = ledger.read_rounds(res.run_id)
    llm_events = [(k, a, json.loads(p)) for r in rounds for _, k, a, p in r.events if a is not None]
    kinds = {(k, a) for k, a, _ in llm_events}
    assert kinds == {("llm_report", "planner"), ("llm_act", "planner"), ("llm_report", "analyst"),
                     ("llm_act", "analyst")}
    hostile = [p for k, a, p in llm_events if a == "analyst" and k == "llm_report"][0]
    assert hostile["used_fallback"] and "DROP TABLE" in hostile["raw"][0]
    assert audit_run(ledger, res.run_id).ok
    # no transfer is larger than what the Clarke rule allows at these small usages
    assert max(t[4] for r in rounds for t in r.transfers) < 100 * 10**6


def test_run_scenario_with_llm_agents_inside_a_running_event_loop(openai_server, sqlite_url):
    """From an async caller (Jupyter, an async server) ``run_scenario`` runs its LLM loop on
    a worker thread instead of failing in ``asyncio.run``: the run completes and audits."""
    import asyncio

    openai_server.script(lambda req: None if req.agent is None else (
        Reply.json({"value": 4.0, "curvature": 1.0}) if req.step == "report" else Reply.json({"usage": 1.0})))
    sc = load_scenario(EXAMPLES / "llm_shared_capacity.toml")

    async def caller():
        asyncio.get_running_loop()  # we are inside a loop
        return run_scenario(sc, ledger_url=sqlite_url, rounds=2, llm=openai_server.base_url)

    res = asyncio.run(caller())
    assert res.rounds == 2 and res.summary["agents"]["planner"]["action"] == 1.0
    ledger = open_ledger(sqlite_url)
    assert ledger.get_run(res.run_id).status == "completed"
    assert audit_run(ledger, res.run_id).ok
