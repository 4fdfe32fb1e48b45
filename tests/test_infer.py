"""``mbi run examples/tolling.toml`` then ``mbi infer``: the congestion market, trajectory
JSONL, DIML recovery of the tolled payoffs, and one-line errors on bad input."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mbiagents.cli import app
from mbiagents.ledger.schema import open_ledger
from mbiagents.markets import build_market
from mbiagents.markets.congestion import optimal_cost, toll_payments
from mbiagents.replay import trajectories_from_ledger
from mbiagents.scenario import load_scenario
from mbiagents.trajectories import Trajectories, read_jsonl, write_jsonl
from mechanisms import diml
from mechanisms.learning import LogitQParams

from tests.conftest import EXAMPLES

runner = CliRunner()
TOLLING = EXAMPLES / "tolling.toml"
ROUNDS = 400  # 16 episodes of 25 steps


@pytest.fixture(scope="module")
def tolling_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('infer') / 'ledger.db'}"
    res = runner.invoke(app, ["run", str(TOLLING), "--ledger", url, "--rounds", str(ROUNDS), "--json"])
    assert res.exit_code == 0, res.output
    return url, json.loads(res.stdout)["run_id"]


def fail_line(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_tolling_run_settles_tolls_and_audits(tolling_run):
    url, run_id = tolling_run
    res = runner.invoke(app, ["audit", "--ledger", url, "--run", run_id, "--json"])
    assert res.exit_code == 0, res.output
    checks = {c["name"]: c["ok"] for c in json.loads(res.stdout)["checks"]}
    assert checks["payments_recompute"] and checks["actions_valid"]
    led = open_ledger(url, create=False)
    rounds = led.read_rounds(run_id)
    led.dispose()
    assert len(rounds) == ROUNDS
    sc = load_scenario(TOLLING)
    tolls = np.asarray(sc.game.tolls)
    # the toll sign: a positive toll is paid (agent -> treasury), a negative one received
    rec = rounds[3]
    a = np.asarray(rec.payload("actions")["a"])
    t = toll_payments(a, tolls)
    ids = [s.id for s in sc.agents]
    for _, kind, debit, credit, amount in rec.transfers:
        assert kind == "toll"
        if debit == "treasury":
            i = ids.index(credit.removeprefix("agent:"))
            assert t[i] < 0 and amount == round(-t[i] * 1e6)
        else:
            i = ids.index(debit.removeprefix("agent:"))
            assert t[i] > 0 and credit == "treasury" and amount == round(t[i] * 1e6)
    assert rec.payload("actions")["episode"] == 0 and rounds[30].payload("actions")["step"] == 5


def test_optimal_cost_by_enumeration():
    import itertools

    c1, c2 = np.array([0.1, 0.3, 0.2]), np.array([0.15, 0.05, 0.1])
    best = min(sum(l * (c1[r] * l + c2[r] * l * l) for r, l in enumerate(np.bincount(p, minlength=3)))
               for p in itertools.product(range(3), repeat=4))
    assert optimal_cost(4, c1, c2) == pytest.approx(best)


def test_infer_ledger_recovers_tolled_payoffs(tolling_run):
    url, run_id = tolling_run
    res = runner.invoke(app, ["infer", "--ledger", url, "--run", run_id, "--model", "congestion",
                              "--holdout", "0.25", "--epochs", "15", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"model", "alpha", "beta", "epsilon", "train_nll", "heldout_nll", "frequency_baseline_nll",
            "payoff_differences"} <= set(out)
    assert (out["alpha"], out["beta"], out["epsilon"]) == (0.25, 3.0, 0.06)
    # the truth, on the same episodes
    led = open_ledger(url, create=False)
    _, traj, _ = trajectories_from_ledger(led, run_id)
    led.dispose()
    market = build_market(load_scenario(TOLLING))
    mech = diml.make_model("congestion", len(traj.agent_ids), traj.n_actions)
    held = [traj.episodes.index(e) for e in out["heldout_episodes"]]
    train = [e for e in range(len(traj.episodes)) if e not in held]
    true_d = np.asarray(diml.payoff_differences(mech, market.true_params, traj.actions[train]))
    fit_d = np.array([out["payoff_differences"][a] for a in traj.agent_ids])
    assert np.all(fit_d[:, 0] == 0.0)
    corr = np.corrcoef(true_d[:, 1:].ravel(), fit_d[:, 1:].ravel())[0, 1]
    assert corr >= 0.95
    true_nll = float(diml.nll(mech, market.true_params, traj.actions[held], LogitQParams()))
    assert abs(out["heldout_nll"] - true_nll) <= 0.02 * true_nll
    assert out["heldout_nll"] < out["frequency_baseline_nll"]


def test_jsonl_round_trip_and_predict(tolling_run, tmp_path):
    url, run_id = tolling_run
    path = tmp_path / "traj.jsonl"
    res = runner.invoke(app, ["infer", "--ledger", url, "--run", run_id, "--model", "congestion", "--epochs", "2",
                              "--save-trajectories", str(path), "--json"])
    assert res.exit_code == 0, res.output
    led = open_ledger(url, create=False)
    _, traj, _ = trajectories_from_ledger(led, run_id)
    led.dispose()
    back = read_jsonl(path)
    assert back.agent_ids == traj.agent_ids and back.n_actions == traj.n_actions == 4
    np.testing.assert_array_equal(back.actions, traj.actions)
    first = json.loads(path.read_text().splitlines()[1])
    assert set(first) == {"episode", "step", "agent", "action"}
    # fit on the first half, score the second
    fit_p, pred_p = tmp_path / "fit.jsonl", tmp_path / "pred.jsonl"
    write_jsonl(Trajectories(traj.actions[:8], traj.agent_ids, 4, traj.episodes[:8]), fit_p)
    write_jsonl(Trajectories(traj.actions[8:], traj.agent_ids, 4, traj.episodes[8:]), pred_p)
    res = runner.invoke(app, ["infer", "--trajectories", str(fit_p), "--predict", str(pred_p), "--model",
                              "congestion", "--epochs", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["heldout_nll"] is not None and out["heldout_nll"] < out["frequency_baseline_nll"] + 0.05


def _write(tmp_path, text, name="t.jsonl"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


ROWS = "".join(json.dumps({"episode": e, "step": s, "agent": a, "action": (e + s + i) % 3}) + "\n"
               for e in range(3) for s in range(4) for i, a in enumerate(["x", "y"]))


def test_bad_input_is_one_line_exit_2(tmp_path, sqlite_url):
    bad = _write(tmp_path, '{"n_actions": 3}\n' + ROWS.splitlines()[0] + "\n{oops\n")
    assert ":3: malformed JSON" in fail_line(["infer", "--trajectories", bad])
    out_of_range = _write(tmp_path, '{"n_actions": 2}\n' + ROWS, "r.jsonl")
    assert "outside the declared range [0, 2)" in fail_line(["infer", "--trajectories", out_of_range])
    one_step = "".join(json.dumps({"episode": e, "step": 0, "agent": a, "action": 1}) + "\n"
                       for e in range(3) for a in "xy")
    assert "too few steps" in fail_line(["infer", "--trajectories", _write(tmp_path, one_step, "s.jsonl")])
    good = _write(tmp_path, ROWS, "g.jsonl")
    assert "unknown model 'lstm'" in fail_line(["infer", "--trajectories", good, "--model", "lstm"])
    missing = _write(tmp_path, "\n".join(ROWS.splitlines()[:-1]) + "\n", "m.jsonl")
    assert "has no action of agent 'y'" in fail_line(["infer", "--trajectories", missing])
    assert "no such trajectory file" in fail_line(["infer", "--trajectories", str(tmp_path / "none.jsonl")])
    # a run with no actions: created, never played
    led = open_ledger(sqlite_url)
    rid = led.create_run(name="empty", game="congestion", mechanism="tolls", seed=0, scenario={}, agent_ids=["x"])
    led.dispose()
    assert "has no actions" in fail_line(["infer", "--ledger", sqlite_url, "--run", rid])


def test_team_run_has_no_discrete_actions(sqlite_url):
    res = runner.invoke(app, ["run", str(EXAMPLES / "shared_capacity.toml"), "--ledger", sqlite_url,
                              "--rounds", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert "logs no discrete actions" in fail_line(["infer", "--ledger", sqlite_url])


def test_tolling_scenario_validation(tmp_path):
    text = TOLLING.read_text().replace("tolls = [0.20, -0.10, 0.05, 0.00]", "tolls = [0.2, 0.1]")
    p = _write(tmp_path, text, "bad.toml")
    assert "same length" in fail_line(["run", p, "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])


def test_logit_q_population_resets_each_episode():
    sc = load_scenario(TOLLING)
    m = build_market(sc)
    state = {"round": 0, "market": {**m.init_state(), "q": np.ones((len(m.agent_ids), m.n_actions))}, "step": {}}
    assert np.all(m.act(state)["q"] == 0)  # round 0 starts an episode
    state["round"] = 1
    assert np.all(m.act(state)["q"] == 1)
    a1, a2 = m.population.act(np.zeros((6, 4)), 5), m.population.act(np.zeros((6, 4)), 5)
    np.testing.assert_array_equal(a1, a2)  # seeded per run and round


def test_export_trajectories_is_what_infer_reads(tolling_run, tmp_path):
    url, run_id = tolling_run
    out = tmp_path / "t.jsonl"
    res = runner.invoke(app, ["export", "--ledger", url, "--run", run_id, "--format", "jsonl", "--trajectories",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    traj = read_jsonl(out)
    _, from_ledger, _ = trajectories_from_ledger(open_ledger(url, create=False), run_id)
    assert traj.agent_ids == from_ledger.agent_ids and traj.n_actions == from_ledger.n_actions
    np.testing.assert_array_equal(traj.actions, from_ledger.actions)
