"""The team market's audit recomputes a window of rounds in one compiled call
(``TeamMarket.audit_rounds``): the same recomputations as ``audit_round`` round by round,
and the same audit report, first failures included, on clean and tampered ledgers."""

from __future__ import annotations

import json
import shutil
import tomllib

import numpy as np
import pytest
from sqlalchemy import text

from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import make_engine
from mbiagents.markets import build_market
from mbiagents.markets.team import TeamMarket
from mbiagents.runner import run_scenario
from mbiagents.scenario import parse_scenario
from mbiagents.verify.audit import audit_run

from tests.conftest import EXAMPLES, drop_append_only_triggers
from tests.verify.test_audit_grade import TAMPER

ROUNDS = 20


def _scenario(name: str, **game):
    data = tomllib.loads((EXAMPLES / name).read_text())
    data["scenario"]["rounds"] = ROUNDS
    data["game"] = {**data.get("game", {}), **game}
    return parse_scenario(data, name)


@pytest.mark.parametrize("name,game", [("shared_capacity.toml", {}),
                                       ("shared_capacity_misreport.toml", {"settlement_interval": 3})])
def test_window_recomputes_as_round_by_round(sqlite_url, name, game):
    scenario = _scenario(name, **game)
    run_id = run_scenario(scenario, ledger_url=sqlite_url, rounds=ROUNDS, checkpoint=False).run_id
    ledger = open_ledger(sqlite_url)
    rounds = ledger.read_rounds(run_id)
    ledger.dispose()
    market = build_market(scenario)
    a, batched = market.audit_init(), []
    for i in range(0, len(rounds), 7):  # windows shorter than audit_window: padded
        out = market.audit_rounds(a, rounds[i:i + 7])
        assert out is not None
        batched += out
        a = out[-1][0]
    a = market.audit_init()
    for r, (state, rec) in zip(rounds, batched):
        a, ref = market.audit_round(a, r)
        assert ref.checks == rec.checks and all(ok for ok, _ in rec.checks.values())
        np.testing.assert_allclose(rec.payments, ref.payments, rtol=1e-12, atol=0)
        assert np.array_equal(state["actions"], a["actions"]) and np.array_equal(state["pivots"], a["pivots"])
        assert (rec.logged_payments is None) == (ref.logged_payments is None)


def _report(url: str, run_id: str, monkeypatch, windowed: bool) -> dict:
    with monkeypatch.context() as m:
        if not windowed:
            m.delattr(TeamMarket, "audit_rounds")
        ledger = open_ledger(url)
        try:
            return audit_run(ledger, run_id).as_json()
        finally:
            ledger.dispose()


@pytest.fixture(scope="module")
def team_ledger(tmp_path_factory):
    path = tmp_path_factory.mktemp("window") / "ledger.db"
    scenario = _scenario("shared_capacity.toml")
    return path, run_scenario(scenario, ledger_url=f"sqlite:///{path}", rounds=ROUNDS, checkpoint=False).run_id


def _tamper_actions(conn, run_id):
    """Round 5's logged usage of one agent changed (its array record rewritten in place)."""
    data = conn.execute(text("select data from arrays where run_id = :r and round_index = 5 and name = 'actions.x'"),
                        {"r": run_id}).scalar_one()
    x = np.frombuffer(data, "<f8").copy()
    x[1] += 1e-3
    conn.execute(text("update arrays set data = :d where run_id = :r and round_index = 5 and name = 'actions.x'"),
                 {"d": x.tobytes(), "r": run_id})


CASES = {"clean": (lambda c, r: None), "changed actions": _tamper_actions,
         **{k: TAMPER[k][0] for k in ("changed transfer", "deleted event", "deleted middle round")}}


@pytest.mark.parametrize("case", list(CASES))
def test_window_gives_the_round_by_round_report(team_ledger, tmp_path, monkeypatch, case, digests_where):
    src, run_id = team_ledger
    dst = tmp_path / "ledger.db"
    shutil.copy(src, dst)
    engine = make_engine(f"sqlite:///{dst}")
    drop_append_only_triggers(engine)
    with engine.begin() as conn:
        CASES[case](conn, run_id)
    engine.dispose()
    url = f"sqlite:///{dst}"
    windowed, single = _report(url, run_id, monkeypatch, True), _report(url, run_id, monkeypatch, False)
    assert json.dumps(windowed, sort_keys=True) == json.dumps(single, sort_keys=True)
    assert windowed["ok"] == (case == "clean")


def test_audit_leaves_an_applications_own_gc_freeze_alone():
    """The audit freezes the process's old objects only when nothing is frozen yet, and
    thaws exactly what it froze: an application's own gc.freeze() survives an audit."""
    import gc

    from mbiagents.verify.audit import _old_objects_frozen

    gc.unfreeze()
    with _old_objects_frozen():
        assert gc.get_freeze_count() > 0  # old objects kept out of the collector's scans
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with _old_objects_frozen():
            pass
        # the application's freeze is still in place (an unfreeze would leave 0; the count
        # drifts by the few frozen objects the interpreter frees or re-tracks meanwhile)
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()
