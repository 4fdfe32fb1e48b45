"""Ledger -> trajectories -> DIML (``mbi infer --ledger``).

A run whose market logs discrete actions (an ``actions`` event per round with
``{"episode": e, "step": s, "a": [action of each agent]}``, as the congestion market
does) becomes ``Trajectories`` in the agents' account order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mbiagents.errors import MbiError
from mbiagents.ledger.export import check_format, open_output
from mbiagents.ledger.store import Ledger, agent_account
from mbiagents.markets import market_of
from mbiagents.trajectories import Trajectories, TrajectoryError, assemble, write_jsonl


def trajectories_from_ledger(ledger: Ledger, run_id: str | None = None) -> tuple[str, Trajectories, dict]:
    """The run's logged actions as ``Trajectories``; also its id and its scenario mapping.

    ``n_actions`` is the market's (``Market.n_actions``; the congestion market's routes).
    Raises ``TrajectoryError`` when the run logs no discrete actions.
    """
    run = ledger.get_run(run_id)
    scenario = json.loads(run.scenario_json)
    prefix = agent_account("")
    agent_ids = [name.removeprefix(prefix) for name, kind in ledger.accounts(run.id) if kind == "agent"]
    cells: dict[tuple[int, int, str], int] = {}
    for rec in ledger.read_rounds(run.id):
        try:
            logged = rec.payload("actions")
        except KeyError:
            continue
        a = logged.get("a") if isinstance(logged, dict) else None
        if not isinstance(a, list) or not all(isinstance(x, int) for x in a) or "episode" not in logged:
            raise TrajectoryError(f"run {run.id} (game {run.game!r}) logs no discrete actions to infer from")
        if len(a) != len(agent_ids):
            raise TrajectoryError(f"run {run.id} round {rec.index}: {len(a)} actions for {len(agent_ids)} agents")
        for agent, action in zip(agent_ids, a):
            cells[(logged["episode"], logged["step"], agent)] = action
    if not cells:
        raise TrajectoryError(f"run {run.id} has no actions")
    n_actions = market_of(run).n_actions
    return run.id, assemble(cells, agent_ids, n_actions, f"run {run.id}"), scenario


def export_trajectories(ledger: Ledger, run_id: str | None, fmt: str, out: Path, *,
                        force: bool = False) -> dict[str, Any]:
    """``mbi export --trajectories``: the run's discrete actions as trajectory JSONL;
    returns ``{"run_id", "format", "files", "actions"}``."""
    check_format(fmt)
    run = ledger.get_run(run_id)
    if fmt != "jsonl":
        raise MbiError("--trajectories writes JSONL: use --format jsonl")
    _, traj, _ = trajectories_from_ledger(ledger, run.id)
    with open_output(out, ledger, force) as fh:  # never over a file without force, never the ledger
        write_jsonl(traj, fh)
    return {"run_id": run.id, "format": "trajectories", "files": [str(out)], "actions": int(traj.actions.size)}
