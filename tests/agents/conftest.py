"""Fixtures for the LLM layer: a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_server import ScriptedOpenAIServer  # noqa: E402


@pytest.fixture(scope="session")
def _openai_server_session():
    with ScriptedOpenAIServer() as srv:
        yield srv


@pytest.fixture
def openai_server(_openai_server_session: ScriptedOpenAIServer) -> ScriptedOpenAIServer:
    """The shared scripted server, reset (queues, script, flags, requests) for each test."""
    _openai_server_session.reset()
    return _openai_server_session
