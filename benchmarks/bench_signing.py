"""Cost of signed round heads: the write path with and without a signer, and Merkle roots.

Run: ``python benchmarks/bench_signing.py [--rounds R] [--agents N]``. Writes R rounds of N
payment transfers (one SQLite file per variant, the full write path; best of three
interleaved repetitions) three ways: no
signer (no round heads), an unsigned head (Merkle root only), and a signed head with a
witness file; prints the per-round time and the ratios, measured in one run. Then the
Merkle root and one inclusion proof over 10^6 transfer leaves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from benchmarks._util import best_time  # noqa: E402
from mbiagents.ledger.merkle import inclusion_proof, merkle_root, transfer_leaves  # noqa: E402
from mbiagents.ledger.schema import open_ledger  # noqa: E402
from mbiagents.ledger.signing import RunSigner  # noqa: E402
from mbiagents.ledger.store import EventRow, TransferRow  # noqa: E402


def write_run(folder: Path, name: str, signer: RunSigner | None, rounds: int, agents: int) -> float:
    led = open_ledger(f"sqlite:///{folder / (name + '.db')}")
    led.signer = signer
    ids = [f"a{i}" for i in range(agents)]
    run_id = led.create_run(name=name, game="team", mechanism="dpm", seed=0, scenario={"n": agents}, agent_ids=ids)
    transfers = [TransferRow("payment", f"agent:{a}", "treasury", 1000 + i) for i, a in enumerate(ids)]
    events = [EventRow("payments", {"t": [0.001] * agents})]
    t0 = time.perf_counter()
    for r in range(rounds):
        led.write_round(run_id, r, events, transfers)
    per_round = (time.perf_counter() - t0) / rounds
    led.finish_run(run_id, "completed")
    led.dispose()
    return per_round


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--agents", type=int, default=1000)
    args = ap.parse_args()
    best = {"plain": float("inf"), "unsigned": float("inf"), "signed": float("inf")}
    for rep in range(3):  # interleaved, best of three: the machine is shared
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            signers = {"plain": None, "unsigned": RunSigner(None),
                       "signed": RunSigner(Ed25519PrivateKey.generate(), folder / "w.jsonl")}
            for name, signer in signers.items():
                best[name] = min(best[name], write_run(folder, name, signer, args.rounds, args.agents))
    plain, unsigned, signed = best["plain"], best["unsigned"], best["signed"]
    print(f"write_round, {args.agents} transfers, {args.rounds} rounds (SQLite):")
    print(f"  no heads       {plain * 1e3:8.2f} ms/round")
    print(f"  Merkle root    {unsigned * 1e3:8.2f} ms/round  x{unsigned / plain:.2f}")
    print(f"  signed+witness {signed * 1e3:8.2f} ms/round  x{signed / plain:.2f}")
    big = [(f"run:0:payment:agent:a{i}:treasury", "payment", f"agent:a{i}", "treasury", 1000 + i) for i in range(10**6)]
    leaves = transfer_leaves(big)
    t_leaves = best_time(lambda: transfer_leaves(big), repeat=1)
    t_root = best_time(lambda: merkle_root(leaves), repeat=1)
    t_proof = best_time(lambda: inclusion_proof(leaves, 123_456), repeat=1)
    print(f"10^6 transfers: leaves {t_leaves:.2f} s, root {t_root:.2f} s, one inclusion proof {t_proof:.2f} s")


if __name__ == "__main__":
    main()
