"""``mbi replay``: re-execute a run from its logged reports, round by round.

No agent or LLM is called: each round's mechanism is run again on the logged reports and
actions (the market's audit fold, ``audit_init`` / ``audit_round``, the same code the audit uses), and its outcome, signals
and payments are compared with what the ledger holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mbiagents.ledger.store import Ledger
from mbiagents.markets import market_of
from mbiagents.verify.audit import payment_mismatch, recompute_round


@dataclass
class ReplayRound:
    index: int
    checks: dict[str, bool]  # payments, and each market check (outcome_recompute, ...)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


@dataclass
class ReplayReport:
    run_id: str
    rounds: list[ReplayRound] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds)

    @property
    def first_mismatch(self) -> ReplayRound | None:
        return next((r for r in self.rounds if not r.ok), None)

    def as_json(self) -> dict[str, Any]:
        bad = self.first_mismatch
        return {"run_id": self.run_id, "ok": self.ok, "rounds": len(self.rounds),
                "first_mismatch": None if bad is None else {"round": bad.index, "detail": bad.detail},
                "per_round": [{"round": r.index, "ok": r.ok, **r.checks, "detail": r.detail or None}
                              for r in self.rounds]}


def replay_run(ledger: Ledger, run_id: str | None = None) -> ReplayReport:
    """Recompute every round of a run from its logged reports and compare with the ledger."""
    run = ledger.get_run(run_id)
    market = market_of(run)
    report = ReplayReport(run.id)
    a = market.audit_init()
    for r in ledger.iter_rounds(run.id):
        a, rec = recompute_round(market, a, r)
        if isinstance(rec, str):
            report.rounds.append(ReplayRound(r.index, {"payments": False}, rec))
            continue
        mismatch = payment_mismatch(market, r, rec)
        matched = {k: v for k, v in rec.checks.items() if k.endswith("_recompute")}  # not properties
        checks = {"payments": mismatch is None, **{k: ok for k, (ok, _) in matched.items()}}
        details = [mismatch] if mismatch else []
        details += [f"{k}: {d}" for k, (ok, d) in matched.items() if not ok]
        report.rounds.append(ReplayRound(r.index, checks, "; ".join(details)))
    return report
