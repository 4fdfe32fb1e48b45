"""Scenario validation: every bad input is one line naming the file and the field."""

import pytest

from mbiagents.errors import ScenarioError
from mbiagents.scenario import TeamScenario, load_scenario

from tests.conftest import EXAMPLES

GOOD = """
[scenario]
name = "t"
game = "team"
mechanism = "dpm"
[game]
congestion = 0.5
[[agents]]
id = "a"
value = 2.0
curvature = 1.0
"""


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_examples_validate():
    sc = load_scenario(EXAMPLES / "shared_capacity.toml")
    assert isinstance(sc, TeamScenario)
    assert [a.id for a in sc.agents] == ["alice", "bob", "carol", "dan"]


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda s: s.replace("curvature = 1.0", "curvature = 0.0"), "agents[0].curvature"),
        (lambda s: s.replace("curvature = 1.0", "curvature = -1.0"), "agents[0].curvature"),
        (lambda s: s.replace('value = 2.0', 'value = "lots"'), "agents[0].value"),
        (lambda s: s.replace('id = "a"', 'id = "a"\ncolour = "red"'), "agents[0].colour: unknown key"),
        (lambda s: s.replace('mechanism = "dpm"', 'mechanism = "magic"'), "scenario.mechanism"),
        (lambda s: s.replace('game = "team"', 'game = "chess"'), "scenario.game: unknown game"),
        (lambda s: s.replace("congestion = 0.5", ""), "game.congestion"),
        (lambda s: s + '[[agents]]\nid = "a"\nvalue = 1.0\ncurvature = 1.0\n', "duplicate agent id"),
        (lambda s: s.replace('value = 2.0', 'value = 2.0\npolicy = "misreport"'), "misreport_factor"),
        (lambda s: s.replace("[game]", "[game"), "invalid TOML"),
    ],
)
def test_bad_scenarios_name_file_and_field(tmp_path, edit, where):
    assert_one_line_error(tmp_path, edit(GOOD), where)


def assert_one_line_error(tmp_path, text, where):
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and where in msg and "\n" not in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")


TASKS = """
[scenario]
name = "t"
game = "assignment"
mechanism = "vcg"
rounds = 2
[[tasks]]
id = "write-docs"
value = 10.0
[[tasks]]
id = "fix-bug"
value = 12.0
[[agents]]
id = "alice"
capacity = 1
costs = { write-docs = 3.5, fix-bug = 6.0 }
"""


def test_task_market_example_validates():
    from mbiagents.scenario import TaskScenario

    for name in ("task_market.toml", "llm_task_market.toml"):
        sc = load_scenario(EXAMPLES / name)
        assert isinstance(sc, TaskScenario) and sc.tasks


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda s: s.replace("capacity = 1", "capacity = 1\nskill = 3"), "agents[0].skill: unknown key"),
        (lambda s: s.replace("fix-bug = 6.0", "fix-bug = 6.0, paint = 1.0"), "agents[0].costs.paint: unknown task"),
        (lambda s: s.replace("fix-bug = 6.0", "fix-bug = -6.0"), "agents[0].costs.fix-bug"),
        (lambda s: s.replace("fix-bug = 6.0", "fix-bug = inf"), "agents[0].costs.fix-bug"),
        (lambda s: s.replace("capacity = 1", "capacity = 0"), "agents[0].capacity"),
        (lambda s: s.replace('id = "fix-bug"', 'id = "write-docs"'), "tasks[1].id: duplicate task id"),
        (lambda s: s.replace("value = 12.0", "value = 12.0\nround = 2"), "tasks[1].round"),
        (lambda s: s.replace("value = 12.0", "value = 0.0"), "tasks[1].value"),
        (lambda s: s.replace('mechanism = "vcg"', 'mechanism = "dpm"'), "scenario.mechanism"),
        (lambda s: s.replace('mechanism = "vcg"', 'mechanism = "vcg-fast"').replace("capacity = 1", "capacity = 2"),
         "agents[0].capacity: mechanism 'vcg-fast'"),
        (lambda s: s.replace("capacity = 1", 'capacity = 1\nbackend = "llm"'), "agents[0].persona"),
        (lambda s: s + "[game]\ncost_spread = 1.5\n", "game.cost_spread"),
        (lambda s: s.replace("[[tasks]]", "[[tasks]]\nid2 = 1", 1), "tasks[0].id2: unknown key"),
    ],
)
def test_bad_task_scenarios_name_file_and_field(tmp_path, edit, where):
    assert_one_line_error(tmp_path, edit(TASKS), where)


def test_import_scenario_loads_no_llm_sdk_and_no_jax():
    """Validating a scenario needs pydantic only: the openai SDK and JAX stay unloaded."""
    import subprocess
    import sys

    code = ("import sys, mbiagents.scenario; "
            "print(sorted(m for m in ('openai', 'jax', 'mbiagents.agents', 'mbiagents.markets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_surfaces_are_lazy_and_complete():
    """``import mbiagents`` loads nothing heavy; every exported name resolves; the
    mechanisms' exports resolve without shadowing a submodule."""
    import subprocess
    import sys

    code = ("import sys, mbiagents, mechanisms; "
            "heavy = sorted(m for m in ('openai', 'langgraph', 'sqlalchemy', 'mbiagents.markets', 'mechanisms.dpm') "
            "if m in sys.modules); "
            "[getattr(mbiagents, n) for n in mbiagents.__all__]; [getattr(mechanisms, n) for n in mechanisms.__all__]; "
            "from mechanisms import vcg, dpm; assert type(vcg).__name__ == 'module' and type(dpm).__name__ == 'module'; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_policy_markets_and_the_audit_load_no_llm_sdk():
    """``mbi audit`` of a policy run (team market, audit, CLI) never imports the openai SDK:
    it loads only when an LLM agent asks."""
    import subprocess
    import sys

    code = ("import sys, mbiagents.cli, mbiagents.markets.team, mbiagents.markets.tasks, mbiagents.verify.audit; "
            "print('openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
