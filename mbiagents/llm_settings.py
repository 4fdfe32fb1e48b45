"""Settings of the LLM backend: the scenario's ``[llm]`` table, environment, ``--llm``.

Precedence (lowest to highest): built-in defaults < scenario ``[llm]`` table <
environment variables < the CLI's ``--llm BACKEND`` value.

Environment variables (all optional):

=============================  ==============================================
``MBI_LLM_BACKEND``            ``local``, ``openai`` or a URL (same as ``--llm``)
``MBI_LLM_BASE_URL``           OpenAI-compatible endpoint, e.g.
                               ``http://127.0.0.1:11434/v1`` (Ollama)
``MBI_LLM_MODEL``              model name sent to the endpoint
``MBI_LLM_API_KEY_ENV``        *name* of the variable holding the API key
``MBI_LLM_TIMEOUT_S``          per-HTTP-request timeout (seconds)
``MBI_LLM_MAX_RETRIES``        the SDK's own retries (429/5xx/connection)
``MBI_LLM_VALIDATION_RETRIES`` re-asks after an invalid answer
``MBI_LLM_CONCURRENCY``        max. concurrent requests per client
``MBI_LLM_TEMPERATURE``        sampling temperature
``MBI_LLM_MAX_TOKENS``         completion token cap per request
``MBI_LLM_PRICE_PER_1K_TOKENS`` price used for ``CallRecord.cost``
``MBI_LLM_PROMPTS_DIR``        folder whose ``*.md`` override the built-in prompts
``MBI_LLM_RESPONSE_FORMAT``    ``auto`` | ``json_schema`` | ``json_object`` | ``none``
``OPENAI_API_KEY``             the key itself (default ``api_key_env``)
=============================  ==============================================

The API key is never stored in the settings, logged or written to the ledger: the
settings hold only the variable's name and the key is read when the client is built.

What a scenario's ``[llm]`` table may do with keys (README, "Security model"):

- ``api_key_env`` must name a variable that looks like an API key
  (:data:`KEY_VAR_PATTERN`: ``NAME_API_KEY``), or one the user allows in
  ``MBI_LLM_KEY_VARS`` (comma-separated; user settings, never the scenario). A scenario
  cannot make the client send ``$HOME`` or ``$DATABASE_URL`` as a Bearer token.
- A key is sent only to a host the user chose: the backend's default (api.openai.com, or
  the user's ``OPENAI_BASE_URL``), or a URL given by ``--llm URL`` or ``MBI_LLM_BASE_URL``.
  To a ``base_url`` taken from the scenario file the client sends no key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

Backend = Literal["local", "openai", "custom"]
ResponseFormatMode = Literal["auto", "json_schema", "json_object", "none"]

#: Model names used when the scenario does not name one.
DEFAULT_MODELS: dict[str, str] = {
    "local": "gemma-3-270m",
    "openai": "gpt-4o-mini",
    "custom": "default",
}

#: Names a scenario's ``api_key_env`` may take without the user's allow-list.
KEY_VAR_PATTERN = r"^[A-Z][A-Z0-9_]*_API_KEY$"
#: The user's allow-list of further key variables (comma-separated names).
KEY_VARS_ENV = "MBI_LLM_KEY_VARS"

#: Environment variable -> settings field.
ENV_VARS: dict[str, str] = {
    "MBI_LLM_BASE_URL": "base_url",
    "MBI_LLM_MODEL": "model",
    "MBI_LLM_API_KEY_ENV": "api_key_env",
    "MBI_LLM_TIMEOUT_S": "timeout_s",
    "MBI_LLM_MAX_RETRIES": "max_retries",
    "MBI_LLM_VALIDATION_RETRIES": "validation_retries",
    "MBI_LLM_CONCURRENCY": "concurrency",
    "MBI_LLM_TEMPERATURE": "temperature",
    "MBI_LLM_MAX_TOKENS": "max_tokens",
    "MBI_LLM_PRICE_PER_1K_TOKENS": "price_per_1k_tokens",
    "MBI_LLM_PROMPTS_DIR": "prompts_dir",
    "MBI_LLM_RESPONSE_FORMAT": "response_format",
}


class LLMSettings(BaseModel):
    """The scenario's ``[llm]`` table (unknown keys are an error).

    ``backend`` says where the model lives: ``local`` (the embedded llama.cpp server,
    started on loopback by :class:`~mbiagents.agents.local_server.LocalModelServer`),
    ``openai`` (api.openai.com, or ``OPENAI_BASE_URL``), ``custom`` (``base_url``: vLLM,
    Ollama, a remote llama.cpp server, ...). Every backend is spoken to through the same
    ``openai.AsyncOpenAI`` client.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "local"
    base_url: str | None = None
    model: str | None = Field(default=None, description="None: the backend's default model")
    api_key_env: str = Field(default="OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=20)
    validation_retries: int = Field(default=2, ge=0, le=10)
    concurrency: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=400, ge=1)
    price_per_1k_tokens: float = Field(default=0.0, ge=0)
    prompts_dir: Path | None = None
    response_format: ResponseFormatMode = "auto"
    local_model_path: Path | None = Field(
        default=None, description="GGUF file for the local backend; None: the gemma3-270m package"
    )

    #: may the key be sent to ``base_url``? False when the scenario file chose the URL
    #: (set by :func:`resolve_llm_settings`; not settable from a table)
    _key_to_base_url: bool = PrivateAttr(default=True)

    @model_validator(mode="after")
    def _check_backend(self) -> "LLMSettings":
        if self.backend == "custom" and not self.base_url:
            raise ValueError("backend 'custom' needs base_url")
        return self

    @property
    def effective_model(self) -> str:
        """The model name sent to the endpoint."""
        return self.model or DEFAULT_MODELS[self.backend]

    def api_key(self) -> str | None:
        """Read the key from ``api_key_env`` (never stored on the settings)."""
        return os.environ.get(self.api_key_env) or None

    @property
    def sends_key(self) -> bool:
        """Whether the client may send the key to this endpoint (see the module docstring)."""
        return self.base_url is None or self._key_to_base_url


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _apply_backend(data: dict[str, Any], value: str) -> None:
    value = value.strip()
    if value in ("local", "openai"):
        data["backend"] = value
        data["base_url"] = None
    elif _is_url(value):
        data["backend"] = "custom"
        data["base_url"] = value
    else:
        raise ValueError(f"--llm must be 'local', 'openai' or an http(s) URL, got {value!r}")


def resolve_llm_settings(
    table: Mapping[str, Any] | LLMSettings | None = None,
    env: Mapping[str, str] | None = None,
    cli: str | None = None,
) -> LLMSettings:
    """Effective LLM settings from the scenario table, the environment and ``--llm``.

    Args:
      table: the scenario's ``[llm]`` table (a mapping or already-built settings); a table
        with ``base_url`` and no ``backend`` means ``backend = "custom"``.
      env: environment (default ``os.environ``); see the module docstring for names.
      cli: the ``--llm`` value: ``local``, ``openai`` or an http(s) URL.

    Returns:
      Validated :class:`LLMSettings`. Switching backend (by env or CLI) drops a base_url
      that belonged to the other backend; an explicit model stays.

    Raises:
      pydantic.ValidationError / ValueError on unknown keys or bad values.
    """
    env = os.environ if env is None else env
    if isinstance(table, LLMSettings):
        data: dict[str, Any] = table.model_dump(exclude_unset=True)
    else:
        data = dict(table or {})
    if data.get("base_url") and "backend" not in data:
        data["backend"] = "custom"
    key_var = data.get("api_key_env")
    allowed = {v.strip() for v in env.get(KEY_VARS_ENV, "").split(",") if v.strip()}
    if isinstance(key_var, str) and not re.match(KEY_VAR_PATTERN, key_var) and key_var not in allowed:
        raise ValueError(f"api_key_env {key_var!r} does not look like an API key variable (NAME_API_KEY); "
                         f"to use it, allow it in your environment: {KEY_VARS_ENV}={key_var}")
    scenario_url = data.get("base_url")
    if env.get("MBI_LLM_BACKEND"):
        _apply_backend(data, env["MBI_LLM_BACKEND"])
    for var, field in ENV_VARS.items():
        if env.get(var):
            data[field] = env[var]
    if env.get("MBI_LLM_BASE_URL") and not env.get("MBI_LLM_BACKEND"):
        data["backend"] = "custom"
    if cli:
        _apply_backend(data, cli)
    settings = LLMSettings.model_validate(data)
    # the key goes to a base_url only if the user gave it (CLI or environment), not the scenario
    settings._key_to_base_url = settings.base_url is None or settings.base_url != scenario_url or bool(
        cli and _is_url(cli.strip())) or bool(env.get("MBI_LLM_BASE_URL"))
    return settings
