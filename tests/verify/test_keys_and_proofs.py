"""``mbi keys`` and ``mbi prove``: the signing key's file, and one agent's payment proof."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.ledger.merkle import inclusion_proof, leaf_hash, merkle_root, root_from_proof
from mbiagents.verify.proof import verify_payment_proof

from tests.conftest import EXAMPLES

runner = CliRunner()


def test_keys_init_mode_0600_refuses_overwrite_then_signs_runs(tmp_path, monkeypatch):
    key = tmp_path / "cfg" / "key.pem"
    monkeypatch.setenv("MBI_KEY_FILE", str(key))
    res = runner.invoke(app, ["run", str(EXAMPLES / "task_market.toml"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}",
                              "--witness", str(tmp_path / "w.jsonl")])
    assert res.exit_code == 2 and "no signing key" in res.stderr and not (tmp_path / "l.db").exists()
    res = runner.invoke(app, ["keys", "init", "--json"])
    assert res.exit_code == 0, res.output
    pub = json.loads(res.stdout)["public_key"]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(pub) == 64
    again = runner.invoke(app, ["keys", "init"])
    assert again.exit_code == 2 and "--force" in again.stderr and again.stderr.count("\n") == 1
    assert json.loads(runner.invoke(app, ["keys", "show", "--json"]).stdout)["public_key"] == pub
    forced = runner.invoke(app, ["keys", "init", "--force", "--json"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["public_key"] != pub
    os.chmod(key, 0o644)  # a key readable by others is refused, as ssh does
    res = runner.invoke(app, ["run", str(EXAMPLES / "task_market.toml"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert res.exit_code == 2 and "chmod 600" in res.stderr and not (tmp_path / "l.db").exists()


@pytest.fixture(scope="module")
def signed_task_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prove")
    url = f"sqlite:///{folder / 'ledger.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MBI_SIGNING_KEY", "22" * 32)
        res = runner.invoke(app, ["run", str(EXAMPLES / "task_market.toml"), "--ledger", url, "--json"])
        assert res.exit_code == 0, res.output
        pub = json.loads(runner.invoke(app, ["keys", "show", "--json"]).stdout)["public_key"]
    return url, json.loads(res.stdout), pub


def prove(url, run_id, *args):
    res = runner.invoke(app, ["prove", "--ledger", url, "--run", run_id, *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_agent_proves_its_payments_against_the_signed_heads(signed_task_run, tmp_path):
    url, out, pub = signed_task_run
    for agent, row in out["agents"].items():
        doc = prove(url, out["run_id"], "--agent", agent)
        # the agent's payment in the run summary is what the proof shows it received (minor units)
        assert doc["received_minor_units"] == round(-row["payment"] * 1_000_000)
        check = verify_payment_proof(doc, pub)
        assert check.ok, check.detail
        assert check.received_minor_units == doc["received_minor_units"]
        path = tmp_path / f"{agent}.json"
        path.write_text(json.dumps(doc))
        res = runner.invoke(app, ["prove", "--verify", str(path), "--public-key", pub])
        assert res.exit_code == 0 and "proof verified" in res.stdout


def test_a_changed_proof_fails(signed_task_run, tmp_path):
    url, out, pub = signed_task_run
    paid = next(a for a, r in out["agents"].items() if r["payment"] != 0)
    doc = prove(url, out["run_id"], "--agent", paid)
    t = doc["rounds"][0]["transfers"][0]
    t["amount"] += 1  # claim one minor unit more
    assert not verify_payment_proof(doc, pub).ok
    t["amount"] -= 1
    assert verify_payment_proof(doc, pub).ok
    assert "not the trusted key" in verify_payment_proof(doc, "ab" * 32).detail
    doc["rounds"][0]["hash"] = "0" * 64  # a head the operator never signed
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    res = runner.invoke(app, ["prove", "--verify", str(path), "--public-key", pub])
    assert res.exit_code == 1 and "signature" in res.stdout


def test_prove_one_round_and_bad_input(signed_task_run, tmp_path):
    url, out, _ = signed_task_run
    doc = prove(url, out["run_id"], "--agent", "bob", "--round", "1")
    assert [r["round"] for r in doc["rounds"]] in ([], [1])
    for args, fragment in ((["--agent", "nobody"], "no agent"), (["--agent", "bob", "--round", "99"], "no round"),
                           ([], "--agent")):
        res = runner.invoke(app, ["prove", "--ledger", url, "--run", out["run_id"], *args])
        assert res.exit_code == 2 and fragment in res.stderr and res.stderr.count("\n") == 1
    (tmp_path / "junk.json").write_text("{not json")
    res = runner.invoke(app, ["prove", "--verify", str(tmp_path / "junk.json")])
    assert res.exit_code == 2 and res.stderr.startswith("error:")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_inclusion_proofs_match_rfc6962_shapes(n):
    leaves = [leaf_hash(bytes([i])) for i in range(n)]
    root = merkle_root(leaves)
    for i in range(n):
        proof = inclusion_proof(leaves, i)
        assert root_from_proof(leaves[i], i, n, proof) == root
        assert root_from_proof(leaf_hash(b"x"), i, n, proof) != root
        if n > 1:
            assert root_from_proof(leaves[i], i, n, proof[:-1]) != root
    # RFC 6962: MTH of n > 1 leaves is H(0x01 || MTH(first k) || MTH(rest)), k the largest power of 2 < n
    if n > 1:
        import hashlib

        k = 1 << ((n - 1).bit_length() - 1)
        assert root == hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()
