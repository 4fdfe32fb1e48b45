"""Issue 13's tampers of a finished, signed run: every one fails ``mbi audit`` (exit 1).

Each tamper is raw SQL by an attacker who holds the database (append-only triggers
dropped where it needs them) but not the signing key, and who may recompute every hash
inside the database. SQLite for all of them; PostgreSQL for a representative subset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.ledger.payments import payment_transfers
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.signing import RunSigner, public_hex
from mbiagents.ledger.store import EventRow, TransferRow, canonical_json, header_hash, round_hash, transfer_id
from mbiagents.markets import build_market
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES, drop_append_only_triggers

runner = CliRunner()
SCENARIO = EXAMPLES / "task_market.toml"  # 4 rounds; the scenario fixes task values
SEED_HEX = "11" * 32
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED_HEX))
PUB = public_hex(KEY)


def signed_run(url: str, witness: Path, monkeypatch) -> dict:
    monkeypatch.setenv("MBI_SIGNING_KEY", SEED_HEX)
    res = runner.invoke(app, ["run", str(SCENARIO), "--ledger", url, "--witness", str(witness), "--json"])
    assert res.exit_code == 0, res.output
    monkeypatch.delenv("MBI_SIGNING_KEY")
    return json.loads(res.stdout)


def audit(url: str, run_id: str, *extra: str) -> tuple[int, dict]:
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", run_id, "--public-key", PUB, *extra, "--json"])
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.stdout)


def failed(report: dict) -> dict[str, str]:
    return {c["name"]: c["first_failure"] for c in report["checks"] if not c["ok"] and not c["informational"]}


# ---- tampers -------------------------------------------------------------------------------
def rechain(engine, run_id: str) -> None:
    """Recompute every round hash and the run's final hash from the (edited) rows: what an
    attacker inside the database can always do."""
    led = open_ledger(engine.url.render_as_string(hide_password=False), create=False)
    rounds = led.read_rounds(run_id)
    led.dispose()
    with engine.begin() as conn:
        prev = conn.execute(text("select header_hash from runs where id = :i"), {"i": run_id}).scalar_one()
        for r in rounds:
            h = round_hash(prev, r.index, r.events, r.transfers)
            conn.execute(text('update rounds set prev_hash = :p, hash = :h where run_id = :i and "index" = :x'),
                         {"p": prev, "h": h, "i": run_id, "x": r.index})
            prev = h
        conn.execute(text("update runs set final_hash = :h, final_rounds = :n where id = :i"),
                     {"h": prev, "n": len(rounds), "i": run_id})


def forged_insert_round(engine, run_id):
    """INSERT only (the update/delete triggers on; the one refusing rounds on a completed run
    dropped, as raw DDL can): a round 4 paying alice 12.00, its hash recomputed, final_* moved."""
    with engine.begin() as conn:
        conn.execute(text("drop trigger if exists rounds_no_append_completed"
                          + (" on rounds" if engine.dialect.name == "postgresql" else "")))
        n, last = conn.execute(text("select final_rounds, final_hash from runs where id = :i"), {"i": run_id}).one()
        tr = [(transfer_id(run_id, n, "payment", "treasury", "agent:alice"), "payment", "treasury", "agent:alice",
               12_000_000)]
        ev = [(0, "tasks", None, canonical_json({"ids": [], "values": []})), (1, "reports", None, '{"costs":[[],[],[],[]]}'),
              (2, "outcome", None, '{"assignment":{},"optimal_welfare":0.0,"reported_welfare":0.0,"welfare":0.0}'),
              (3, "payments", None, '{"t":[-12.0,0.0,0.0,0.0]}')]
        h = round_hash(last, n, ev, tr)
        conn.execute(text('insert into rounds (run_id, "index", prev_hash, hash, n_events, n_transfers) '
                          "values (:i, :n, :p, :h, 4, 1)"), {"i": run_id, "n": n, "p": last, "h": h})
        for seq, kind, agent, payload in ev:
            conn.execute(text("insert into events values (:i, :n, :s, :k, :a, :p)"),
                         {"i": run_id, "n": n, "s": seq, "k": kind, "a": agent, "p": payload})
        conn.execute(text("insert into transfers values (:id, :i, :n, 'payment', 'treasury', 'agent:alice', 12000000)"),
                     {"id": tr[0][0], "i": run_id, "n": n})
        conn.execute(text("update runs set final_rounds = :r, final_hash = :h where id = :i"),
                     {"r": n + 1, "h": h, "i": run_id})


def _delete_rounds(conn, run_id, first):
    for table, col in (("transfers", "round_index"), ("events", "round_index"), ("round_heads", "round_index"),
                       ("rounds", '"index"')):
        conn.execute(text(f"delete from {table} where run_id = :i and {col} >= :f"), {"i": run_id, "f": first})


def last_round_deleted(engine, run_id):
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        _delete_rounds(conn, run_id, 3)
    rechain(engine, run_id)


def rounds_deleted_marked_running(engine, run_id):
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        _delete_rounds(conn, run_id, 2)
        conn.execute(text("update runs set status = 'running', final_rounds = null, final_hash = null, end_sig = null "
                          "where id = :i"), {"i": run_id})


def reforged_history(engine, run_id, signer_key=Ed25519PrivateKey.generate()):
    """The whole run rewritten by the attacker's code path: same id, same rows, a free hand
    (here: round 1's payment to the winner doubled), signed with the attacker's own key."""
    url = engine.url.render_as_string(hide_password=False)
    led = open_ledger(url, create=False)
    run = led.get_run(run_id)
    rounds = led.read_rounds(run_id)
    accounts = led.accounts(run_id)
    led.dispose()
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        _delete_rounds(conn, run_id, 0)
        conn.execute(text("delete from accounts where run_id = :i"), {"i": run_id})
        conn.execute(text("delete from runs where id = :i"), {"i": run_id})
    led = open_ledger(url, create=False)
    led.signer = RunSigner(signer_key)
    agents = [n.removeprefix("agent:") for n, k in accounts if k == "agent"]
    led.create_run(name=run.name, game=run.game, mechanism=run.mechanism, seed=run.seed,
                   scenario=json.loads(run.scenario_json), agent_ids=agents, run_id=run_id)
    for r in rounds:
        ev = [EventRow(k, json.loads(p), a) for _, k, a, p in r.events]
        tr = [TransferRow(k, d, c, m * (2 if r.index == 1 else 1)) for _, k, d, c, m in r.transfers]
        led.write_round(run_id, r.index, ev, tr)
    led.finish_run(run_id, "completed")
    led.dispose()


def reforged_unsigned(engine, run_id):
    reforged_history(engine, run_id, signer_key=None)


def scenario_edited_rechained(engine, run_id):
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        sc = json.loads(conn.execute(text("select scenario_json from runs where id = :i"), {"i": run_id}).scalar_one())
        sc["tasks"][0]["value"] = 100.0
        row = dict(conn.execute(text("select * from runs where id = :i"), {"i": run_id}).mappings().one())
        row["scenario_json"] = canonical_json(sc)
        conn.execute(text("update runs set scenario_json = :s, header_hash = :h where id = :i"),
                     {"s": row["scenario_json"], "h": header_hash(row), "i": run_id})
    rechain(engine, run_id)


def task_values_edited_rechained(engine, run_id):
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        p = json.loads(conn.execute(text("select payload from events where run_id = :i and round_index = 0 and "
                                         "kind = 'tasks'"), {"i": run_id}).scalar_one())
        p["values"][0] += 1.0
        conn.execute(text("update events set payload = :p where run_id = :i and round_index = 0 and kind = 'tasks'"),
                     {"p": canonical_json(p), "i": run_id})
    rechain(engine, run_id)


def round_reauctioned(engine, run_id):
    """Round 1 re-run with bob's reported costs lowered 10%: reports, outcome, payments and
    transfers all consistent (the audit's recomputation agrees), the chain recomputed."""
    url = engine.url.render_as_string(hide_password=False)
    led = open_ledger(url, create=False)
    market = build_market(load_scenario(SCENARIO))
    r = led.read_rounds(run_id)[1]
    led.dispose()
    reports = np.array([[np.inf if c is None else c for c in row] for row in r.payload("reports")["costs"]])
    reports[1] *= 0.9
    out = market.run_mechanism(reports, 1)
    outcome = dict(r.payload("outcome"), assignment=market.assignment_map(1, out.assignment),
                   reported_welfare=out.reported_welfare)
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        for kind, payload in (("reports", {"costs": [[None if not np.isfinite(c) else float(c) for c in row]
                                                     for row in reports]}),
                              ("outcome", outcome), ("payments", {"t": out.payments.tolist()})):
            conn.execute(text("update events set payload = :p where run_id = :i and round_index = 1 and kind = :k"),
                         {"p": canonical_json(payload), "i": run_id, "k": kind})
        conn.execute(text("delete from transfers where run_id = :i and round_index = 1"), {"i": run_id})
        for t in payment_transfers(market.agent_ids, out.payments, "payment")[0].rows():
            conn.execute(text("insert into transfers values (:id, :i, 1, :k, :d, :c, :m)"),
                         {"id": transfer_id(run_id, 1, t.kind, t.debit, t.credit), "i": run_id, "k": t.kind,
                          "d": t.debit, "c": t.credit, "m": t.amount})
    rechain(engine, run_id)


def run_deleted(engine, run_id):
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        _delete_rounds(conn, run_id, 0)
        conn.execute(text("delete from accounts where run_id = :i"), {"i": run_id})
        conn.execute(text("delete from runs where id = :i"), {"i": run_id})


def status_flipped(engine, run_id):
    with engine.begin() as conn:  # runs are updatable (the status is set at the end)
        conn.execute(text("update runs set status = 'failed' where id = :i"), {"i": run_id})


def status_flipped_running(engine, run_id):
    with engine.begin() as conn:
        conn.execute(text("update runs set status = 'running' where id = :i"), {"i": run_id})


def accounts_edited(engine, run_id):
    with engine.begin() as conn:  # accounts are not append-only either
        conn.execute(text("update accounts set kind = 'mechanism' where run_id = :i and name = 'agent:dan'"),
                     {"i": run_id})


# tamper -> (audit options beyond --public-key, a check that must fail, a fragment of its message)
TAMPERS = {
    "forged_insert_round": (forged_insert_round, (), "signatures", "round 4: no signed head"),
    "last_round_deleted_final_edited": (last_round_deleted, (), "signatures", "run end"),
    "rounds_deleted_marked_running": (rounds_deleted_marked_running, ("witness",), "witness", "truncated"),
    "whole_history_reforged": (reforged_history, (), "signatures", "not a trusted key"),
    "whole_history_reforged_unsigned": (reforged_unsigned, (), "signatures", "unsigned"),
    "scenario_edited_rechained": (scenario_edited_rechained, (), "signatures", "run start"),
    "task_values_edited_rechained": (task_values_edited_rechained, (), "header_payloads", "tasks.values"),
    "round_reauctioned_consistently": (round_reauctioned, (), "signatures", "round 1: head signature"),
    "whole_run_deleted": (run_deleted, ("witness",), "witness", "not in the ledger"),
    "status_flipped": (status_flipped, (), "signatures", "run end"),
    "status_flipped_to_running": (status_flipped_running, (), "signatures", "marked running"),
    "account_rows_edited": (accounts_edited, (), "header_payloads", "agent:dan"),
}
PG_SUBSET = ["forged_insert_round", "last_round_deleted_final_edited", "whole_history_reforged",
             "round_reauctioned_consistently", "whole_run_deleted", "status_flipped", "account_rows_edited"]


@pytest.fixture(scope="module")
def signed_sqlite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    with pytest.MonkeyPatch.context() as mp:
        out = signed_run(f"sqlite:///{folder / 'ledger.db'}", folder / "witness.jsonl", mp)
    return folder, out


def check_tamper(url: str, run_id: str, witness: Path, name: str) -> None:
    tamper, opts, check, fragment = TAMPERS[name]
    extra = ("--witness", str(witness)) if "witness" in opts else ()
    code, report = audit(url, run_id, *extra)
    assert code == 0 and report["ok"], failed(report)  # the untouched run passes, witness and all
    engine = create_engine(url)
    tamper(engine, run_id)
    engine.dispose()
    code, report = audit(url, run_id, *extra)
    assert code == 1 and not report["ok"]
    bad = failed(report)
    assert check in bad and fragment in bad[check], bad


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_sqlite_tamper_fails_the_audit(name, signed_sqlite, tmp_path, digests_where):
    folder, out = signed_sqlite
    shutil.copy(folder / "ledger.db", tmp_path / "ledger.db")
    shutil.copy(folder / "witness.jsonl", tmp_path / "witness.jsonl")
    check_tamper(f"sqlite:///{tmp_path / 'ledger.db'}", out["run_id"], tmp_path / "witness.jsonl", name)


@pytest.mark.postgres
@pytest.mark.parametrize("name", PG_SUBSET)
def test_postgres_tamper_fails_the_audit(name, pg_url, tmp_path, monkeypatch, digests_where):
    out = signed_run(pg_url, tmp_path / "witness.jsonl", monkeypatch)
    check_tamper(pg_url, out["run_id"], tmp_path / "witness.jsonl", name)


def test_truncation_without_witness_is_caught_by_expect_head(signed_sqlite, tmp_path):
    folder, out = signed_sqlite
    shutil.copy(folder / "ledger.db", tmp_path / "ledger.db")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert audit(url, out["run_id"], "--expect-head", out["head"])[0] == 0
    engine = create_engine(url)
    rounds_deleted_marked_running(engine, out["run_id"])
    engine.dispose()
    code, report = audit(url, out["run_id"])  # without outside knowledge: only a warning
    info = {c["name"]: c for c in report["checks"]}
    assert code == 0 and not info["run_end"]["ok"] and info["run_end"]["informational"]
    code, report = audit(url, out["run_id"], "--expect-head", out["head"])
    assert code == 1 and "truncated" in failed(report)["expected_head"]


def test_witness_lines_are_signed_statements(signed_sqlite):
    folder, out = signed_sqlite
    lines = [json.loads(x) for x in (folder / "witness.jsonl").read_text().splitlines()]
    kinds = [ln["kind"] for ln in lines]
    assert kinds == ["start", "head", "head", "head", "head", "end"]
    assert lines[-2]["hash"] == out["head"] and lines[0]["public_key"] == PUB


def test_unsigned_run_is_info_without_a_trusted_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    res = runner.invoke(app, ["run", str(SCENARIO), "--ledger", url, "--json"])
    run_id = json.loads(res.stdout)["run_id"]
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", run_id, "--json"])
    sig = {c["name"]: c for c in json.loads(res.stdout)["checks"]}["signatures"]
    assert res.exit_code == 0 and sig["informational"] and "unsigned" in sig["first_failure"]
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", run_id, "--public-key", PUB, "--json"])
    assert res.exit_code == 1 and "unsigned" in failed(json.loads(res.stdout))["signatures"]
