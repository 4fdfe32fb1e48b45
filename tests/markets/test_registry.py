"""The one registry: every (game, mechanism) the parser accepts builds its market."""

import tomllib

import pytest

from mbiagents.errors import ScenarioError
from mbiagents.markets import Market, build_market
from mbiagents.scenario import REGISTRY, mechanisms_of, parse_scenario

from tests.conftest import EXAMPLES


def example_data() -> dict[tuple[str, str], dict]:
    """One example scenario per (game, mechanism), the same scenario under a mechanism
    of its game where the examples have none."""
    out: dict[tuple[str, str], dict] = {}
    for path in sorted(EXAMPLES.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        meta = data["scenario"]
        out.setdefault((meta["game"], meta["mechanism"]), data)
    for game, mechanism in REGISTRY:
        if (game, mechanism) not in out:
            donor = next(d for (g, _), d in out.items() if g == game)
            out[(game, mechanism)] = {**donor, "scenario": {**donor["scenario"], "mechanism": mechanism}}
    return out


DATA = example_data()


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
    state = market.initial_state()
    assert isinstance(state, dict)


def test_parser_accepts_only_registered_pairs():
    data = DATA[("team", "dpm")]
    for mechanism in {m for _, m in REGISTRY} - set(mechanisms_of("team")):
        bad = {**data, "scenario": {**data["scenario"], "mechanism": mechanism}}
        with pytest.raises(ScenarioError, match="scenario.mechanism: .* does not run game 'team'"):
            parse_scenario(bad, "s.toml")
    with pytest.raises(ScenarioError, match="scenario.game: unknown game 'chess'"):
        parse_scenario({**data, "scenario": {**data["scenario"], "game": "chess"}}, "s.toml")
