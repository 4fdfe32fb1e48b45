"""Markets: a game, its mechanism and its agents, seen by the round loop.

A market turns the generic round (elicit -> mechanism -> act -> settle) into calls of
pure functions in ``mechanisms``, encodes each round for the ledger, and recomputes a
logged round for ``mbi audit`` and ``mbi replay``. ``build_market`` picks the market of a
validated scenario.
"""

from __future__ import annotations

from mbiagents.markets.base import Market, Settlement
from mbiagents.scenario import ScenarioBase

MARKETS: dict[str, type[Market]] = {}


def register_market(game: str, cls: type[Market]) -> None:
    MARKETS[game] = cls


def build_market(scenario: ScenarioBase) -> Market:
    meta = scenario.scenario  # a market registered as "game:mechanism" takes precedence over "game"
    return MARKETS.get(f"{meta.game}:{meta.mechanism}", MARKETS[meta.game])(scenario)


from mbiagents.markets import tasks as _tasks  # noqa: E402  (registers itself)
from mbiagents.markets import team as _team  # noqa: E402  (registers itself)
from mbiagents.markets import congestion as _congestion  # noqa: E402  (registers itself)
from mbiagents.markets import social_gradient as _social_gradient  # noqa: E402,F401  (routing, quadratic)
from mbiagents.markets import principal as _principal  # noqa: E402,F401  (principal-mdp)
from mbiagents.markets import reinforce as _reinforce  # noqa: E402,F401  (team:reinforce)
from mbiagents.markets import team_tasks as _team_tasks  # noqa: E402,F401  (team-tasks: mbiagents.TaskMarket)

__all__ = ["Market", "Settlement", "build_market", "register_market", "MARKETS"]
del _team, _tasks, _congestion, _social_gradient, _principal, _reinforce, _team_tasks
