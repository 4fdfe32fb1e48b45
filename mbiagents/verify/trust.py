"""Trust beyond the database: the audit's checks of signed heads, witness and expected head.

Checks (``mbi audit``; see ``mbiagents.ledger.signing`` for what is signed):

- ``signatures``: the run's signed start (header hash recomputed from the run's fields,
  its account rows, its public key), every round's head (round hash and Merkle root,
  which recomputes from the round's transfers) and, for a finished run, its signed end
  (status, round count, last hash) verify under the run's public key, and that key is
  a trusted one (``--public-key``, or the locally configured signing key). An unsigned
  run fails this check when a key is trusted (a stripped or re-forged history), and is
  reported as ``info`` when none is.
- ``header_payloads``: what the signed scenario fixes matches the logged rows: the
  account rows are the scenario's agents (in order), the treasury and the market's
  accounts; events name only the scenario's agents; payloads the market fixes (the task
  market's tasks and their values) equal the scenario's.
- ``run_end`` (informational): a run still marked running has no signed end, so only a
  witness or an expected head can rule out its truncation.
- ``witness`` (with ``--witness FILE``): every statement the run appended to the witness
  file verifies and is in the ledger: the same key and header, every witnessed round head
  at its index, the witnessed end. Catches truncation, replacement and deletion of a run.
- ``expected_head`` (with ``--expect-head HASH``): the run's chain holds this round hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mbiagents.ledger.merkle import round_merkle_root
from mbiagents.ledger.signing import (accounts_hash, end_statement, head_statement, read_account_rows, read_round_heads,
                                      start_statement, verify)
from mbiagents.ledger.store import TREASURY, Ledger, RoundRecord, agent_account, header_hash, run_header


@dataclass(frozen=True)
class TrustOptions:
    """What the auditor trusts from outside the database."""

    trusted_keys: tuple[str, ...] = ()  # hex Ed25519 public keys
    witness: list[dict[str, Any]] | None = None  # the lines of a witness file (``read_witness``)
    expect_head: str | None = None  # a round hash the run's chain must hold


def _short(h: str | None) -> str:
    return (h or "none")[:16]


@dataclass
class TrustVerifier:
    """Streams alongside the audit: ``start``, then ``round`` per round, then ``finish``."""

    ledger: Ledger
    run: Any
    market: Any
    opts: TrustOptions
    make_check: Any  # the audit's Check class
    hashes: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run, opts = self.run, self.opts
        unsigned_ok = run.public_key is None and not opts.trusted_keys
        self.sig = self.make_check("signatures", informational=unsigned_ok)
        self.payloads = self.make_check("header_payloads")
        self.end = self.make_check("run_end", informational=True)
        self.witness = self.make_check("witness") if opts.witness is not None else None
        self.expect = self.make_check("expected_head") if opts.expect_head else None
        self.heads = read_round_heads(self.ledger, run.id)
        self.agents = set(self.market.agent_ids)

    @property
    def checks(self) -> list[Any]:
        return [c for c in (self.sig, self.payloads, self.end, self.witness, self.expect) if c is not None]

    # ---- start ----------------------------------------------------------------------------
    def start(self) -> None:
        run, key = self.run, self.run.public_key
        rows = read_account_rows(self.ledger, run.id)
        self.accounts_hash = accounts_hash(rows)
        if key is None:
            self.sig.fail("run is unsigned: " + ("a trusted key is configured, so its signatures were stripped or "
                                                 "it was forged" if self.opts.trusted_keys else
                                                 "its history could be re-forged from inside the database "
                                                 "(`mbi keys init` signs new runs)"))
        else:
            if self.opts.trusted_keys and key not in self.opts.trusted_keys:
                self.sig.fail(f"run is signed by key {_short(key)}, which is not a trusted key "
                              f"({', '.join(map(_short, self.opts.trusted_keys))})")
            if not verify(key, run.start_sig, start_statement(run.id, header_hash(run_header(run)),
                                                              self.accounts_hash, key)):
                self.sig.fail("run start: the signature does not cover the run's header and accounts "
                              "(header, scenario or account rows changed)")
        expected = [(agent_account(a), "agent", i) for i, a in enumerate(self.market.agent_ids)]
        expected.append((TREASURY, "treasury", len(expected)))
        extra = getattr(self.market, "extra_accounts", lambda: ())()  # a market's own accounts, if it has any
        expected += [(n, "mechanism", len(expected) + j) for j, n in enumerate(extra)]
        if sorted(rows, key=lambda r: r[2]) != expected:
            got = {r[0]: r for r in rows}
            bad = next((e for e in expected if got.get(e[0]) != e), None) or next(r for r in rows if r not in expected)
            self.payloads.fail(f"account rows differ from the scenario's (first: {bad[0]!r})")

    # ---- one round ------------------------------------------------------------------------
    def needs_root(self, index: int) -> bool:
        """Whether round ``index`` has a head whose Merkle root ``round`` will check."""
        return index in self.heads

    def round(self, r: RoundRecord, merkle_root: Callable[[], str] | None = None) -> None:
        """Check round ``r``; ``merkle_root`` gives its transfers' Merkle root when a head
        needs it (default: ``round_merkle_root`` of ``r.transfers``)."""
        self.hashes[r.index] = r.hash
        head = self.heads.get(r.index)
        key = self.run.public_key
        if head is None:
            if key is not None:
                self.sig.fail(f"round {r.index}: no signed head (a round inserted behind the ledger's back)")
        else:
            root, sig = head
            if (merkle_root() if merkle_root else round_merkle_root(r.transfers)) != root:
                self.sig.fail(f"round {r.index}: Merkle root of its transfers does not match its head")
            elif key is not None and not verify(key, sig, head_statement(self.run.id, r.index, r.hash, root)):
                self.sig.fail(f"round {r.index}: head signature does not verify (round rows or hash changed)")
        for _, kind, agent, _ in r.events:
            if agent is not None and agent not in self.agents:
                self.payloads.fail(f"round {r.index}: event {kind} names agent {agent!r}, not one of the scenario's")
                break
        for kind, fixed in self.market.fixed_payloads(r.index).items():
            try:
                logged = r.payload(kind)
            except KeyError:
                continue  # a missing event is rounds_complete's finding
            for k, v in fixed.items():
                if not isinstance(logged, dict) or logged.get(k) != v:
                    got = logged.get(k) if isinstance(logged, dict) else logged
                    self.payloads.fail(f"round {r.index}: {kind}.{k} is {got!r}, the signed scenario fixes {v!r}")

    # ---- end ------------------------------------------------------------------------------
    def finish(self, n_rounds: int, last_hash: str) -> None:
        run, key = self.run, self.run.public_key
        if run.status == "running":
            if run.end_sig:
                self.sig.fail("run is marked running but has a signed end (its status was changed)")
            self.end.fail("run is marked running (or crashed) and has no signed end: only --witness or "
                          "--expect-head can rule out a truncation")
        elif key is not None and not verify(key, run.end_sig, end_statement(run.id, run.status, run.final_rounds or 0,
                                                                             run.final_hash or "")):
            self.sig.fail(f"run end: the signature does not cover status {run.status!r}, {run.final_rounds} rounds, "
                          f"last hash {_short(run.final_hash)} (status, round count or last hash changed)")
        if self.witness is not None:
            check_witness(self.witness, self.opts.witness or [], run.id, key, header_hash(run_header(run)),
                          self.accounts_hash, self.hashes, run)
        if self.expect is not None:
            want = self.opts.expect_head.lower()
            where = next((i for i, h in self.hashes.items() if h == want), None)
            if where is None:
                self.expect.fail(f"the run's chain ({n_rounds} rounds, last hash {_short(last_hash)}) does not hold "
                                 f"the expected head {_short(want)} (truncated or replaced)")


def witness_run_id(lines: list[dict[str, Any]]) -> str | None:
    """The run of the last line of a witness file (the run ``--witness`` audits by default)."""
    return str(lines[-1].get("run")) if lines else None


def check_witness(check: Any, lines: list[dict[str, Any]], run_id: str, key: str | None, hhash: str | None,
                  ahash: str | None, hashes: dict[int, str], run: Any) -> None:
    """Compare a run in the ledger (``run`` ``None``: absent) with its witness lines."""
    mine = [ln for ln in lines if ln.get("run") == run_id]
    if not mine:
        check.fail(f"the witness file has no statement of run {run_id}")
        return
    wkey = next((ln.get("public_key") for ln in mine if ln.get("kind") == "start"), None)
    for ln in mine:
        kind = ln.get("kind")
        msg = (start_statement(run_id, ln.get("header_hash", ""), ln.get("accounts_hash", ""), wkey or "")
               if kind == "start" else
               head_statement(run_id, ln.get("index", -1), ln.get("hash", ""), ln.get("merkle_root", ""))
               if kind == "head" else
               end_statement(run_id, ln.get("status", ""), ln.get("rounds", -1), ln.get("hash", ""))
               if kind == "end" else None)
        if msg is None or not verify(wkey, ln.get("sig"), msg):
            check.fail(f"witness line {kind} of run {run_id} does not verify under the witnessed key {_short(wkey)}")
            return
    if run is None:
        last = max((ln.get("index", -1) for ln in mine if ln.get("kind") == "head"), default=-1)
        check.fail(f"run {run_id} is in the witness file ({last + 1} rounds witnessed) but not in the ledger (deleted)")
        return
    if key != wkey:
        check.fail(f"run {run_id} is signed by key {_short(key)}, the witness by {_short(wkey)} (replaced)")
        return
    for ln in mine:
        kind = ln.get("kind")
        if kind == "start" and (ln.get("header_hash"), ln.get("accounts_hash")) != (hhash, ahash):
            check.fail("the run's header or accounts differ from the witnessed start (replaced)")
            return
        if kind == "head" and hashes.get(ln["index"]) != ln.get("hash"):
            have = hashes.get(ln["index"])
            check.fail(f"round {ln['index']}: witnessed head {_short(ln.get('hash'))}, the ledger "
                       + (f"holds {_short(have)} (replaced)" if have else "does not hold it (truncated)"))
            return
        if kind == "end" and (run.status, run.final_rounds, run.final_hash, len(hashes)) != (
                ln.get("status"), ln.get("rounds"), ln.get("hash"), ln.get("rounds")):
            check.fail(f"witnessed end: {ln.get('status')} after {ln.get('rounds')} rounds (last hash "
                       f"{_short(ln.get('hash'))}); the ledger: {run.status} with {len(hashes)} rounds")
            return
