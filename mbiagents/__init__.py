"""mbiagents: coordinate agent teams with market-based incentives; audit their payments.

The public Python API (names load on first use, so ``mbi`` starts fast)::

    import mbiagents as mbi
    market = mbi.TaskMarket([mbi.Agent("coder", bid=2.0, work=write_code)], verifier=run_tests)
    result = market.run([mbi.Task(id="fix-bug", description="...", value=10.0)])
    assert mbi.audit(result.run_id, ledger=result.ledger_url).ok
"""

from __future__ import annotations

from typing import Any

_TEAM = ("Agent", "Budget", "BudgetExceeded", "MECHANISMS", "Task", "TaskMarket", "TeamResult", "Verdict",
         "WorkContext", "verifiers")
_LLM = ("LLMAgent", "Tool")

__all__ = [*_TEAM, *_LLM, "Ledger", "LLMSettings", "open_ledger", "audit"]


def audit(run_id: str | None = None, *, ledger: str | None = None):
    """Audit a run from the ledger alone (``mbi audit``); ``.ok`` is the verdict."""
    from mbiagents.verify.audit import audit_run
    from mbiagents.ledger.schema import open_ledger

    led = open_ledger(ledger, create=False)
    try:
        return audit_run(led, run_id)
    finally:
        led.dispose()


def __getattr__(name: str) -> Any:
    if name in _TEAM:
        from mbiagents import team

        return getattr(team, name)
    if name in _LLM:
        from mbiagents.team import llm_agent

        return getattr(llm_agent, name)
    if name == "Ledger":
        from mbiagents.ledger.store import Ledger

        return Ledger
    if name == "open_ledger":
        from mbiagents.ledger.schema import open_ledger

        return open_ledger
    if name == "LLMSettings":
        from mbiagents.llm_settings import LLMSettings

        return LLMSettings
    raise AttributeError(f"module 'mbiagents' has no attribute {name!r}")
