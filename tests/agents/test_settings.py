import pytest
from pydantic import ValidationError

from mbiagents.agents import LLMClient, LLMConfigError, LLMSettings, resolve_llm_settings


def test_defaults_are_offline_local():
    s = resolve_llm_settings(None, env={})
    assert s.backend == "local" and s.base_url is None
    assert s.effective_model == "gemma-3-270m"


def test_table_with_base_url_is_custom():
    s = resolve_llm_settings({"base_url": "http://127.0.0.1:11434/v1", "model": "llama3"}, env={})
    assert s.backend == "custom" and s.effective_model == "llama3"


def test_unknown_key_rejected():
    with pytest.raises(ValidationError):
        resolve_llm_settings({"model": "x", "api_key": "sk-should-not-be-here"}, env={})


def test_bad_values_rejected():
    with pytest.raises(ValidationError):
        resolve_llm_settings({"concurrency": 0}, env={})
    with pytest.raises(ValidationError):
        resolve_llm_settings({"backend": "custom"}, env={})


def test_env_overrides_table():
    env = {"MBI_LLM_MODEL": "qwen", "MBI_LLM_TIMEOUT_S": "5", "MBI_LLM_CONCURRENCY": "3",
           "MBI_LLM_BASE_URL": "http://10.0.0.1:8000/v1"}
    s = resolve_llm_settings({"model": "gpt-4o", "timeout_s": 30}, env=env)
    assert (s.backend, s.base_url, s.effective_model, s.timeout_s, s.concurrency) == (
        "custom", "http://10.0.0.1:8000/v1", "qwen", 5.0, 3)


def test_cli_overrides_env_and_table():
    table = {"base_url": "http://host:1/v1", "model": "m1"}
    env = {"MBI_LLM_BACKEND": "openai"}
    assert resolve_llm_settings(table, env=env).backend == "openai"
    s = resolve_llm_settings(table, env=env, cli="local")
    assert s.backend == "local" and s.base_url is None and s.effective_model == "m1"
    s = resolve_llm_settings(table, env=env, cli="http://127.0.0.1:9/v1")
    assert s.backend == "custom" and s.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError):
        resolve_llm_settings(table, env={}, cli="gpt-5")


def test_settings_instance_passes_through():
    s0 = LLMSettings(backend="openai", model="gpt-4.1")
    s = resolve_llm_settings(s0, env={"MBI_LLM_TEMPERATURE": "0"})
    assert s.backend == "openai" and s.effective_model == "gpt-4.1" and s.temperature == 0.0


def test_openai_backend_needs_key(monkeypatch):
    monkeypatch.delenv("MBI_TEST_NO_SUCH_KEY", raising=False)
    s = LLMSettings(backend="openai", api_key_env="MBI_TEST_NO_SUCH_KEY")
    with pytest.raises(LLMConfigError, match="MBI_TEST_NO_SUCH_KEY"):
        LLMClient(s)


def test_key_is_never_in_settings(monkeypatch):
    monkeypatch.setenv("MBI_TEST_API_KEY", "sk-very-secret")
    s = resolve_llm_settings({"api_key_env": "MBI_TEST_API_KEY", "backend": "openai"}, env={})
    assert "sk-very-secret" not in s.model_dump_json() and "sk-very-secret" not in repr(s)
    assert s.api_key() == "sk-very-secret"
