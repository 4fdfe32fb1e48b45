"""Prompts and step helpers of the two games, over the scripted server."""

from __future__ import annotations

import asyncio

import pytest

from mbiagents.agents import (
    Bounds, Deliverable, LLMClient, LLMSettings, Task, TaskAgentInfo, TeamAction, TeamAgentInfo, TeamReport,
    task_bid, task_bids_model, task_deliver, team_act, team_report,
)
from mbiagents.agents.games import DELIVERABLE_MAX_CHARS, abstain
from mbiagents.agents.prompts import PromptError
from openai_server import Reply

INFO = TeamAgentInfo(agent_id="a1", value=3.5, curvature=1.25, kappa=0.1, n_agents=4)
VB, CB, UB = Bounds(lo=0, hi=100), Bounds(lo=0.01, hi=10), Bounds(lo=0, hi=50)
TASKS = [Task(id="T-1", description="Write a haiku about ledgers."), Task(id="T2", description="Sum 2+2.")]
POET = TaskAgentInfo(agent_id="poet", persona="a terse poet", costs={"T-1": 2.0, "T2": None}, n_agents=3)


def run(srv, fn, **kw):
    async def go():
        async with LLMClient(LLMSettings(backend="custom", base_url=srv.base_url, timeout_s=5, **kw)) as llm:
            return await fn(llm)
    return asyncio.run(go())


def test_team_report_prompt_and_answer(openai_server):
    openai_server.queue(Reply.json({"value": 3.5, "curvature": 1.25}))
    ans = run(openai_server, lambda llm: team_report(
        llm, INFO, value_bounds=VB, curvature_bounds=CB, fallback=TeamReport(value=0, curvature=1), round=2))
    assert ans.ok and isinstance(ans.value, TeamReport) and ans.value.curvature == 1.25 and ans.step == "report"
    sys_msg, user = openai_server.requests[0].messages
    assert sys_msg["role"] == "system" and '"a1"' in sys_msg["content"] and '"maximum":100.0' in sys_msg["content"]
    text = user["content"]
    for needle in ("Round 2", "a = 3.5", "b = 1.25", "kappa = 0.1", "What you will be paid", "between 0 and 100"):
        assert needle in text


def test_team_act_signal_and_default_fallback(openai_server):
    openai_server.default = Reply.json({"usage": 1.7e15})
    ans = run(openai_server, lambda llm: team_act(
        llm, INFO, signal=0.75, usage=2.0, aggregate=6.0, usage_bounds=UB), validation_retries=1)
    assert ans.used_fallback and ans.value == TeamAction(usage=2.0)  # keep current usage
    text = openai_server.requests[0].messages[1]["content"]
    assert "G = a - b*x - kappa*X = 0.75" in text and "x = 2" in text and "X = 6" in text
    assert "less than or equal to 50" in openai_server.requests[1].last_user


def test_team_act_valid(openai_server):
    openai_server.queue(Reply.json({"usage": 2.5}))
    ans = run(openai_server, lambda llm: team_act(llm, INFO, signal=0.75, usage=2.0, aggregate=6.0, usage_bounds=UB))
    assert ans.ok and ans.value.usage == 2.5 and ans.step == "act"


def test_negative_usage_bounds_refused():
    with pytest.raises(ValueError):
        from mbiagents.agents import team_action_model
        team_action_model(Bounds(lo=-1, hi=1))


def test_task_bid_with_null_and_retry_on_missing_task(openai_server):
    openai_server.queue(Reply.json({"T-1": 2.0}), Reply.json({"T-1": 2.0, "T2": None}))
    ans = run(openai_server, lambda llm: task_bid(llm, POET, TASKS, cost_bounds=Bounds(lo=0, hi=1000)))
    assert ans.ok and ans.value.bids() == {"T-1": 2.0, "T2": None} and ans.attempts == 2
    text = openai_server.requests[0].messages[1]["content"]
    assert "- T-1: 2" in text and "- T2: you cannot do this task" in text and "Clarke pivot" in text
    assert "a terse poet" in openai_server.requests[0].messages[0]["content"]
    rf = openai_server.requests[0].response_format["json_schema"]["schema"]
    assert rf["required"] == ["T-1", "T2"] and rf["additionalProperties"] is False


@pytest.mark.parametrize("reply", [
    {"T-1": -3, "T2": None}, {"T-1": 1e18, "T2": None}, {"T-1": 2, "T2": None, "T3": 1},
    {"T-1": "2; DROP TABLE bids", "T2": None}, {"bids": {"T-1": 2}},
])
def test_task_bid_hostile_falls_back_to_abstain(openai_server, reply):
    openai_server.default = Reply.json(reply)
    ans = run(openai_server, lambda llm: task_bid(llm, POET, TASKS, cost_bounds=Bounds(lo=0, hi=1000)),
              validation_retries=1)
    assert ans.used_fallback and ans.value.bids() == {"T-1": None, "T2": None}


def test_task_bids_model_unique_ids():
    with pytest.raises(ValueError):
        task_bids_model([TASKS[0], TASKS[0]], Bounds(lo=0, hi=1))
    assert abstain(task_bids_model(TASKS, Bounds(lo=0, hi=1))).bids() == {"T-1": None, "T2": None}


def test_deliver_text_is_only_text(openai_server):
    openai_server.queue(Reply.json({"text": "Debits left, credits right / the hash chain holds."}))
    ans = run(openai_server, lambda llm: task_deliver(llm, POET, TASKS[0], payment=3.0))
    assert ans.ok and isinstance(ans.value, Deliverable) and ans.value.model_dump() == {"text": ans.value.text}
    assert "pays you 3" in openai_server.requests[0].messages[1]["content"]


@pytest.mark.parametrize("reply", [
    Reply.json({"text": "x" * (DELIVERABLE_MAX_CHARS + 1)}),
    Reply.json({"text": "done", "payment": 1e9}),
    Reply.text("pay me 10^9"),
])
def test_deliver_hostile_falls_back_to_empty(openai_server, reply):
    openai_server.default = reply
    ans = run(openai_server, lambda llm: task_deliver(llm, POET, TASKS[0]), validation_retries=0)
    assert ans.used_fallback and ans.value.text == ""


def test_prompts_dir_override(openai_server, tmp_path):
    (tmp_path / "team_report.md").write_text("CUSTOM: my a is {{ value | num }}; bounds {{ value_bounds.hi | num }}")
    openai_server.queue(Reply.json({"value": 3.5, "curvature": 1.25}))
    ans = run(openai_server, lambda llm: team_report(
        llm, INFO, value_bounds=VB, curvature_bounds=CB, fallback=TeamReport(value=0, curvature=1)),
        prompts_dir=tmp_path)
    assert ans.ok
    sys_msg, user = openai_server.requests[0].messages
    assert user["content"].strip() == "CUSTOM: my a is 3.5; bounds 100"
    assert "JSON schema" in sys_msg["content"]  # not overridden: from the package


def test_override_with_unknown_variable_is_an_error(openai_server, tmp_path):
    (tmp_path / "team_act.md").write_text("{{ no_such_thing }}")
    with pytest.raises(PromptError, match="team_act.md.*no_such_thing"):
        run(openai_server, lambda llm: team_act(llm, INFO, signal=0, usage=0, aggregate=0, usage_bounds=UB),
            prompts_dir=tmp_path)


def test_system_prompt_per_agent_model_and_prompts_dir(tmp_path):
    """The system prompt (rendered once per agent and answer model) follows each of them and
    a scenario's own system.md."""
    from mbiagents.agents.games import _schema_text, team_report_messages, team_report_model

    own = tmp_path / "prompts"
    own.mkdir()
    (own / "system.md").write_text("OWN {{ agent_id }} {{ persona or '-' }} {{ schema | length }}\n", encoding="utf-8")
    plain = LLMClient(LLMSettings(backend="custom", base_url="http://127.0.0.1:9/v1"))
    custom = LLMClient(LLMSettings(backend="custom", base_url="http://127.0.0.1:9/v1", prompts_dir=own))
    other = TeamAgentInfo(agent_id="a2", value=1, curvature=1, kappa=0.1, n_agents=4, persona="careful")
    for _ in range(2):  # the second pass reads what the first one rendered
        (s1, _), m1 = team_report_messages(plain, INFO, VB, CB)
        (s2, _), _m = team_report_messages(plain, other, VB, CB)
        (s3, _), m3 = team_report_messages(plain, INFO, VB, Bounds(lo=0.5, hi=2))
        (c1, _), _m = team_report_messages(custom, other, VB, CB)
        assert '"a1"' in s1["content"] and '"a2"' in s2["content"] and "careful" in s2["content"]
        assert '"maximum":10.0' in s1["content"] and '"maximum":2.0' in s3["content"] and m1 is not m3
        assert c1["content"] == f"OWN a2 careful {len(_schema_text(team_report_model(VB, CB)))}\n"
