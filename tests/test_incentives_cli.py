"""Incentives for learning agents end to end through ``mbi run`` / ``mbi audit``: the
social-gradient planner on Pigou's network and the quadratic game, and the two-phase
principal on the pollution MDP (issue 6)."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.ledger.schema import open_ledger
from mechanisms import principal as pr
from mechanisms.games import principal_mdp as pm
from mechanisms.games import routing as rt

from tests.conftest import EXAMPLES, drop_append_only_triggers
from tests.test_cli import run_json

runner = CliRunner()


def audit_json(url, run_id):
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", run_id, "--json"])
    return res.exit_code, json.loads(res.stdout)


def tampered_copy(url, tmp_path, sql, **params):
    src = Path(url.removeprefix("sqlite:///"))
    dst = tmp_path / "tampered.db"
    shutil.copy(src, dst)
    engine = create_engine(f"sqlite:///{dst}")
    drop_append_only_triggers(engine)  # as an attacker with raw SQL would; the database refuses otherwise
    with engine.begin() as conn:
        assert conn.execute(text(sql), params).rowcount == 1
    engine.dispose()
    return f"sqlite:///{dst}"


@pytest.fixture(scope="module")
def pigou(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('pigou') / 'ledger.db'}"
    return url, run_json(str(EXAMPLES / "pigou_tolling.toml"), "--ledger", url)


def test_pigou_toll_converges_to_half(pigou):
    _, out = pigou
    assert out["converged"]
    assert set(out) >= {"welfare", "optimal_welfare", "agents", "converged", "rounds", "run_id", "incentives"}
    assert out["incentives"]["variable-road"] == pytest.approx(0.5, abs=1e-3)
    assert out["incentives"]["constant-road"] == 0.0
    assert out["welfare"] == pytest.approx(-0.75, abs=1e-6)  # welfare = -social cost; optimum 3/4
    assert out["optimal_welfare"] == pytest.approx(-0.75, abs=1e-9)
    assert out["agents"]["variable-road"]["action"] == pytest.approx(0.5, abs=1e-6)
    # the variable road's users paid the toll on their flow in the last round
    assert out["agents"]["variable-road"]["payment"] == pytest.approx(0.25, abs=1e-3)


def test_pigou_audit_passes_and_catches_tampering(pigou, tmp_path):
    url, out = pigou
    code, rep = audit_json(url, out["run_id"])
    assert code == 0 and rep["ok"]
    assert {c["name"] for c in rep["checks"]} >= {"payments_recompute", "incentive_update", "incentive_chain"}
    bad = tampered_copy(url, tmp_path, "update transfers set amount = amount + 1 where round_index = 5")
    code, rep = audit_json(bad, out["run_id"])
    failed = {c["name"]: c["first_failure"] for c in rep["checks"] if not c["ok"]}
    assert code == 1 and "round 5" in failed["payments_recompute"] and "round 5" in failed["hash_chain"]
    # a planner update that is not the social-gradient step of the logged flows
    bad = tampered_copy(url, tmp_path, "update events set payload = :p where round_index = 4 and kind = 'planner'",
                        p=json.dumps({"p_next": [0.3, -0.3]}))
    code, rep = audit_json(bad, out["run_id"])
    failed = {c["name"]: c["first_failure"] for c in rep["checks"] if not c["ok"]}
    assert code == 1 and "round 4" in failed["incentive_update"] and "round 5" in failed["incentive_chain"]


def _quadratic_closed_form(path):
    import tomllib

    data = tomllib.loads(Path(path).read_text())
    q = np.array([a["q"] for a in data["agents"]])
    r = np.array([a["r"] for a in data["agents"]])
    c, s = data["game"]["coupling"], data["game"]["congestion"]
    n = len(q)
    x_opt = np.linalg.solve(np.diag(q) + s * np.ones((n, n)), r)  # grad S = 0, a dense solve
    p_opt = -(q * x_opt - r + c * (x_opt.sum() + x_opt))  # the incentive making x_opt a Nash equilibrium
    return x_opt, p_opt, float(np.sum(q * x_opt**2 / 2 - r * x_opt) + s * x_opt.sum() ** 2 / 2)


@pytest.mark.parametrize("response", ["equilibrium", "gradient"])
def test_quadratic_game_reaches_closed_form_optimum(tmp_path, response):
    path = EXAMPLES / "quadratic_tax.toml"
    scen = path
    if response == "gradient":  # two-timescale: agents take gradient steps, the planner moves slowly
        scen = tmp_path / "grad.toml"
        scen.write_text(path.read_text().replace('response = "equilibrium"', 'response = "gradient"\neta = 0.3\ninner = 5')
                        .replace("rounds = 400", "rounds = 3000"))
    url = f"sqlite:///{tmp_path / 'l.db'}"
    out = run_json(str(scen), "--ledger", url)
    x_opt, p_opt, s_opt = _quadratic_closed_form(path)
    ids = list(out["agents"])
    assert out["converged"]
    np.testing.assert_allclose([out["agents"][a]["action"] for a in ids], x_opt, atol=1e-6)
    np.testing.assert_allclose([out["incentives"][a] for a in ids], p_opt, atol=1e-6)
    assert out["optimal_welfare"] == pytest.approx(-s_opt, abs=1e-9)
    assert out["welfare"] == pytest.approx(-s_opt, abs=1e-8)
    if response == "equilibrium":
        code, rep = audit_json(url, out["run_id"])
        assert code == 0 and rep["ok"], rep


@pytest.fixture(scope="module")
def principal(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('principal') / 'ledger.db'}"
    return url, run_json(str(EXAMPLES / "principal.toml"), "--ledger", url, "--rounds", "300")


def test_principal_run_is_the_mechanism_round_for_round(principal):
    """The loop through the graph and the ledger reproduces ``pr.simulate`` exactly (same
    keys), so the mechanism-level regret tests (exponent < 0.9) hold for ``mbi run``."""
    url, out = principal
    mdp = pm.pollution()
    T = 300
    tr = jax.jit(pr.simulate, static_argnums=(2, 3, 4, 5))(mdp, jax.random.PRNGKey(1), T, pr.default_config(T), "two_phase", 1.0)
    led = open_ledger(url, create=False)
    rounds = led.read_rounds(out["run_id"])
    led.dispose()
    assert len(rounds) == out["rounds"] == T
    steps = [r.payload("step") for r in rounds]
    np.testing.assert_array_equal([s["s"] for s in steps], np.asarray(tr.s))
    np.testing.assert_array_equal([s["a"] for s in steps], np.asarray(tr.a))
    np.testing.assert_allclose([r.payload("outcome")["welfare"] for r in rounds], np.asarray(tr.welfare), atol=1e-12)
    # every transfer: treasury -> agent, the rounded menu entry of the action taken
    paid = np.zeros(T)
    for i, r in enumerate(rounds):
        for _, kind, debit, credit, amount in r.transfers:
            assert (kind, debit, credit) == ("transfer", "treasury", "agent:factory")
            paid[i] += amount / 1e6
    np.testing.assert_allclose(paid, np.asarray(tr.transfer_paid), atol=1e-6)
    assert paid.sum() > 0
    g = float(jax.jit(pm.first_best)(mdp)[1])
    assert out["optimal_welfare"] == pytest.approx(g)
    assert out["regret"]["total"] == pytest.approx(float(np.sum(g - np.asarray(tr.welfare))), abs=1e-6)
    assert out["welfare"] == pytest.approx(float(np.mean(tr.welfare)), abs=1e-9)
    assert out["agents"]["factory"]["total_received"] == pytest.approx(paid.sum(), abs=1e-6)


def test_principal_audit_passes_and_catches_a_changed_menu(principal, tmp_path):
    url, out = principal
    code, rep = audit_json(url, out["run_id"])
    assert code == 0 and rep["ok"], rep
    assert {c["name"] for c in rep["checks"]} >= {"menu_recompute", "state_chain", "welfare_recompute"}
    bad = tampered_copy(url, tmp_path, "update events set payload = :p where round_index = 40 and kind = 'menu'",
                        p=json.dumps({"tau": [[0.9, 0.0]] * 5}))
    code, rep = audit_json(bad, out["run_id"])
    failed = {c["name"]: c["first_failure"] for c in rep["checks"] if not c["ok"]}
    assert code == 1 and "round 40" in failed["menu_recompute"]
    bad = tampered_copy(url, tmp_path, "update transfers set amount = amount * 2 where id = "
                        "(select id from transfers where round_index > 100 order by round_index limit 1)")
    code, rep = audit_json(bad, out["run_id"])
    failed = {c["name"] for c in rep["checks"] if not c["ok"]}
    assert code == 1 and "payments_recompute" in failed


HEAD = '[scenario]\nname="x"\ngame="{game}"\nmechanism="{mech}"\n'


@pytest.mark.parametrize("content, fragment", [
    (HEAD.format(game="routing", mech="dpm"), "scenario.mechanism"),
    (HEAD.format(game="routing", mech="social-gradient") + '[game]\ndemand=1\nstep=0.1\n[[agents]]\nid="a"\nb=1\n'
     '[[agents]]\nid="b"\na=1\ndegree=0.5\n', "agents[1].degree"),
    (HEAD.format(game="quadratic", mech="social-gradient") + '[game]\ncongestion=1\nresponse="newton"\n'
     '[[agents]]\nid="a"\nq=1\nr=1\n', "game.response"),
    (HEAD.format(game="quadratic", mech="social-gradient") + '[game]\ncongestion=1\n[[agents]]\nid="a"\nq=0\nr=1\n',
     "agents[0].q"),
    (HEAD.format(game="principal-mdp", mech="two-phase") + '[game]\nn_states=5\nbudget=3\n[[agents]]\nid="f"\n',
     "game.budget: unknown key"),
    (HEAD.format(game="principal-mdp", mech="two-phase") + '[game]\n[[agents]]\nid="f"\n[[agents]]\nid="g"\n',
     "agents"),
])
def test_bad_scenarios_are_one_line_exit_2(tmp_path, content, fragment):
    scen = tmp_path / "s.toml"
    scen.write_text(content)
    ledger = tmp_path / "l.db"
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{ledger}"])
    assert res.exit_code == 2
    assert str(scen) in res.stderr and fragment in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not ledger.exists()


def test_pigou_example_matches_mechanism_module():
    """The example's network is ``routing.pigou()``."""
    import tomllib

    data = tomllib.loads((EXAMPLES / "pigou_tolling.toml").read_text())
    net = rt.pigou()
    np.testing.assert_array_equal([a.get("a", 0.0) for a in data["agents"]], net.a)
    np.testing.assert_array_equal([a.get("b", 0.0) for a in data["agents"]], net.b)


@pytest.mark.slow
def test_principal_regret_exponent_through_mbi_run(tmp_path):
    """Regret growth across horizons through the whole loop (graph + ledger), one seed:
    sublinear with the mechanism, linear without (the fast tests check the loop equals
    ``pr.simulate``, whose exponent ``tests/mechanisms/test_principal.py`` checks over seeds)."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    horizons = (1000, 4000)
    outs = [run_json(str(EXAMPLES / "principal.toml"), "--ledger", url, "--rounds", str(T)) for T in horizons]
    k = pr.regret_exponent(horizons, [o["regret"]["total"] for o in outs])
    k_none = pr.regret_exponent(horizons, [o["regret"]["no_incentives_total"] for o in outs])
    assert k < 0.9 and k_none > 0.95, (k, k_none)
    for o in outs:
        assert audit_json(url, o["run_id"])[0] == 0


def test_reinforce_baseline_through_the_loop(tmp_path):
    """``mechanism = "reinforce"`` on the team game: the model-free learners reach 99% of the
    optimum through the same loop, no transfers, and the audit replays them."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    out = run_json(str(EXAMPLES / "shared_capacity_reinforce.toml"), "--ledger", url)
    dpm = run_json(str(EXAMPLES / "shared_capacity.toml"), "--ledger", url)
    assert out["converged"] and out["welfare"] >= 0.99 * out["optimal_welfare"]
    assert out["optimal_welfare"] == pytest.approx(dpm["optimal_welfare"], rel=1e-12)
    assert out["rounds"] > 2 * dpm["rounds"]  # DPM: to a 1e-8 residual (99% of W* in 4 rounds); RL: to 99%
    code, rep = audit_json(url, out["run_id"])
    assert code == 0 and rep["ok"] and rep["transfers"] == 0
    bad = tampered_copy(url, tmp_path, "update events set payload = :p where run_id = :r and round_index = 7 "
                        "and kind = 'reward'", p=json.dumps({"R": 1.0}), r=out["run_id"])
    code, rep = audit_json(bad, out["run_id"])
    failed = {c["name"]: c["first_failure"] for c in rep["checks"] if not c["ok"]}
    assert code == 1 and "round 7" in failed["policy_recompute"]


def test_reinforce_rejects_misreporting_agents(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text((EXAMPLES / "shared_capacity_misreport.toml").read_text().replace('mechanism = "dpm"', 'mechanism = "reinforce"'))
    res = runner.invoke(app, ["run", str(scen), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert res.exit_code == 2 and "policy" in res.stderr and res.stderr.count("\n") == 1, res.stderr
