"""The Agent protocols the round loop relies on."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Population(Protocol):
    """A vectorised population of programmatic agents (arrays in, arrays out)."""

    ids: list[str]

    def report(self, round_index: int) -> Any:
        """Every agent's report this round (a pytree of arrays, agent axis first)."""

    def act(self, signals: Any, actions: Any) -> Any:
        """Every agent's next action given the mechanism's signals and the current actions."""
