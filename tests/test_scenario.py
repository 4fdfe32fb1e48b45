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
    p = write(tmp_path, edit(GOOD))
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and where in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")
