"""Fuzzing the scenario schema (issue 13): ``mbi run`` on mutated example scenarios either
succeeds or exits non-zero with one line ``error: ...``, never a traceback, never a hang.

Mutations: one numeric field of an example (anywhere: [scenario], [game], an agent, a
task, a list entry) becomes huge, tiny, negative, zero, NaN, infinity, beyond int64 or a
value of the wrong type; or the agents are multiplied. Each example runs in-process with
``--rounds 2`` under an alarm that turns a hang into a failure (a bound, not a timing).
"""

from __future__ import annotations

import json
import math
import signal
import tempfile
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mbiagents.cli import app

from tests.conftest import EXAMPLES

runner = CliRunner()
POLICY_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.toml") if not p.name.startswith("llm_"))
HANG_BOUND_S = 120  # an example still running after this is a hang


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v) if isinstance(v, str) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for scenario documents (tables, arrays of tables, inline values)."""
    out = []
    for key, val in doc.items():
        if isinstance(val, dict):
            out.append(f"[{key}]")
            out += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in val.items()]
        elif isinstance(val, list) and val and all(isinstance(x, dict) for x in val):
            for item in val:
                out.append(f"[[{key}]]")
                out += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in item.items()]
        else:
            out.append(f"{json.dumps(key)} = {toml_value(val)}")
    return "\n".join(out) + "\n"


def numeric_paths(obj: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in numeric_paths(v, path + (k,))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in numeric_paths(v, path + (i,))]
    return []


def set_path(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


HOSTILE_VALUES = st.sampled_from([
    1e300, -1e300, 1e13, -1e13, 1e-308, -1e-308, 0, 0.0, -1, -1.0, float("nan"), float("inf"), float("-inf"),
    2**63, 2**70, -(2**63) - 1, "x", [1.0], {"a": 1},
])


@contextmanager
def hang_bound(seconds: int):
    def on_alarm(*_):
        raise TimeoutError(f"mbi run still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_one(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mutated.toml"
        path.write_text(to_toml(doc))
        with hang_bound(HANG_BOUND_S):
            res = runner.invoke(app, ["run", str(path), "--ledger", f"sqlite:///{d}/l.db", "--rounds", "2", "--json"])
        if res.exit_code == 0:
            json.loads(res.stdout)  # strict JSON: a NaN would not parse back as JSON
            return
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert res.exit_code in (1, 2), res.exit_code
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.stderr


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data(), example=st.sampled_from(POLICY_EXAMPLES))
def test_mutated_scenario_runs_or_fails_in_one_line(data, example):
    doc = tomllib.loads((EXAMPLES / example).read_text())
    paths = numeric_paths(doc)
    path = data.draw(st.sampled_from(paths), label="field")
    value = data.draw(HOSTILE_VALUES, label="value")
    set_path(doc, path, value)
    run_one(doc)


@pytest.mark.parametrize("example", POLICY_EXAMPLES)
@pytest.mark.parametrize("value", [1e300, float("nan"), 1e13])
def test_every_example_with_every_float_huge_or_nan(example, value):
    """Every real-valued field of an example at once: the money guard or the bounds speak."""
    doc = tomllib.loads((EXAMPLES / example).read_text())
    for path in numeric_paths(doc):
        if isinstance(doc_get(doc, path), float):
            set_path(doc, path, value)
    run_one(doc)


def doc_get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("llm_*.toml")))
def test_llm_team_of_200_fails_fast(example):
    doc = tomllib.loads((EXAMPLES / example).read_text())
    agents = doc["agents"]
    doc["agents"] = [dict(a, id=f"{a['id']}-{k}") for k in range(200 // len(agents) + 1) for a in agents]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "many.toml"
        path.write_text(to_toml(doc))
        res = runner.invoke(app, ["run", str(path), "--ledger", f"sqlite:///{d}/l.db"])
    assert res.exit_code == 2 and "LLM agents, at most" in res.stderr and res.stderr.count("\n") == 1
    assert not (Path(d) / "l.db").exists()


@pytest.mark.parametrize("field,value,fragment", [
    ("seed", 2**64, "scenario.seed"),
    ("seed", -1, "scenario.seed"),
    ("rounds", 10**12, "scenario.rounds"),
])
def test_scenario_meta_bounds(field, value, fragment, tmp_path):
    doc = tomllib.loads((EXAMPLES / "shared_capacity.toml").read_text())
    doc["scenario"][field] = value
    path = tmp_path / "s.toml"
    path.write_text(to_toml(doc))
    res = runner.invoke(app, ["run", str(path), "--ledger", f"sqlite:///{tmp_path}/l.db"])
    assert res.exit_code == 2 and fragment in res.stderr and res.stderr.count("\n") == 1


def test_tiny_max_report_is_a_one_line_error(tmp_path):
    doc = tomllib.loads((EXAMPLES / "llm_shared_capacity.toml").read_text())
    doc["game"]["max_report"] = 1e-308
    path = tmp_path / "s.toml"
    path.write_text(to_toml(doc))
    res = runner.invoke(app, ["run", str(path), "--ledger", f"sqlite:///{tmp_path}/l.db"])
    assert res.exit_code == 2 and "game.max_report" in res.stderr and res.stderr.count("\n") == 1


def test_cli_seed_beyond_int64_is_refused(tmp_path):
    res = runner.invoke(app, ["run", str(EXAMPLES / "shared_capacity.toml"), "--seed", str(2**64),
                              "--ledger", f"sqlite:///{tmp_path}/l.db"])
    assert res.exit_code == 2 and not (tmp_path / "l.db").exists()


def test_payment_beyond_int64_fails_the_run_and_writes_nothing_of_that_round(tmp_path):
    """The money guard: in-bounds parameters whose DPM payment (~kappa X^2 at X ~ 1e15) no
    int64 of minor units holds stop the run in one line; round 0 is not written."""
    import sqlite3

    import numpy as np

    doc = {"scenario": {"name": "big", "game": "team", "mechanism": "dpm", "rounds": 5, "seed": 1},
           "game": {"congestion": 1e-9},
           "agents": [{"id": a, "value": 1e6, "curvature": 1e-9} for a in ("a", "b")]}
    path = tmp_path / "big.toml"
    path.write_text(to_toml(doc))
    res = runner.invoke(app, ["run", str(path), "--ledger", f"sqlite:///{tmp_path}/l.db"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "round 0: payment" in res.stderr and "nothing written for this round" in res.stderr
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("select status, final_rounds from runs").fetchall() == [("failed", 0)]
        assert conn.execute("select count(*) from rounds").fetchone()[0] == 0

    from mbiagents.ledger.money import MAX_PAYMENT, MoneyError, to_minor_units

    for bad in (np.nan, np.inf, -np.inf, MAX_PAYMENT * 2, 1e300):
        with pytest.raises(MoneyError):
            to_minor_units(np.array([1.0, bad]))
    assert to_minor_units(np.array([MAX_PAYMENT, -MAX_PAYMENT])).tolist() == [10**18, -(10**18)]
