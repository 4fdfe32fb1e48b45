"""Agent teams on real tasks: VCG award, pay on verified delivery (escrow), budgets.

The run loop lives in :mod:`mbiagents.team` (``mbiagents.TaskMarket``, a LangGraph graph
that also runs as a node of the user's own graph); this module is what the audit, the
report and the summary need to read such a run from the ledger alone.

Each market round ``r`` is two ledger rounds:

- ``2r`` *award*: events ``tasks`` (the offered tasks: ids, values, descriptions,
  acceptance criteria), ``reports`` (every agent's bid per task, ``null`` = abstain),
  ``outcome`` (assignment), ``payments`` (VCG ``t_i``, ``mechanisms.vcg``), per-agent
  ``bid_rejected`` for invalid bids; one *pending* ``escrow`` transfer treasury -> winner
  of ``-t_i`` (rounded to minor units); round 0 also funds the budgets (``grant``
  transfers); the bidding calls' charges (``spend``, ``usage``);
- ``2r + 1`` *delivery*: event ``deliveries`` (each awarded task: deliverable, verdict),
  the resolutions of round ``2r``'s escrow: posted in full if every task the agent won
  that round was accepted, else voided; the work's charges (``spend`` agent -> provider
  with its ``usage`` calls), top-ups (``topup`` treasury -> agent) and ``budget_exceeded``.

Audit checks of this market: ``assignment_recompute`` and ``payments_recompute`` (the
pending escrow is the VCG payment recomputed from the logged bids), ``payment_x_acceptance``
(each resolution is the pending amount times the acceptance of the agent's tasks),
``spend_recompute`` (each ``spend`` is the sum of its ``usage`` charges, each charge at
most its reservation), ``grant_recompute``/``topup_recompute``, plus the ledger's
``escrow`` and ``no_overdraft``. A rejected or unassigned task is offered again in the
next market round.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
from mbiagents.errors import MbiError
from mbiagents.ledger.money import MINOR_UNITS, to_minor_units
from mbiagents.ledger.store import TREASURY, RoundRecord, agent_account
from mbiagents.markets.base import Market, Recomputed
from mbiagents.markets.tasks import decode_costs, vcg_outcome
from mbiagents.scenario import TeamTasksScenario

GAME = "team-tasks"
PROVIDER = "provider"  # the account model and tool calls are paid to
ESCROW, GRANT, SPEND, TOPUP = "escrow", "grant", "spend", "topup"




def _payload(rec: RoundRecord, kind: str, default: Any = None) -> Any:
    try:
        return rec.payload(kind)
    except KeyError:
        return default


def _net(transfers, kind: str) -> dict[str, int]:
    """Per account: what transfers of ``kind`` credited it, less what they debited (an amount
    that is no integer, tampered, moves nothing: the audit's ``double_entry`` names it)."""
    out: dict[str, int] = defaultdict(int)
    for _id, k, debit, credit, amount in transfers:
        if k == kind and type(amount) is int:
            out[credit] += amount
            out[debit] -= amount
    return out


class TeamTasksMarket(Market):
    game = GAME
    payment_kind = ESCROW
    summary_columns = ("won", "accepted", "payment", "spend", "utility", "balance")
    #: its rounds are driven by mbiagents.TaskMarket (the agents are Python callables), not ``mbi run``
    python_only = True

    def __init__(self, scenario: TeamTasksScenario):
        super().__init__(scenario)
        self.capacities = np.array([a.capacity for a in scenario.agents], dtype=np.int64)
        self.index = {a: i for i, a in enumerate(self.agent_ids)}

    def extra_accounts(self) -> tuple[str, ...]:
        return (PROVIDER,)

    # ---- the round loop is mbiagents.team.TaskMarket's graph -------------------------
    def _python_only(self, *_a, **_k):
        raise MbiError(f"game {GAME!r} runs from Python: mbiagents.TaskMarket(agents=...).run(tasks) "
                       "(its agents are your own callables)")

    elicit = price = act = settle = _python_only  # type: ignore[assignment]

    def init_state(self) -> dict[str, Any]:
        """The team graph's first state: round 0 and the file's ``[[tasks]]`` on offer."""
        return {"round": 0, "open_tasks": [t.model_dump(mode="json") for t in self.scenario.tasks]}

    def summary(self, state: dict[str, Any], paid: np.ndarray) -> dict[str, Any]:
        return self._python_only()

    # ---- audit ------------------------------------------------------------------------
    def required_events(self, index: int) -> tuple[str, ...]:
        return ("tasks", "reports", "outcome", "payments") if index % 2 == 0 else ("deliveries",)

    def audit_round(self, a: RoundRecord | None, rec: RoundRecord) -> tuple[RoundRecord | None, Recomputed]:
        """Recompute ``rec``; the audit state is the last award round (events and pending
        escrow), which its delivery round resolves."""
        n = len(self.agent_ids)
        checks: dict[str, tuple[bool, str]] = {"spend_recompute": self._spend(rec), "topup_recompute": self._topup(rec)}
        if rec.index % 2 == 1:
            checks["payment_x_acceptance"] = self._acceptance(a if a is not None and a.index == rec.index - 1 else None,
                                                              rec)
            return None, Recomputed(payments=np.zeros(n), checks=checks)
        tasks = rec.payload("tasks")
        values = np.asarray(tasks["values"], np.float64)
        reports = decode_costs(rec.payload("reports")["costs"]).reshape(n, len(values))
        out = vcg_outcome(reports, values, self.capacities, self.mechanism)
        mine = {t: (self.agent_ids[a] if a >= 0 else None) for t, a in zip(tasks["ids"], out.assignment.tolist())}
        logged = rec.payload("outcome")["assignment"]
        checks["assignment_recompute"] = (logged == mine, "" if logged == mine else f"logged {logged}, recomputed {mine}")
        if rec.index == 0:
            checks["grant_recompute"] = self._grant(rec)
        award = RoundRecord(rec.index, rec.prev_hash, rec.hash, rec.events, [], rec.pending, rec.resolutions)
        return award, Recomputed(payments=out.payments, checks=checks)

    def _grant(self, rec: RoundRecord) -> tuple[bool, str]:
        got = _net(rec.transfers, GRANT)
        for a in self.scenario.agents:
            want = int(to_minor_units(a.grant)) if a.grant else 0
            if got.get(agent_account(a.id), 0) != want:
                return False, f"agent {a.id}: granted {got.get(agent_account(a.id), 0)}, its budget is {want}"
        return True, ""

    def _spend(self, rec: RoundRecord) -> tuple[bool, str]:
        calls = (_payload(rec, "usage") or {}).get("calls", [])
        want: dict[str, int] = defaultdict(int)
        for c in calls:
            if not 0 <= c["charged"] <= c["reserved"]:
                return False, f"round {rec.index}: agent {c['agent']} charged {c['charged']} > reserved {c['reserved']}"
            want[agent_account(c["agent"])] -= c["charged"]
        got = {k: v for k, v in _net(rec.transfers, SPEND).items() if k != PROVIDER and v}
        want = {k: v for k, v in want.items() if v}
        return (got == want, "" if got == want else f"spend transfers {got}, usage charges {want}")

    def _topup(self, rec: RoundRecord) -> tuple[bool, str]:
        want: dict[str, int] = defaultdict(int)
        for _seq, kind, agent, payload in rec.events:
            if kind == "budget_exceeded":
                want[agent_account(agent)] += json.loads(payload).get("topup", 0)
        got = {k: v for k, v in _net(rec.transfers, TOPUP).items() if k != TREASURY and v}
        want = {k: v for k, v in want.items() if v}
        return (got == want, "" if got == want else f"top-up transfers {got}, top-ups granted {want}")

    def _acceptance(self, award: RoundRecord | None, rec: RoundRecord) -> tuple[bool, str]:
        """Each escrow of the award round resolves as ``pending x acceptance``."""
        if award is None:
            return False, "delivery round without an award round"
        items = rec.payload("deliveries")["items"]
        accepted = {i["task"]: bool(i["accepted"]) for i in items}
        assignment = award.payload("outcome")["assignment"]
        resolved = {pid: (state, amount) for pid, state, amount in rec.resolutions}
        for pid, kind, _debit, credit, amount in award.pending:
            if kind != ESCROW:
                continue
            agent = credit.removeprefix("agent:")
            won = [t for t, a in assignment.items() if a == agent]
            ok = bool(won) and all(accepted.get(t, False) for t in won)
            want = ("posted", amount) if ok else ("voided", 0)
            if resolved.get(pid) != want:
                return False, (f"round {rec.index}: escrow {pid} resolved {resolved.get(pid)}, the verdicts on "
                               f"{won} give {want}")
        return True, ""

    # ---- what a run paid, spent and delivered (summary, report) ------------------------
    def team_summary(self, rounds: list[RoundRecord]) -> dict[str, Any]:
        """Per agent: tasks won and accepted, posted payment, spend, ``utility = payment -
        spend`` and the balance (grant + top-ups + payment - spend); per task the deliveries."""
        rows = {a: {"won": 0, "accepted": 0, "grant": 0.0, "topup": 0.0, "payment": 0.0, "pending": 0.0,
                    "spend": 0.0, "calls": 0, "budget_exceeded": 0} for a in self.agent_ids}
        deliveries: list[dict[str, Any]] = []
        pending: dict[str, tuple[str, int]] = {}
        units = float(MINOR_UNITS)
        for rec in rounds:
            for acct, v in _net(rec.transfers, GRANT).items():
                if acct.startswith("agent:"):
                    rows[acct[6:]]["grant"] += v / units
            for acct, v in _net(rec.transfers, TOPUP).items():
                if acct.startswith("agent:"):
                    rows[acct[6:]]["topup"] += v / units
            for acct, v in _net(rec.transfers, SPEND).items():
                if acct.startswith("agent:"):
                    rows[acct[6:]]["spend"] -= v / units
            for c in (_payload(rec, "usage") or {}).get("calls", []):
                rows[c["agent"]]["calls"] += 1
            for _s, kind, agent, _p in rec.events:
                if kind == "budget_exceeded" and agent in rows:
                    rows[agent]["budget_exceeded"] += 1
            for pid, kind, _d, credit, amount in rec.pending:
                if kind == ESCROW:
                    pending[pid] = (credit[6:], amount)
                    rows[credit[6:]]["pending"] += amount / units
            for pid, state, amount in rec.resolutions:
                if pid in pending:
                    agent, held = pending.pop(pid)
                    rows[agent]["pending"] -= held / units
                    rows[agent]["payment"] += amount / units
            if rec.index % 2 == 1:
                for item in _payload(rec, "deliveries", {}).get("items", []):
                    rows[item["agent"]]["won"] += 1
                    rows[item["agent"]]["accepted"] += int(item["accepted"])
                    deliveries.append({"round": rec.index // 2, **item})
        for r in rows.values():
            r["utility"] = r["payment"] - r["spend"]
            r["balance"] = r["grant"] + r["topup"] + r["payment"] - r["spend"]
            r["pending"] = round(r["pending"], 6)
        return {"agents": rows, "deliveries": deliveries, "market_rounds": (len(rounds) + 1) // 2,
                "paid": sum(r["payment"] for r in rows.values()), "spent": sum(r["spend"] for r in rows.values())}

    def report_data(self, rounds: list[RoundRecord]) -> dict[str, Any]:
        awards = [r for r in rounds if r.index % 2 == 0]
        out = super().report_data(awards)
        out["team"] = self.team_summary(rounds)
        return out

