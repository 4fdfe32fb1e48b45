"""Markets: a game, its mechanism and its agents, seen by the round loop.

A market turns the generic round (elicit -> mechanism -> act -> settle) into calls of
pure functions in ``mechanisms``, encodes each round for the ledger, and recomputes a
logged round for ``mbi audit`` and ``mbi replay``. ``build_market`` picks the market of a
validated scenario from the one registry, ``mbiagents.scenario.REGISTRY`` (keyed by
``(game, mechanism)``); ``market_of`` rebuilds the market of a logged run.
"""

from __future__ import annotations

import json

from mbiagents.ledger.models import Run
from mbiagents.markets.base import Market, Settlement
from mbiagents.scenario import REGISTRY, ScenarioBase, parse_scenario


def build_market(scenario: ScenarioBase) -> Market:
    """The market that runs ``scenario`` (its ``(game, mechanism)`` entry of ``REGISTRY``)."""
    meta = scenario.scenario
    return REGISTRY[(meta.game, meta.mechanism)].market_class()(scenario)


def market_of(run: Run) -> Market:
    """The market of a logged run, rebuilt from the scenario stored in its header."""
    return build_market(parse_scenario(json.loads(run.scenario_json), f"run {run.id}"))


__all__ = ["Market", "Settlement", "build_market", "market_of"]
