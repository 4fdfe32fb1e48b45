"""Payment proofs: one agent checks its own payments against the signed round heads.

``payment_proof`` (``mbi prove --run ID --agent A [--round R]``) collects, for each round
in which the agent's account moved money, the round's signed head (run id, index, round
hash, Merkle root, signature) and, for each of the agent's transfers, its leaf index and
RFC 6962 inclusion path (``mbiagents.ledger.merkle``). ``verify_payment_proof`` (``mbi
prove --verify PROOF.json``) needs nothing but the proof and, to trust the signer, the
operator's public key: it checks every head's Ed25519 signature and every path up to the
signed root, and sums what the agent received. A round in which the agent's payment
rounded to zero holds no transfer of it, so the proof has nothing to show for it (an
absence is not proven).

Proof format ``mbi-payment-proof/1`` (JSON)::

    {"format": "mbi-payment-proof/1", "run_id": ..., "agent": ..., "account": "agent:<id>",
     "public_key": hex | null,
     "rounds": [{"round": r, "hash": ..., "merkle_root": ..., "signature": hex | null, "tree_size": n,
                 "transfers": [{"leaf_index": i, "id": ..., "kind": ..., "debit": ..., "credit": ...,
                                "amount": minor units, "path": [hex, ...]}]}],
     "received_minor_units": credits minus debits of the account over the listed rounds}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mbiagents.errors import MbiError
from mbiagents.ledger.merkle import inclusion_proof, leaf_hash, root_from_proof, transfer_leaves, transfer_line
from mbiagents.ledger.signing import head_statement, read_round_heads, verify
from mbiagents.ledger.store import Ledger, agent_account

PROOF_FORMAT = "mbi-payment-proof/1"


def payment_proof(ledger: Ledger, run_id: str | None, agent: str, round_index: int | None = None) -> dict[str, Any]:
    """The inclusion proofs of ``agent``'s transfers in a run (all rounds, or one)."""
    run = ledger.get_run(run_id)
    account = agent_account(agent)
    if account not in dict(ledger.accounts(run.id)):
        raise MbiError(f"run {run.id} has no agent {agent!r}")
    heads = read_round_heads(ledger, run.id)
    rounds, received, seen = [], 0, False
    for r in ledger.iter_rounds(run.id):
        if round_index is not None and r.index != round_index:
            continue
        seen = True
        mine = [j for j, t in enumerate(sorted(r.transfers)) if account in (t[2], t[3])]
        if not mine:
            continue
        if r.index not in heads:
            raise MbiError(f"run {run.id} round {r.index} has no recorded head (written before signed heads)")
        root, sig = heads[r.index]
        leaves = transfer_leaves(r.transfers)
        ordered = sorted(r.transfers)
        items = []
        for j in mine:
            tid, kind, debit, credit, amount = ordered[j]
            received += amount if credit == account else -amount
            items.append({"leaf_index": j, "id": tid, "kind": kind, "debit": debit, "credit": credit,
                          "amount": int(amount), "path": [p.hex() for p in inclusion_proof(leaves, j)]})
        rounds.append({"round": r.index, "hash": r.hash, "merkle_root": root, "signature": sig,
                       "tree_size": len(leaves), "transfers": items})
    if round_index is not None and not seen:
        raise MbiError(f"run {run.id} has no round {round_index}")
    return {"format": PROOF_FORMAT, "run_id": run.id, "agent": agent, "account": account,
            "public_key": run.public_key, "rounds": rounds, "received_minor_units": received}


@dataclass
class ProofCheck:
    ok: bool
    detail: str
    rounds: int = 0
    received_minor_units: int = 0
    public_key: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "rounds": self.rounds,
                "received_minor_units": self.received_minor_units, "public_key": self.public_key}


def verify_payment_proof(doc: Any, public_key: str | None = None) -> ProofCheck:
    """Check a payment proof: each head's signature (under ``public_key`` when given, which
    must then be the proof's key; else under the key the proof names) and each transfer's
    inclusion path to its signed Merkle root. An unsigned proof never verifies."""
    try:
        if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
            return ProofCheck(False, f"not an {PROOF_FORMAT} document")
        key = doc.get("public_key")
        if not key:
            return ProofCheck(False, "the run is unsigned: nothing outside the database vouches for these payments")
        if public_key and key.lower() != public_key.lower():
            return ProofCheck(False, f"signed by key {key[:16]}, not the trusted key {public_key[:16]}", public_key=key)
        run_id, account, received = str(doc["run_id"]), str(doc["account"]), 0
        for rd in doc["rounds"]:
            r = int(rd["round"])
            if not verify(key, rd.get("signature"), head_statement(run_id, r, str(rd["hash"]), str(rd["merkle_root"]))):
                return ProofCheck(False, f"round {r}: the head signature does not verify", public_key=key)
            root = bytes.fromhex(rd["merkle_root"])
            for t in rd["transfers"]:
                if account not in (t["debit"], t["credit"]):
                    return ProofCheck(False, f"round {r}: transfer {t['id']} does not move {account}", public_key=key)
                amount = t["amount"]
                if type(amount) is not int or amount <= 0:
                    return ProofCheck(False, f"round {r}: transfer {t['id']} has amount {amount!r}", public_key=key)
                leaf = leaf_hash(transfer_line((t["id"], t["kind"], t["debit"], t["credit"], amount)))
                path = [bytes.fromhex(p) for p in t["path"]]
                if root_from_proof(leaf, int(t["leaf_index"]), int(rd["tree_size"]), path) != root:
                    return ProofCheck(False, f"round {r}: transfer {t['id']} is not in the signed Merkle root",
                                      public_key=key)
                received += amount if t["credit"] == account else -amount
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return ProofCheck(False, f"malformed proof: {type(exc).__name__}: {exc}")
    n = len(doc["rounds"])
    return ProofCheck(True, f"{n} round(s) verified: {account} received {received} minor units", n, received, key)
