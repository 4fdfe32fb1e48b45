"""mbiagents: teams of agents coordinated by market mechanisms, with an auditable ledger.

The public surface (each name is imported on first use, so ``import mbiagents`` stays light):

- ``load_scenario(path)``: read and validate a TOML scenario (``mbiagents.scenario``);
- ``run_scenario(scenario, ledger_url=..., rounds=...)``: run it through the round loop
  into the ledger (``mbiagents.runner``);
- ``audit_run(ledger, run_id)``, ``replay_run(ledger, run_id)``: verify a logged run from
  the ledger alone (``mbiagents.verify``).
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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mbiagents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
