"""Agents: a private type, a ``report`` step and an ``act`` step.

Programmatic agents of one game form a vectorised population (``policy.py``): one call
computes every agent's reports or actions as arrays. LLM agents (``llm.py``) are called
one by one, concurrently, through LangGraph ``Send`` fan-out.
"""
