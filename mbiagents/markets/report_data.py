"""The conventional per-round report series of a market (``Market.report_data``'s default)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mbiagents.ledger.store import RoundRecord


def _payload(rec: RoundRecord, kind: str) -> Any:
    try:
        return rec.payload(kind)
    except KeyError:
        return None


def default_report_data(agent_ids: list[str], rounds: list[RoundRecord]) -> dict[str, Any]:
    """The conventional per-round series of ``Market.report_data`` (see there)."""
    nan = float("nan")
    n_rounds = len(rounds)
    out: dict[str, Any] = {}

    def per_agent(kind: str, key: str) -> dict[str, list[float]] | None:
        rows = []
        for rec in rounds:
            p = _payload(rec, kind)
            v = p.get(key) if isinstance(p, dict) else None
            if isinstance(v, np.ndarray):  # an array record
                v = v.tolist()
            rows.append(v if isinstance(v, list) and len(v) == len(agent_ids) else None)
        if all(r is None for r in rows):
            return None
        return {a: [float(r[i]) if r is not None and r[i] is not None else nan for r in rows]
                for i, a in enumerate(agent_ids)}

    actions = per_agent("actions", "x")
    if actions:
        out["actions"] = actions
    signals = per_agent("signals", "G")
    if signals:
        out["signals"], out["signal_label"] = signals, "price signal G_i"
    outcomes = [_payload(rec, "outcome") or {} for rec in rounds]
    for key in ("welfare", "optimal_welfare", "operator_cost", "social_cost"):
        if any(isinstance(o.get(key), (int, float)) for o in outcomes):
            out[key] = [float(o[key]) if isinstance(o.get(key), (int, float)) else nan for o in outcomes]
    if any(isinstance(o.get("assignment"), dict) for o in outcomes):
        out["assignment"] = [dict(o.get("assignment") or {}) for o in outcomes]
    inc = [o.get("incentives") for o in outcomes]
    if any(i is not None for i in inc):
        names: list[str] = []
        for i in inc:
            keys = list(i) if isinstance(i, dict) else [f"incentive {k}" for k in range(len(i or []))]
            names += [k for k in keys if k not in names]
        series = {k: [nan] * n_rounds for k in names}
        for r, i in enumerate(inc):
            items = i.items() if isinstance(i, dict) else ((f"incentive {k}", v) for k, v in enumerate(i or []))
            for k, v in items:
                series[k][r] = float(v) if v is not None else nan
        out["incentives"] = series
    # reported task costs: reports.costs [agent][task] (carried forward), tasks.ids per round
    costs, tasks, seen = [], None, False
    last = None
    for rec in rounds:
        t = _payload(rec, "tasks")
        tasks = t.get("ids") if isinstance(t, dict) and isinstance(t.get("ids"), list) else tasks
        rep = _payload(rec, "reports")
        if isinstance(rep, dict) and "costs" in rep:
            last, seen = rep["costs"], True
        costs.append(_cost_map(agent_ids, last, tasks))
    if seen:
        out["reported_costs"] = costs
    return out


def _cost_map(agent_ids: list[str], costs: Any, tasks: list[str] | None) -> dict[str, dict[str, float]]:
    if isinstance(costs, dict):
        return {a: {str(k): float(v) for k, v in (row or {}).items() if v is not None} for a, row in costs.items()}
    if not isinstance(costs, list):
        return {}
    out = {}
    for a, row in zip(agent_ids, costs):
        names = tasks if tasks and len(tasks) == len(row) else [f"task {j}" for j in range(len(row))]
        out[a] = {str(k): float(v) for k, v in zip(names, row) if v is not None}
    return out
