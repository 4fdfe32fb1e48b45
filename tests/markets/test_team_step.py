"""The team market's step rule through ``mbi run``: ``clearing`` (default) converges in the
same two rounds for every N, ``newton`` converges at N = 1000 far below the round limit,
``fixed`` is still selectable, bad values fail in one line, and the audit recomputes the
broadcast price move and the policy agents' actions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.verify.audit import audit_run
from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market
from mbiagents.runner import run_scenario
from mbiagents.scenario import TeamGameSettings, parse_scenario
from mechanisms import dpm
from mechanisms.games import team

runner = CliRunner()
KAPPA = 0.5



def _recompute(market, rounds):
    """The last round of ``rounds`` recomputed by the market's audit fold."""
    a = market.audit_init()
    for rec in rounds:
        a, out = market.audit_round(a, rec)
    return out

def team_toml(path: Path, n: int, step: str | None, rounds: int = 500, seed: int = 0) -> Path:
    """A team of ``n`` truthful policy agents (one in ten overstates its value by 20%)."""
    rng = np.random.default_rng(seed)
    lines = ["[scenario]", f'name = "team-{n}"', 'game = "team"', 'mechanism = "dpm"', f"rounds = {rounds}",
             "", "[game]", f"congestion = {KAPPA}"]
    if step is not None:
        lines.append(f'step = "{step}"')
    for i, (v, c) in enumerate(zip(rng.uniform(1, 5, n), rng.uniform(0.5, 2, n))):
        lines += ["", "[[agents]]", f'id = "a{i}"', f"value = {float(v)!r}", f"curvature = {float(c)!r}"]
        if i % 10 == 3:
            lines += ['policy = "misreport"', "misreport_factor = 1.2"]
    path.write_text("\n".join(lines) + "\n")
    return path


def types_of(path: Path) -> tuple[team.TeamTypes, team.TeamTypes]:
    """(true, reported) types, read back from the file independently of the market."""
    import tomllib

    agents = tomllib.loads(path.read_text())["agents"]
    a = np.array([g["value"] for g in agents])
    b = np.array([g["curvature"] for g in agents])
    f = np.array([g.get("misreport_factor", 1.0) for g in agents])
    return team.TeamTypes(a, b), team.TeamTypes(a * f, b)


def _run_and_audit(scen: Path, url: str, n: int) -> dict:
    """``mbi run`` then ``mbi audit``: the run's JSON summary, after checking that it ends on
    the closed-form optimum of the reports (computed here independently) and that the
    audit recomputes it."""
    res = runner.invoke(app, ["run", str(scen), "--ledger", url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    truth, reported = types_of(scen)
    x_star = np.asarray(team.optimal_usage(reported, KAPPA))
    x = np.array([out["agents"][f"a{i}"]["action"] for i in range(n)])
    np.testing.assert_allclose(x, x_star, atol=1e-9)
    assert out["welfare"] == pytest.approx(float(team.welfare(x_star, truth, KAPPA)), abs=1e-9)
    audit = runner.invoke(app, ["audit", "--ledger", url, "--run", out["run_id"], "--json"])
    assert audit.exit_code == 0, audit.output
    checks = {c["name"]: c["ok"] for c in json.loads(audit.stdout)["checks"]}
    assert checks["signals_recompute"] and checks["actions_recompute"] and checks["payments_recompute"]
    return out


def test_mbi_run_clearing_default_converges_in_two_rounds_for_every_n(tmp_path):
    # one round moves to x*, the next observes a zero residual there; misreports included
    rounds = {}
    for n in (10, 1000):
        scen = team_toml(tmp_path / f"team{n}.toml", n, step=None)
        out = _run_and_audit(scen, f"sqlite:///{tmp_path / f'l{n}.db'}", n)
        assert out["converged"]
        rounds[n] = out["rounds"]
    assert rounds == {10: 2, 1000: 2}


def test_mbi_run_newton_converges_at_n_1000_far_below_the_round_limit(tmp_path):
    scen = team_toml(tmp_path / "team.toml", 1000, step="newton")
    out = _run_and_audit(scen, f"sqlite:///{tmp_path / 'l.db'}", 1000)
    assert out["converged"] and 2 < out["rounds"] <= 15  # limit 500; the fixed rule hits it


def test_fixed_rule_is_still_selectable_and_slow_at_n_1000(tmp_path):
    scen = team_toml(tmp_path / "team.toml", 1000, step="fixed")
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{tmp_path / 'l.db'}", "--rounds", "40",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["rounds"] == 40 and not out["converged"]


def test_unknown_step_rule_is_a_one_line_error_naming_the_field(tmp_path):
    scen = tmp_path / "bad.toml"
    scen.write_text(team_toml(tmp_path / "ok.toml", 3, step="adam").read_text())
    db = tmp_path / "l.db"
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{db}"])
    assert res.exit_code == 2
    msg = res.output.strip()
    assert "\n" not in msg and str(scen) in msg and "game.step" in msg and "'clearing', 'newton' or 'fixed'" in msg
    assert not db.exists()


def test_step_rules_are_the_scenario_choices_and_clearing_is_the_default():
    assert set(get_args(TeamGameSettings.model_fields["step"].annotation)) == set(dpm.STEP_RULES)
    assert TeamGameSettings(congestion=1.0).step == "clearing"
    assert {TeamGameSettings(congestion=1.0, step=r).step for r in dpm.STEP_RULES} == {"clearing", "newton", "fixed"}
    with pytest.raises(ValueError, match="unknown step rule 'adam'"):
        dpm.default_steps(team.TeamTypes(np.ones(3), np.ones(3)), 0.5, "adam")


def _tampered(rec, kind: str, edit) -> object:
    """A copy of a round record whose ``kind`` event payload (its array records folded in as
    JSON lists) is changed by ``edit``."""
    events = []
    for seq, k, agent, text in rec.events:
        if k == kind and agent is None:
            payload = json.loads(rec.payload_json(seq))
            edit(payload)
            text = json.dumps(payload)
        events.append((seq, k, agent, text))
    arrays = [a for a in rec.arrays if not a[0].startswith(kind + ".")]
    return replace(rec, events=events, arrays=arrays, _parsed={})


@pytest.mark.parametrize("step", ["clearing", "newton", "fixed"])
def test_audit_recomputes_price_move_and_policy_actions_and_catches_changes(tmp_path, step):
    scen = parse_scenario({"scenario": {"name": "t", "game": "team", "mechanism": "dpm", "rounds": 4,
                                        "tolerance": 1e-300},
                           "game": {"congestion": KAPPA, "step": step},
                           "agents": [{"id": f"a{i}", "value": 1.0 + i, "curvature": 0.5 + 0.25 * i}
                                      for i in range(6)]})
    url = f"sqlite:///{tmp_path / 'l.db'}"
    res = run_scenario(scen, ledger_url=url)
    ledger = open_ledger(url)
    report = audit_run(ledger, res.run_id)
    checks = {c.name: c for c in report.checks}
    assert report.ok and checks["actions_recompute"].ok and checks["signals_recompute"].ok
    rounds = ledger.read_rounds(res.run_id)
    logged = rounds[1].payload("signals")
    assert ("price_move" in logged) == (step != "fixed")
    market = build_market(scen)
    history = rounds[:2]

    # a policy agent that did not follow its rule
    def bump(p):
        p["x"][2] += 1e-12

    bad = _recompute(market, [history[0], _tampered(history[1], "actions", bump)])
    ok, detail = bad.checks["actions_recompute"]
    assert not ok and detail.startswith("a2: logged x=")
    assert _recompute(market, history).checks["actions_recompute"][0]
    if step != "fixed":
        def shift(p):
            p["price_move"] += 1e-3

        ok, detail = _recompute(market, [history[0], _tampered(history[1], "signals", shift)]).checks[
            "signals_recompute"]
        assert not ok and detail.startswith("price_move: logged G=")
