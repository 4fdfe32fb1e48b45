"""Agents: a private type, a ``report`` step and an ``act`` step.

Programmatic agents of one game form a vectorised population (``policy.py``): one call
computes every agent's reports or actions as arrays. LLM agents (``llm.py``) are called
one by one, concurrently, through LangGraph ``Send`` fan-out; this package re-exports the
LLM layer: settings, the shared ``AsyncOpenAI`` client, game prompts/answers, and the
embedded local model server.
"""

from .games import (
    Bounds,
    Deliverable,
    Task,
    TaskAgentInfo,
    TaskBids,
    TeamAction,
    TeamAgentInfo,
    TeamReport,
    task_bid,
    task_bids_model,
    task_deliver,
    team_act,
    team_action_model,
    team_report,
    team_report_model,
)
from .llm import RAW_TEXT_LIMIT, Answer, CallRecord, LLMClient, LLMConfigError
from .local_server import LocalBackendUnavailable, LocalModelServer, local_backend_available, open_llm
from mbiagents.llm_settings import LLMSettings, resolve_llm_settings

__all__ = [
    "Answer", "Bounds", "CallRecord", "Deliverable", "LLMClient", "LLMConfigError", "LLMSettings",
    "LocalBackendUnavailable", "LocalModelServer", "RAW_TEXT_LIMIT", "Task", "TaskAgentInfo", "TaskBids",
    "TeamAction", "TeamAgentInfo", "TeamReport", "local_backend_available", "open_llm",
    "resolve_llm_settings", "task_bid", "task_bids_model", "task_deliver", "team_act",
    "team_action_model", "team_report", "team_report_model",
]
