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
  and each transfer is exactly the documented rounding of it; a market that nets
  payments over a settlement interval of ``k`` rounds logs every round's payment vector,
  each is checked against its recomputation, and each settlement transfer must equal the
  sum of the rounded payments since the last settlement (nothing left unsettled at the
  end of a finished run).
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

import gc
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mbiagents.errors import LedgerError, ScenarioError
from mbiagents.ledger.money import MoneyError, to_minor_units, within_rounding
from mbiagents.ledger.payments import (agent_positions, paid_vector, signed_minor_from_columns,
                                       signed_minor_from_transfers)
from mbiagents.ledger.invariants import transfers_clean
from mbiagents.ledger.hashing import round_hash_of_parts, round_text_parts, transfer_lines
from mbiagents.ledger.digests import Digested, DigestWorker, Payer, RowSource, columns_digests, digest_request
from mbiagents.ledger.digests import available_cpus as _cpus
from mbiagents.ledger.merkle import line_leaves, merkle_root
from mbiagents.ledger.store import Ledger, RoundRecord, header_hash, run_header, transfer_id
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


def payment_mismatch(market: AuditSteps, r: RoundRecord, rec: Recomputed,
                     paid: RoundPaid | None = None) -> str | None:
    """The first agent whose transfers are not the documented rounding of its recomputed payment.

    For a market that nets payments (``rec.logged_payments`` set), the round's logged
    payment vector is compared instead; its settlement is ``Settlements``'s to check.
    ``paid``: the round's transfers summed per agent already (``round_paid``).
    """
    netted = rec.logged_payments is not None
    logged = to_minor_units(rec.logged_payments) if netted else (paid or round_paid(market, r)).with_pending
    ok = within_rounding(logged, rec.payments)
    if ok.all():
        return None
    j = int(np.flatnonzero(~ok)[0])
    try:
        rounded = f"rounds to {int(to_minor_units(rec.payments[j]))}"
    except MoneyError as exc:
        rounded = f"is no money ({exc})"
    what = "logged a payment of" if netted else "transferred"
    return (f"agent {market.agent_ids[j]}: {what} {int(logged[j])} minor units, "
            f"recomputed payment {float(rec.payments[j])!r} {rounded}")


@dataclass(frozen=True)
class RoundPaid:
    """A round's payment-kind transfers summed per agent (minor units): ``transfers`` alone
    and ``with_pending`` (its pending transfers too)."""

    transfers: np.ndarray
    with_pending: np.ndarray


def round_paid(market: AuditSteps, r: RoundRecord) -> RoundPaid:
    """``RoundPaid`` of round ``r`` (``signed_minor_from_transfers`` of its rows)."""
    paid = signed_minor_from_columns(market.agent_ids, r.columns(), market.payment_kind)
    return RoundPaid(paid, signed_minor_from_transfers(market.agent_ids, r.transfers + r.pending, market.payment_kind)
                     if r.pending else paid)


class Settlements:
    """Netted payments: the rounded logged payments accumulate per agent until a round
    settles them; its transfers must then equal the sum exactly (``settle``)."""

    def __init__(self, market: AuditSteps):
        self.market = market
        self.pending = np.zeros(len(market.agent_ids), dtype=np.int64)
        self.since: int | None = None  # first round whose payments are pending

    def settle(self, r: RoundRecord, rec: Recomputed, paid_: RoundPaid | None = None) -> str | None:
        """Add round ``r``'s payments; at a settlement round, the first agent whose net
        transfer differs from its pending sum (``None`` if all match)."""
        if rec.logged_payments is None:
            return None
        self.pending += to_minor_units(rec.logged_payments)
        self.since = r.index if self.since is None else self.since
        k = self.market.settlement_interval
        paid = (paid_ or round_paid(self.market, r)).transfers
        if not (paid.any() or (r.index + 1) % k == 0):
            return None
        bad = np.flatnonzero(paid != self.pending)
        since, self.since = self.since, None
        pending, self.pending = self.pending, np.zeros_like(self.pending)
        if bad.size == 0:
            return None
        j = int(bad[0])
        return (f"agent {self.market.agent_ids[j]}: settled {int(paid[j])} minor units for rounds "
                f"{since}..{r.index}, its rounded payments sum to {int(pending[j])}")

    def unsettled(self) -> str | None:
        if self.since is None or not self.pending.any():
            return None
        j = int(np.flatnonzero(self.pending)[0])
        return (f"agent {self.market.agent_ids[j]}: payments of rounds {self.since}.. "
                f"({int(self.pending[j])} minor units) were never settled")


def audit_run(ledger: Ledger, run_id: str | None = None, trust: TrustOptions | None = None, *,
              digest_worker: bool | None = None) -> AuditReport:
    """Verify a run from the ledger alone, streaming its rounds (one round in memory; a
    market that recomputes several rounds in one call holds its window of rounds, without
    their transfer rows).

    The market's audit fold (``audit_init``, ``audit_round``) carries what a round's
    recomputation needs from earlier rounds; nothing else of them is kept.
    ``trust`` adds what the auditor trusts from outside the database
    (``mbiagents.verify.trust``): trusted public keys, a witness file, an expected head.
    ``digest_worker``: compute the round hashes, the heads' Merkle roots and the transfers'
    double-entry and id checks in a helper process on another core (``digests.DigestWorker``)
    while this one reads the rows and does the rest; ``None`` (default) does so once the
    run has shown ``DIGEST_WORKER_TRANSFERS`` transfers, on a machine with two or more
    CPUs. A helper that cannot start or dies leaves the rest of the audit to this process
    (a ``RuntimeWarning``), with the same report.
    """
    with _old_objects_frozen(), _RoundDigests(digest_worker) as digests:
        return _audit_run(ledger, run_id, trust, digests)


#: transfers digested in the audit's own process before a ``DigestWorker`` takes over
#: (about 10 ms of hashing: for less, starting the helper is not worth it)
DIGEST_WORKER_TRANSFERS = 5_000
#: rounds, and bytes of their requests, the reading side runs ahead of the checks
DIGEST_LAG_ROUNDS = 32
DIGEST_LAG_BYTES = 4 << 20
#: requests the helper may have unanswered; while it has more, the reading side digests the rounds itself
DIGEST_STEAL_BACKLOG = 8


class _Digests:
    """A round's hash and its transfers' Merkle root (hex): given, or computed here when
    first asked (``compute``); and its agents' payments when the helper summed them."""

    def __init__(self, compute: Callable[[], tuple[str, bytes | None]] | None = None,
                 round_hash: str | None = None, root: bytes | None = None, paid: RoundPaid | None = None):
        self.compute, self._hash, self._root, self.paid = compute, round_hash, root, paid

    def _computed(self) -> None:
        assert self.compute is not None, "digests neither given nor computable"
        self._hash, self._root = self.compute()
        self.compute = None

    @property
    def round_hash(self) -> str:
        if self._hash is None:
            self._computed()
        return self._hash  # type: ignore[return-value]

    def merkle_root(self) -> str:
        if self._root is None:
            self._computed()
        return self._root.hex()  # type: ignore[union-attr]


class _RoundDigests:
    """The audit's first stage: each round read is encoded (``transfer_lines`` once, for
    its hash and its Merkle root) and, past ``DIGEST_WORKER_TRANSFERS`` (or at once with
    ``digest_worker=True``), sent to a ``DigestWorker``; it comes out of ``stream`` up to
    ``DIGEST_LAG_ROUNDS`` rounds later with its digests (and its agents' payments), in
    order. Without the helper, or while the helper is more than ``DIGEST_STEAL_BACKLOG``
    rounds behind, a round comes out as soon as the rounds before it and its digests are
    computed here when asked.

    Rounds may come with their transfers unread (``RoundRecord.unread``, when the helper
    can open the ledger itself: ``source``): the helper reads those it takes, and the
    rounds digested here, or found not clean, are read here (``read``)."""

    def __init__(self, digest_worker: bool | None):
        self.force = digest_worker is True
        self.allowed = digest_worker is not False and (self.force or _cpus() > 1)
        self.worker: DigestWorker | None = None

    def __enter__(self) -> "_RoundDigests":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.worker is not None:
            self.worker.close()

    def stream(self, records: Iterable[RoundRecord], header_hash: str, needs_root: Callable[[int], bool],
               run_id: str, accounts: frozenset[str], positions: dict[str, int], kind: str,
               source: RowSource | None = None, read: Callable[[int], list] | None = None,
               ) -> Iterator[tuple[RoundRecord, bool, _Digests]]:
        """``(round, clean, digests)`` of each round, in order: ``clean`` is
        ``invariants.transfers_clean`` of its transfers against the run's ``accounts``
        (checked here, or by the helper); a round's hash chains onto the stored hash
        of the round before it (the header hash for the first). A round with pending
        transfers, amounts that are not all integers or a text field holding a newline is
        checked and digested here, from its rows as they are. ``positions``, ``kind``: the
        run's agent accounts in agent order and its payment kind (``payments.agent_positions``;
        the helper and this process sum the payments of the rounds they take);
        ``source`` and ``read``: how the helper and this process read a round's transfers
        left unread (``store.Ledger.row_source``, ``store.Ledger.transfer_reader``)."""
        prev, seen, self.run_id, self.accounts, self.read = header_hash, 0, run_id, accounts, read
        self.positions, self.kind = positions, kind
        ahead: deque[_Ahead] = deque()  # rounds sent (or held behind those sent), not yet out
        ahead_bytes = 0
        for r in records:
            want, before_r = needs_root(r.index), prev
            prev, seen = r.hash, seen + r.transfer_count
            if self.worker is None and self.allowed and (self.force or seen >= DIGEST_WORKER_TRANSFERS):
                self._start(accounts, (list(positions), kind), source)
            req = None
            if self.worker is not None and not r.pending and self._helper_keeps_up():
                if r.unread:
                    if self.worker.reading:
                        req = digest_request(before_r, r.index, r.events, r.arrays, r.resolutions, r.unread, want,
                                             run_id)
                else:
                    columns = r.columns()
                    if not columns or set(map(type, columns[4])) == {int}:
                        try:
                            req = digest_request(before_r, r.index, r.events, r.arrays, r.resolutions, columns, want,
                                                 run_id)
                        except OverflowError:  # an amount past int64
                            pass
            if req is None:
                here = self._here(r, before_r, want)
                if not ahead:
                    yield here.out(len(self.positions))
                else:
                    ahead.append(here)
                continue
            before = self.worker.submitted  # type: ignore[union-attr]
            try:
                ticket = self.worker.submit(req)  # type: ignore[union-attr]
            except ValueError:  # a field of a type marshal cannot send (a tampered row): here
                ahead.append(self._here(r, before_r, want))
                continue
            except OSError as exc:
                self._lost(exc)
                ahead.append(self._here(r, before_r, want))
                continue
            ahead.append(_Ahead(r, before_r, want, ticket=ticket,
                                size=self.worker.submitted - before))  # type: ignore[union-attr]
            ahead_bytes += ahead[-1].size
            while len(ahead) > DIGEST_LAG_ROUNDS or (len(ahead) > 1 and ahead_bytes > DIGEST_LAG_BYTES):
                ahead_bytes -= ahead[0].size
                yield self._out(ahead.popleft())
        while ahead:
            yield self._out(ahead.popleft())

    def _here(self, r: RoundRecord, prev: str, want: bool) -> "_Ahead":
        """Round ``r`` read (if its transfers were left unread) and digested here as the helper
        would (``digests.columns_digests``); a round that cannot be, checked here and digested
        from its rows when asked."""
        self._read(r)
        if not r.pending:
            columns = r.columns()
            if not columns or set(map(type, columns[4])) == {int}:
                got = columns_digests(prev, r.index, r.events, r.arrays, r.resolutions, columns, want, self.run_id,
                                      self.accounts, self.positions, self.kind)
                if got is not None:
                    return _Ahead(r, prev, want, ok=got.clean, got=got)
        return _Ahead(r, prev, want, ok=self.clean(r))

    def _read(self, r: RoundRecord) -> None:
        """Read round ``r``'s transfers into it, if they were left unread."""
        if r.unread:
            assert self.read is not None, "a round's transfers left unread with no way to read them"
            r.transfers, r.unread, r._columns = self.read(r.index), 0, None

    def _out(self, a: "_Ahead") -> tuple[RoundRecord, bool, _Digests]:
        if a.ticket is None:  # digested here already
            return a.out(len(self.positions))
        if self.worker is not None:
            try:
                got = self.worker.result(a.ticket)
            except OSError as exc:
                self._lost(exc)
            else:
                if got is not None:
                    if not got.clean:
                        self._read(a.r)  # the audit names the bad rows
                    a.got, a.ok = got, got.clean
                    return a.out(len(self.positions))
        # the helper could not take the round, or is gone
        return self._here(a.r, a.prev, a.want).out(len(self.positions))

    def _helper_keeps_up(self) -> bool:
        """Whether the helper has at most ``DIGEST_STEAL_BACKLOG`` requests unanswered: a
        round read while it is further behind is digested here instead, so that this
        process shares the hashing rather than wait for the helper (a database server on
        the same cores takes its share of them too)."""
        try:
            return self.worker.backlog() <= DIGEST_STEAL_BACKLOG  # type: ignore[union-attr]
        except OSError as exc:
            self._lost(exc)
            return False

    def clean(self, r: RoundRecord) -> bool:
        """``invariants.transfers_clean`` of round ``r``'s transfers and pending transfers."""
        columns = tuple(zip(*r.transfers, *r.pending)) if r.pending else r.columns()
        return transfers_clean(self.run_id, r.index, columns, self.accounts)

    def _start(self, accounts: frozenset[str], payer: Payer, source: RowSource | None) -> None:
        try:
            self.worker = DigestWorker(accounts, payer, source)
        except OSError as exc:  # no interpreter to start (an embedded or frozen Python)
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        """The helper failed: the rest of the audit digests here (nothing is lost: every
        round not yet out is still held, and read here if its transfers were left unread)."""
        warnings.warn(f"audit: the digest helper process failed ({exc}); digesting in this process",
                      RuntimeWarning, stacklevel=2)
        if self.worker is not None:
            self.worker.proc.kill()
            self.worker.close()
        self.worker, self.allowed = None, False


@dataclass
class _Ahead:
    """A round in the audit's first stage: the hash it chains onto, whether its head needs
    the root, whether it is clean, its helper ticket (``None``: digested here) and request
    size, and its digests once computed (by the helper, or here as the helper would)."""

    r: RoundRecord
    prev: str
    want: bool
    ok: bool = False
    ticket: int | None = None
    size: int = 0
    got: Digested | None = None

    def out(self, agents: int) -> tuple[RoundRecord, bool, _Digests]:
        """The round with its digests (those not computed yet: computed from its rows when
        first asked) and, when they were summed, what each of the run's ``agents`` paid."""
        later = partial(_digests_here, self.r, self.prev, self.want)
        if self.got is None:
            return self.r, self.ok, _Digests(later)
        paid = None
        if self.got.paid is not None:
            vector = paid_vector(agents, *self.got.paid)
            paid = RoundPaid(vector, vector)  # (a round with pending transfers has none summed)
        return self.r, self.ok, _Digests(later, round_hash=self.got.round_hash,
                                         root=self.got.root if self.want else None, paid=paid)


def _digests_here(r: RoundRecord, prev: str, want_root: bool) -> tuple[str, bytes | None]:
    """Round ``r``'s hash (chained onto ``prev``) and root, computed in this process from its
    rows as they are (a line holding a newline too)."""
    assert not r.unread, f"round {r.index}: digests asked of transfers never read"
    head, tail = round_text_parts(prev, r.index, r.events, pending=r.pending, resolutions=r.resolutions,
                                  arrays=r.arrays)
    lines = transfer_lines(r.transfers)
    block = "\n".join(lines).encode()
    return round_hash_of_parts(head, block, tail), merkle_root(line_leaves(lines, block)) if want_root else None


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """The objects alive before the audit (JAX's, the application's) kept out of the
    garbage collector's scans while it runs (``gc.freeze``; ``gc.unfreeze`` after): the
    audit allocates millions of short-lived rows, and each full collection would otherwise
    walk every object of the process. Nothing is collected later than it would be after
    the audit. An application that froze objects itself keeps its own state (no freeze
    here, so no unfreeze of its objects either)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _audit_run(ledger: Ledger, run_id: str | None, trust: TrustOptions | None,
               digests_of: _RoundDigests) -> AuditReport:
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
    settlements = Settlements(market)
    account_names = frozenset(accounts)
    rid = run.id
    prev, chain_ok, n_transfers, n_rounds = run.header_hash, chain.ok, 0, 0
    a = market.audit_init()
    window = getattr(market, "audit_window", 1) if hasattr(market, "audit_rounds") else 1
    held: list[_Held] = []  # rounds whose recomputation waits for the market's window
    # the helper reads the transfers itself where the market's recomputation needs only their
    # sums (and no account has a floor to follow row by row): this process reads their counts
    source = (ledger.row_source() if digests_of.allowed and not getattr(market, "audit_reads_transfers", True)
              and not escrow.floors else None)
    with ledger.transfer_reader(rid) as read:
        for r, ok, digests in digests_of.stream(ledger.iter_rounds(rid, transfers=source is None), run.header_hash,
                                                signed.needs_root, rid, account_names,
                                                agent_positions(market.agent_ids), market.payment_kind,
                                                source, read):
            expected_index, n_rounds = n_rounds, n_rounds + 1
            n_transfers += r.transfer_count
            late = _Held(r, _missing_events(market, r))
            # double entry + idempotency: a whole round column-wise (``ok``); row by row (naming the
            # first bad row) only when something is off. An id that matches its fields names its
            # round, so a duplicate can only be within a round (constant memory)
            if not ok:
                _name_bad_transfers(rid, r, accounts, double_entry, idem)
            # hash chain: the first broken link is named, later rounds cannot be trusted
            if chain_ok:
                if r.index != expected_index:
                    chain.fail(f"round {expected_index} is missing (next stored round is {r.index})")
                    late.complete.append(f"round {expected_index} is missing")
                    chain_ok = False
                elif r.prev_hash != prev or digests.round_hash != r.hash:
                    chain.fail(f"round {r.index}: rows do not match the stored hash chain "
                               f"(changed, deleted or inserted rows)")
                    chain_ok = False
                prev = r.hash
            signed.round(r, digests.merkle_root)  # the transfers' root, read once the round has a head
            escrow.round(r)
            late.paid = digests.paid  # summed by the helper
            if window > 1:  # held for the window: its payments summed, its transfer rows let go
                late.paid = late.paid or round_paid(market, r)
                late.record = replace(r, transfers=[], _columns=None)
            held.append(late)
            if len(held) >= window:
                a = _recompute_held(market, a, held, complete, pay, extra, settlements)
                held = []
    a = _recompute_held(market, a, held, complete, pay, extra, settlements)
    signed.finish(n_rounds, prev)
    if run.final_rounds is not None and (left := settlements.unsettled()):
        pay.fail(f"round {n_rounds - 1}: {left}")
    if chain_ok and run.final_rounds is not None and (n_rounds, prev) != (run.final_rounds, run.final_hash):
        first = min(n_rounds, run.final_rounds)
        chain.fail(f"round {first}: run finished with {run.final_rounds} rounds (last hash "
                   f"{(run.final_hash or '')[:12]}), the ledger holds {n_rounds} (last hash {prev[:12]})")
    # balances are derived (credits minus debits): every transfer row moves one positive
    # amount from its debit to its credit account, checked above, so they sum to zero
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
        if self.balance:  # only floored accounts are followed: nothing to do per transfer without them
            for _id, _k, debit, credit, amount in r.transfers:
                if type(amount) is int:  # a tampered amount (text, say) moves no money: ``double_entry`` names it
                    self._move(debit, -amount)
                    self._move(credit, amount)
        for pid, _k, debit, credit, amount in r.pending:
            self.any_pending = True
            amount = amount if type(amount) is int else 0
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
            if (state not in ("posted", "voided") or type(amount) is not int or not 0 <= amount <= pending
                    or (state == "voided" and amount)):
                self.escrow.fail(f"round {r.index}: {pid} {state} with amount {amount!r} (pending {pending})")
                amount = amount if type(amount) is int else 0
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


def _name_bad_transfers(run_id: str, r: RoundRecord, accounts: dict[str, str], double_entry: Check,
                        idem: Check) -> None:
    """Row by row: fail ``double_entry`` / ``idempotency`` naming each bad transfer of round ``r``."""
    seen: set[str] = set()
    for tid, kind, debit, credit, amount in r.transfers + r.pending:
        if type(amount) is not int or amount <= 0:
            double_entry.fail(f"round {r.index} transfer {tid}: amount {amount!r} is not a positive integer")
        if debit == credit or debit not in accounts or credit not in accounts:
            double_entry.fail(f"round {r.index} transfer {tid}: accounts {debit!r} -> {credit!r} invalid")
        if tid != transfer_id(run_id, r.index, kind, debit, credit):
            idem.fail(f"round {r.index} transfer {tid}: id does not match its fields")
        if tid in seen:
            idem.fail(f"round {r.index} transfer {tid}: duplicate id")
        seen.add(tid)


@dataclass
class _Held:
    """A round checked row by row whose recomputation waits for the market's window: its
    ``complete`` failures so far, the required events it lacks, its payment sums."""

    record: RoundRecord
    missing: list[str]
    complete: list[str] = field(default_factory=list)
    paid: RoundPaid | None = None


def _recompute_held(market: AuditSteps, a: Any, held: list[_Held], complete: Check, pay: Check,
                    extra: dict[str, Check], settlements: "Settlements") -> Any:
    """Recompute the held rounds (one call where the market can) and fail ``rounds_complete``,
    ``payments_recompute`` and the market's checks in round order; the next audit state."""
    recomputed = iter(recompute_rounds(market, a, [h.record for h in held if not h.missing]))
    for h in held:
        for detail in h.complete:
            complete.fail(detail)
        if h.missing:
            complete.fail(f"round {h.record.index}: missing events {', '.join(h.missing)}")
            continue
        a, rec = next(recomputed)
        _check_recomputed(market, h.record, rec, pay, extra, settlements, h.paid)
    return a


def _missing_events(market: AuditSteps, r: RoundRecord) -> list[str]:
    """Event kinds the market requires that round ``r`` lacks."""
    kinds = {k for _, k, agent, _ in r.events if agent is None}
    return [k for k in market.required_events(r.index) if k not in kinds]


def recompute_rounds(market: AuditSteps, a: Any, records: list[RoundRecord]) -> list[tuple[Any, Recomputed | str]]:
    """``recompute_round`` over consecutive rounds, each from the audit state the one before
    left: in one call where the market recomputes several rounds at once (``audit_rounds``,
    which may decline with ``None``), else round by round."""
    batch = getattr(market, "audit_rounds", None)
    if batch is not None and records:
        try:
            out = batch(a, records)
        except (KeyError, ValueError, TypeError):
            out = None
        if out is not None:
            return out
    out = []
    for r in records:
        a, rec = recompute_round(market, a, r)
        out.append((a, rec))
    return out


def _check_recomputed(market: AuditSteps, r: RoundRecord, rec: Recomputed | str, pay: Check,
                      extra: dict[str, Check], settlements: "Settlements", paid: RoundPaid | None) -> None:
    """Fail ``payments_recompute`` and the market's checks where round ``r`` disagrees with
    its recomputation ``rec`` (a string: why it could not be recomputed)."""
    if isinstance(rec, str):
        pay.fail(f"round {r.index}: {rec}")
        return
    for mismatch in (payment_mismatch(market, r, rec, paid), settlements.settle(r, rec, paid)):
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
