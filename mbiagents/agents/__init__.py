"""Agents: a private type, a ``report`` step and an ``act`` step.

Programmatic agents of one game form a vectorised population (``policy.py``): one call
computes every agent's reports or actions as arrays. LLM agents (``llm.py``) are called
one by one, concurrently, through LangGraph ``Send`` fan-out; this package re-exports the
LLM layer: settings, the shared ``AsyncOpenAI`` client, game prompts/answers, and the
embedded local model server.
"""

import importlib
from typing import Any

#: name -> submodule; imported on first use (PEP 562), so that importing the policy
#: population (``mbiagents.agents.policy``) does not load ``openai``
_LAZY = {
    **dict.fromkeys(("Bounds", "Deliverable", "Task", "TaskAgentInfo", "TaskBids", "TeamAction", "TeamAgentInfo",
                     "TeamReport", "task_bid", "task_bids_model", "task_deliver", "team_act", "team_action_model",
                     "team_report", "team_report_model"), ".games"),
    **dict.fromkeys(("RAW_TEXT_LIMIT", "Answer", "CallRecord", "LLMClient", "LLMConfigError"), ".llm"),
    **dict.fromkeys(("LocalBackendUnavailable", "LocalModelServer", "local_backend_available", "open_llm",
                     "local_server"), ".local_server"),
    **dict.fromkeys(("LLMSettings", "resolve_llm_settings"), "mbiagents.llm_settings"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    return module if module.__name__.endswith("." + name) else getattr(module, name)


__all__ = [
    "Answer", "Bounds", "CallRecord", "Deliverable", "LLMClient", "LLMConfigError", "LLMSettings",
    "LocalBackendUnavailable", "LocalModelServer", "RAW_TEXT_LIMIT", "Task", "TaskAgentInfo", "TaskBids",
    "TeamAction", "TeamAgentInfo", "TeamReport", "local_backend_available", "open_llm",
    "resolve_llm_settings", "task_bid", "task_bids_model", "task_deliver", "team_act",
    "team_action_model", "team_report", "team_report_model",
]
