"""``mbi audit``: verify a run from the ledger alone.

Checks (names match the ledger invariants in ``mbiagents.ledger``):

- ``double_entry``: every transfer has a positive integer amount between two distinct
  accounts of the run; the derived balances sum to zero.
- ``idempotency``: every transfer id is the deterministic id of its fields; no round repeats.
- ``hash_chain``: each round's hash recomputes from its rows and the previous hash.
- ``rounds_complete``: rounds are 0..R-1 with every event kind the market requires.
- ``payments_recompute``: every payment recomputes from the logged reports and actions,
  and each transfer is exactly the documented rounding of it.
- market checks (e.g. ``signals_recompute``) and per-round property checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbiagents.ledger.money import to_minor_units, within_rounding
from mbiagents.ledger.store import Ledger, RoundRecord, round_hash, transfer_id
from mbiagents.markets import build_market
from mbiagents.markets.base import signed_minor_from_transfers
from mbiagents.scenario import parse_scenario


@dataclass
class Check:
    name: str
    ok: bool = True
    detail: str = ""
    failures: int = 0

    def fail(self, detail: str) -> None:
        if self.ok:
            self.detail = detail  # keep the first failing row
        self.ok = False
        self.failures += 1


@dataclass
class AuditReport:
    run_id: str
    rounds: int
    transfers: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "ok": self.ok, "rounds": self.rounds, "transfers": self.transfers,
                "checks": [{"name": c.name, "ok": c.ok, "failures": c.failures, "first_failure": c.detail or None}
                           for c in self.checks]}


def audit_run(ledger: Ledger, run_id: str | None = None) -> AuditReport:
    run = ledger.get_run(run_id)
    scenario = parse_scenario(json.loads(run.scenario_json), f"run {run.id}")
    market = build_market(scenario)
    accounts = dict(ledger.accounts(run.id))
    rounds = ledger.read_rounds(run.id)
    n_transfers = sum(len(r.transfers) for r in rounds)
    report = AuditReport(run.id, len(rounds), n_transfers)

    double_entry, idem, chain, complete, pay = (Check(n) for n in (
        "double_entry", "idempotency", "hash_chain", "rounds_complete", "payments_recompute"))
    extra: dict[str, Check] = {}

    # double entry + idempotency
    seen: set[str] = set()
    for r in rounds:
        for tid, kind, debit, credit, amount in r.transfers:
            if not isinstance(amount, int) or amount <= 0:
                double_entry.fail(f"round {r.index} transfer {tid}: amount {amount!r} is not a positive integer")
            if debit == credit or debit not in accounts or credit not in accounts:
                double_entry.fail(f"round {r.index} transfer {tid}: accounts {debit!r} -> {credit!r} invalid")
            if tid != transfer_id(run.id, r.index, kind, debit, credit):
                idem.fail(f"round {r.index} transfer {tid}: id does not match its fields")
            if tid in seen:
                idem.fail(f"round {r.index} transfer {tid}: duplicate id")
            seen.add(tid)
    balances = ledger.balances(run.id)
    if sum(balances.values()) != 0:
        double_entry.fail(f"balances sum to {sum(balances.values())}, not 0")

    # hash chain
    prev = run.header_hash
    for expected_index, r in enumerate(rounds):
        if r.index != expected_index:
            chain.fail(f"round {expected_index} is missing (next stored round is {r.index})")
            complete.fail(f"round {expected_index} is missing")
            break
        h = round_hash(prev, r.index, r.events, r.transfers)
        if r.prev_hash != prev or h != r.hash:
            chain.fail(f"round {r.index}: rows do not match the stored hash chain (changed, deleted or inserted rows)")
            break
        prev = r.hash

    # completeness and recomputation
    for i, r in enumerate(rounds):
        kinds = {k for _, k, a, _ in r.events if a is None}
        missing = [k for k in market.required_events(r.index) if k not in kinds]
        if missing:
            complete.fail(f"round {r.index}: missing events {', '.join(missing)}")
            continue
        try:
            rec = market.recompute(rounds, i)
        except (KeyError, ValueError, TypeError) as exc:
            pay.fail(f"round {r.index}: cannot recompute payments ({exc})")
            continue
        logged = signed_minor_from_transfers(market.agent_ids, r.transfers, market.payment_kind)
        ok = within_rounding(logged, rec.payments)
        if not ok.all():
            j = int(np.flatnonzero(~ok)[0])
            pay.fail(f"round {r.index} agent {market.agent_ids[j]}: transferred {int(logged[j])} minor units, "
                     f"recomputed payment {rec.payments[j]!r} rounds to {int(to_minor_units(rec.payments[j]))}")
        for name, (ok_c, detail) in rec.checks.items():
            c = extra.setdefault(name, Check(name))
            if not ok_c:
                c.fail(f"round {r.index}: {detail}")
    if not rounds:
        complete.fail("run has no rounds")
    report.checks = [double_entry, idem, chain, complete, pay, *extra.values()]
    return report
