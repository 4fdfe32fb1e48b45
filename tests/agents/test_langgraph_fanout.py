"""The pattern the graph uses: LangGraph ``Send`` fan-out to async nodes sharing one client."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from mbiagents.agents import Bounds, LLMClient, LLMSettings, TeamAgentInfo, TeamReport, open_llm, team_report
from openai_server import Reply

VB, CB = Bounds(lo=0, hi=100), Bounds(lo=0.01, hi=10)


class State(TypedDict):
    agents: list[str]
    answers: Annotated[list, operator.add]


class AgentTask(TypedDict):
    agent: str


def build(llm: LLMClient):
    async def elicit_one(task: AgentTask) -> dict:
        info = TeamAgentInfo(agent_id=task["agent"], value=2.0, curvature=1.0, kappa=0.1, n_agents=8)
        ans = await team_report(llm, info, value_bounds=VB, curvature_bounds=CB,
                                fallback=TeamReport(value=0, curvature=1))
        return {"answers": [ans]}

    g = StateGraph(State)
    g.add_node("elicit_one", elicit_one)
    g.add_conditional_edges(START, lambda s: [Send("elicit_one", {"agent": a}) for a in s["agents"]], ["elicit_one"])
    g.add_edge("elicit_one", END)
    return g.compile()


def test_send_fanout_runs_agents_concurrently(openai_server):
    openai_server.default = Reply.json({"value": 2.0, "curvature": 1.0}, delay_s=0.3)
    openai_server.queue(Reply.json({"value": 1e12, "curvature": 1.0}), agent="a3")  # one bad answer, re-asked

    async def go():
        settings = LLMSettings(backend="custom", base_url=openai_server.base_url, timeout_s=5)
        async with open_llm(settings) as llm:  # probes the server first
            graph = build(llm)
            return await graph.ainvoke({"agents": [f"a{i}" for i in range(8)], "answers": []})

    out = asyncio.run(go())
    answers = {a.agent_id: a for a in out["answers"]}
    assert set(answers) == {f"a{i}" for i in range(8)} and all(a.ok for a in answers.values())
    assert answers["a3"].attempts == 2
    assert openai_server.peak_concurrent >= 4, openai_server.peak_concurrent  # sequential: never more than 1
