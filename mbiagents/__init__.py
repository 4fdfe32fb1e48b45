"""mbiagents: teams of agents coordinated by market mechanisms, with an auditable ledger.

The public surface (each name is imported on first use, so ``import mbiagents`` stays light)::

    import mbiagents as mbi
    market = mbi.TaskMarket([mbi.Agent("coder", bid=2.0, work=write_code)], verifier=run_tests)
    result = market.run([mbi.Task(id="fix-bug", description="...", value=10.0)])
    assert mbi.audit(result.run_id, ledger=result.ledger_url).ok

- teams on tasks (``mbiagents.team``): ``Agent``, ``Task``, ``Budget``, ``Verdict``,
  ``TaskMarket`` (``run``/``arun``/``as_node``), ``LLMAgent`` and ``Tool`` (the built-in LLM
  agent with function calling), ``verifiers``, ``MECHANISMS`` (the task market's, by name);
- ``Ledger``, ``open_ledger`` (``mbiagents.ledger``), ``LLMSettings``;
- ``load_scenario(path)``: read and validate a TOML scenario (``mbiagents.scenario``);
- ``run_scenario(scenario, ledger_url=..., rounds=...)``: run it through the round loop
  into the ledger (``mbiagents.runner``);
- ``audit_run(ledger, run_id)``, ``replay_run(ledger, run_id)``: verify a logged run from
  the ledger alone (``mbiagents.verify``); ``audit(run_id, ledger=url)`` opens the ledger.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it (one line each)
_EXPORTS: dict[str, str] = {
    "load_scenario": "mbiagents.scenario",
    "run_scenario": "mbiagents.runner",
    "audit_run": "mbiagents.verify",
    "replay_run": "mbiagents.verify",
    "Agent": "mbiagents.team",
    "Task": "mbiagents.team",
    "Budget": "mbiagents.team",
    "BudgetExceeded": "mbiagents.team",
    "Verdict": "mbiagents.team",
    "TaskMarket": "mbiagents.team",
    "TeamResult": "mbiagents.team",
    "WorkContext": "mbiagents.team",
    "MECHANISMS": "mbiagents.team",
    "verifiers": "mbiagents.team",
    "LLMAgent": "mbiagents.team.llm_agent",
    "Tool": "mbiagents.team.llm_agent",
    "Ledger": "mbiagents.ledger.store",
    "open_ledger": "mbiagents.ledger.schema",
    "LLMSettings": "mbiagents.llm_settings",
}

__all__ = sorted([*_EXPORTS, "audit"])


def audit(run_id: str | None = None, *, ledger: str | None = None):
    """Audit a run from the ledger alone (``mbi audit``); ``.ok`` is the verdict."""
    from mbiagents.ledger.schema import open_ledger
    from mbiagents.verify import audit_run

    led = open_ledger(ledger, create=False)
    try:
        return audit_run(led, run_id)
    finally:
        led.dispose()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mbiagents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
