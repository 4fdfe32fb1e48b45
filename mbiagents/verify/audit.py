"""``mbi audit``: verify a run from the ledger alone.

Checks (names match the ledger invariants in ``mbiagents.ledger``):

- ``double_entry``: every transfer has a positive integer amount between two distinct
  accounts of the run; the derived balances sum to zero.
- ``idempotency``: every transfer id is the deterministic id of its fields; no round repeats.
- ``hash_chain``: the run header hash recomputes from the run's fields; each round's hash
  recomputes from its rows and the previous hash; the run ends at the round count and
  hash recorded when it finished (so a deleted last round is caught).
- ``rounds_complete``: rounds are 0..R-1 with every event kind the market requires.
- ``payments_recompute``: every payment recomputes from the logged reports and actions,
  and each transfer is exactly the documented rounding of it.
- ``escrow`` (runs with pending transfers): every pending transfer is resolved exactly
  once, by a later or the same round, posting at most its amount (voided: nothing); a
  completed run has no open pending transfer (TigerBeetle's pending -> posted | voided);
- ``no_overdraft`` (runs with account floors, e.g. budgets): after every round each such
  account's available balance (posted minus open pending debits) is at or above its floor;
- ``signatures``, ``header_payloads``, ``run_end``, ``witness``, ``expected_head``: trust
  beyond the database (signed heads, witness file, expected head; ``mbiagents.verify.trust``).
- market checks (e.g. ``signals_recompute``, ``outcome_recompute``, ``budget_balance``)
  and informational per-round properties (e.g. ``individual_rationality``), which are
  reported but do not fail the audit because they need not hold before convergence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbiagents.errors import LedgerError, ScenarioError
from mbiagents.ledger.money import MoneyError, to_minor_units, within_rounding
from mbiagents.ledger.payments import signed_minor_from_transfers
from mbiagents.ledger.store import Ledger, RoundRecord, header_hash, round_hash, run_header, transfer_id
from mbiagents.markets import market_of
from mbiagents.markets.base import AuditSteps, Recomputed
from mbiagents.verify.trust import TrustOptions, TrustVerifier, check_witness, witness_run_id


@dataclass
class Check:
    """One audit check. An ``informational`` check reports a property that need not hold
    every round (e.g. IR before convergence): its failures never fail the audit."""

    name: str
    ok: bool = True
    detail: str = ""
    failures: int = 0
    informational: bool = False

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
        return all(c.ok or c.informational for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "ok": self.ok, "rounds": self.rounds, "transfers": self.transfers,
                "checks": [{"name": c.name, "ok": c.ok, "informational": c.informational, "failures": c.failures,
                            "first_failure": c.detail or None} for c in self.checks]}


def recompute_round(market: AuditSteps, a: Any, r: RoundRecord) -> tuple[Any, Recomputed | str]:
    """One step of the audit fold: the next audit state and the round recomputed, or why it
    cannot be (a logged row is missing or malformed; the audit state is then unchanged)."""
    try:
        return market.audit_round(a, r)
    except (KeyError, ValueError, TypeError) as exc:
        return a, f"cannot recompute payments ({exc})"


def payment_mismatch(market: AuditSteps, r: RoundRecord, rec: Recomputed) -> str | None:
    """The first agent whose transfers are not the documented rounding of its recomputed payment."""
    logged = signed_minor_from_transfers(market.agent_ids, r.transfers + r.pending, market.payment_kind)
    ok = within_rounding(logged, rec.payments)
    if ok.all():
        return None
    j = int(np.flatnonzero(~ok)[0])
    try:
        rounded = f"rounds to {int(to_minor_units(rec.payments[j]))}"
    except MoneyError as exc:
        rounded = f"is no money ({exc})"
    return (f"agent {market.agent_ids[j]}: transferred {int(logged[j])} minor units, "
            f"recomputed payment {float(rec.payments[j])!r} {rounded}")


def audit_run(ledger: Ledger, run_id: str | None = None, trust: TrustOptions | None = None) -> AuditReport:
    """Verify a run from the ledger alone, streaming its rounds (one round in memory).

    The market's audit fold (``audit_init``, ``audit_round``) carries what a round's
    recomputation needs from earlier rounds; nothing else of them is kept.
    ``trust`` adds what the auditor trusts from outside the database
    (``mbiagents.verify.trust``): trusted public keys, a witness file, an expected head.
    """
    trust = trust or TrustOptions()
    if run_id is None and trust.witness:
        run_id = witness_run_id(trust.witness)
    try:
        run = ledger.get_run(run_id)
    except LedgerError:
        if not trust.witness or run_id is None:
            raise
        gone = Check("witness")  # a witnessed run deleted from the ledger: a failed audit, not bad input
        check_witness(gone, trust.witness, run_id, None, None, None, {}, None)
        return AuditReport(run_id, 0, 0, [gone])
    double_entry, idem, chain, complete, pay = (Check(n) for n in (
        "double_entry", "idempotency", "hash_chain", "rounds_complete", "payments_recompute"))
    extra: dict[str, Check] = {}

    if header_hash(run_header(run)) != run.header_hash:
        chain.fail("run header: stored header hash does not match the run's fields")
    try:
        market = market_of(run)
    except ScenarioError as exc:
        if chain.ok:
            raise
        # a tampered header whose scenario no longer validates: a failed audit, not bad input
        chain.detail += f" (its scenario no longer validates: {exc})"
        return AuditReport(run.id, 0, 0, [chain])
    accounts = dict(ledger.accounts(run.id))
    signed = TrustVerifier(ledger, run, market, trust, Check)
    signed.start()
    escrow = EscrowAudit(ledger.floors(run.id))
    seen: set[str] = set()
    rid = run.id
    prev, chain_ok, n_transfers, n_rounds = run.header_hash, chain.ok, 0, 0
    a = market.audit_init()
    for r in ledger.iter_rounds(run.id):
        expected_index, n_rounds = n_rounds, n_rounds + 1
        n_transfers += len(r.transfers)
        # double entry + idempotency
        for tid, kind, debit, credit, amount in r.transfers + r.pending:
            if not isinstance(amount, int) or amount <= 0:
                double_entry.fail(f"round {r.index} transfer {tid}: amount {amount!r} is not a positive integer")
            if debit == credit or debit not in accounts or credit not in accounts:
                double_entry.fail(f"round {r.index} transfer {tid}: accounts {debit!r} -> {credit!r} invalid")
            if tid != transfer_id(rid, r.index, kind, debit, credit):
                idem.fail(f"round {r.index} transfer {tid}: id does not match its fields")
            if tid in seen:
                idem.fail(f"round {r.index} transfer {tid}: duplicate id")
            seen.add(tid)
        # hash chain: the first broken link is named, later rounds cannot be trusted
        if chain_ok:
            if r.index != expected_index:
                chain.fail(f"round {expected_index} is missing (next stored round is {r.index})")
                complete.fail(f"round {expected_index} is missing")
                chain_ok = False
            elif r.prev_hash != prev or round_hash(prev, r.index, r.events, r.transfers, r.pending,
                                                   r.resolutions) != r.hash:
                chain.fail(f"round {r.index}: rows do not match the stored hash chain "
                           f"(changed, deleted or inserted rows)")
                chain_ok = False
            prev = r.hash
        signed.round(r)
        escrow.round(r)
        a = _recompute_round(market, a, r, complete, pay, extra)
    signed.finish(n_rounds, prev)
    if chain_ok and run.final_rounds is not None and (n_rounds, prev) != (run.final_rounds, run.final_hash):
        first = min(n_rounds, run.final_rounds)
        chain.fail(f"round {first}: run finished with {run.final_rounds} rounds (last hash "
                   f"{(run.final_hash or '')[:12]}), the ledger holds {n_rounds} (last hash {prev[:12]})")
    if sum(ledger.balances(run.id).values()) != 0:
        double_entry.fail(f"balances sum to {sum(ledger.balances(run.id).values())}, not 0")
    if not n_rounds:
        complete.fail("run has no rounds")
    report = AuditReport(run.id, n_rounds, n_transfers)
    report.checks = [double_entry, idem, chain, complete, pay, *escrow.checks(run.status), *signed.checks,
                     *extra.values()]
    return report


class EscrowAudit:
    """The ``escrow`` and ``no_overdraft`` checks, fed one round at a time."""

    def __init__(self, floors: dict[str, int]):
        self.floors = floors
        self.balance = {a: 0 for a in floors}  # available balances of the floored accounts
        self.open: dict[str, tuple[str, str, int]] = {}  # pending id -> debit, credit, amount
        self.resolved: set[str] = set()
        self.any_pending = False
        self.escrow = Check("escrow")
        self.overdraft = Check("no_overdraft")

    def _move(self, account: str, amount: int) -> None:
        if account in self.balance:
            self.balance[account] += amount

    def round(self, r: RoundRecord) -> None:
        for _id, _k, debit, credit, amount in r.transfers:
            self._move(debit, -amount)
            self._move(credit, amount)
        for pid, _k, debit, credit, amount in r.pending:
            self.any_pending = True
            self.open[pid] = (debit, credit, amount)
            self._move(debit, -amount)
        for pid, state, amount in r.resolutions:
            if pid in self.resolved:
                self.escrow.fail(f"round {r.index}: pending transfer {pid} resolved a second time")
                continue
            if pid not in self.open:
                self.escrow.fail(f"round {r.index}: resolution of {pid}, which no earlier round opened")
                continue
            debit, credit, pending = self.open.pop(pid)
            self.resolved.add(pid)
            if state not in ("posted", "voided") or not 0 <= amount <= pending or (state == "voided" and amount):
                self.escrow.fail(f"round {r.index}: {pid} {state} with amount {amount} (pending {pending})")
            self._move(debit, pending - (amount if state == "posted" else 0))
            if state == "posted":
                self._move(credit, amount)
        for acct, floor in self.floors.items():
            if self.balance[acct] < floor:
                self.overdraft.fail(f"round {r.index}: account {acct} at {self.balance[acct]} minor units, "
                                    f"below its floor {floor}")

    def checks(self, status: str) -> list[Check]:
        out = []
        if self.any_pending or self.resolved:
            if status == "completed" and self.open:
                self.escrow.fail(f"pending transfer {min(self.open)} was never resolved ({len(self.open)} open)")
            out.append(self.escrow)
        if self.floors:
            out.append(self.overdraft)
        return out


def _recompute_round(market: AuditSteps, a: Any, r: RoundRecord, complete: Check, pay: Check,
                     extra: dict[str, Check]) -> Any:
    kinds = {k for _, k, agent, _ in r.events if agent is None}
    missing = [k for k in market.required_events(r.index) if k not in kinds]
    if missing:
        complete.fail(f"round {r.index}: missing events {', '.join(missing)}")
        return a
    a, rec = recompute_round(market, a, r)
    if isinstance(rec, str):
        pay.fail(f"round {r.index}: {rec}")
        return a
    mismatch = payment_mismatch(market, r, rec)
    if mismatch:
        pay.fail(f"round {r.index} {mismatch}")
    for name, (ok_c, detail) in rec.checks.items():
        c = extra.setdefault(name, Check(name))
        if not ok_c:
            c.fail(f"round {r.index}: {detail}")
    for name, (ok_c, detail) in rec.info.items():
        c = extra.setdefault(name, Check(name, informational=True))
        if not ok_c:
            c.fail(f"round {r.index}: {detail}")
    return a
