"""The one registry: every (game, mechanism) the parser accepts builds its market."""

import pytest

from mbiagents.errors import ScenarioError
from mbiagents.markets import Market, build_market
from mbiagents.scenario import REGISTRY, mechanisms_of, parse_scenario

from tests.conftest import example_scenarios


DATA = example_scenarios()


def test_every_example_is_registered():
    assert set(DATA) == set(REGISTRY)


@pytest.mark.parametrize("key", sorted(REGISTRY), ids=lambda k: ":".join(k))
def test_every_accepted_pair_builds_its_market(key):
    entry = REGISTRY[key]
    scenario = parse_scenario(DATA[key], ":".join(key))
    assert type(scenario) is entry.scenario
    market = build_market(scenario)
    assert type(market) is entry.market_class()
    assert isinstance(market, Market)
    assert market.mechanism == key[1]
    assert isinstance(market.init_state(), dict)  # a TypedDict: plain, checkpointable data


def test_parser_accepts_only_registered_pairs():
    data = DATA[("team", "dpm")]
    for mechanism in {m for _, m in REGISTRY} - set(mechanisms_of("team")):
        bad = {**data, "scenario": {**data["scenario"], "mechanism": mechanism}}
        with pytest.raises(ScenarioError, match="scenario.mechanism: .* does not run game 'team'"):
            parse_scenario(bad, "s.toml")
    with pytest.raises(ScenarioError, match="scenario.game: unknown game 'chess'"):
        parse_scenario({**data, "scenario": {**data["scenario"], "game": "chess"}}, "s.toml")
