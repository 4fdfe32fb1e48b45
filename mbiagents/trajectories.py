"""Trajectory JSONL: observed discrete actions of agents, episode by episode.

Format (one JSON object per line; blank lines are ignored):

- optional first line ``{"n_actions": A}``: actions are ``0..A-1`` (otherwise ``A`` is
  one more than the largest action seen);
- then one object per agent per step: ``{"episode": int, "step": int, "agent": str,
  "action": int}``.

Episodes are sorted by number and steps within an episode by number; every step of an
episode must hold every agent once. Episodes of unequal length are cut to the shortest
(DIML fits a rectangular ``[episodes, steps, agents]`` array). ``read_jsonl`` raises
``TrajectoryError`` naming the line of the first problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

import numpy as np

from mbiagents.errors import MbiError


class TrajectoryError(MbiError):
    """A trajectory file or run cannot be read as ``[episodes, steps, agents]`` actions."""


@dataclass
class Trajectories:
    """Actions ``int[E, T, n]`` of agents ``agent_ids`` over ``n_actions`` actions."""

    actions: np.ndarray
    agent_ids: list[str]
    n_actions: int
    episodes: list[int]

    def rows(self) -> Iterable[dict]:
        """The JSONL objects (header excluded), episode by episode, step by step."""
        for e, ep in enumerate(self.episodes):
            for t in range(self.actions.shape[1]):
                for i, agent in enumerate(self.agent_ids):
                    yield {"episode": ep, "step": t, "agent": agent, "action": int(self.actions[e, t, i])}


def write_jsonl(traj: Trajectories, dest: str | Path | IO[str]) -> None:
    """Write ``traj`` as trajectory JSONL (header line ``{"n_actions": A}`` first)."""
    if isinstance(dest, (str, Path)):
        try:
            with open(dest, "w", encoding="utf-8") as fh:
                write_jsonl(traj, fh)
        except OSError as exc:
            raise TrajectoryError(f"{dest}: cannot write trajectory file: {exc.strerror or exc}") from None
        return
    dest.write(json.dumps({"n_actions": traj.n_actions}) + "\n")
    for row in traj.rows():
        dest.write(json.dumps(row, separators=(",", ":")) + "\n")


def _int(obj: dict, key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TrajectoryError(f"{where}: {key!r} must be an integer, got {v!r}")
    return v


def read_jsonl(path: str | Path) -> Trajectories:
    """Read trajectory JSONL into ``Trajectories`` (one-line ``TrajectoryError`` on bad input)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TrajectoryError(f"{p}: no such trajectory file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrajectoryError(f"{p}: cannot read trajectory file: {exc}") from None
    declared: int | None = None
    cells: dict[tuple[int, int, str], int] = {}
    agents: dict[str, None] = {}
    first = True
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrajectoryError(f"{where}: malformed JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise TrajectoryError(f"{where}: expected a JSON object")
        if first and set(obj) == {"n_actions"}:
            declared = _int(obj, "n_actions", where)
            if declared < 2:
                raise TrajectoryError(f"{where}: n_actions must be at least 2")
            first = False
            continue
        first = False
        if set(obj) != {"episode", "step", "agent", "action"}:
            raise TrajectoryError(f"{where}: expected keys episode, step, agent, action; got {', '.join(sorted(obj))}")
        ep, step, action = _int(obj, "episode", where), _int(obj, "step", where), _int(obj, "action", where)
        agent = obj["agent"]
        if not isinstance(agent, str) or not agent:
            raise TrajectoryError(f"{where}: 'agent' must be a non-empty string")
        if action < 0 or (declared is not None and action >= declared):
            bound = f"[0, {declared})" if declared is not None else ">= 0"
            raise TrajectoryError(f"{where}: action {action} outside the declared range {bound}")
        if (ep, step, agent) in cells:
            raise TrajectoryError(f"{where}: episode {ep} step {step} agent {agent!r} appears twice")
        cells[(ep, step, agent)] = action
        agents.setdefault(agent)
    if not cells:
        raise TrajectoryError(f"{p}: no actions")
    return assemble(cells, list(agents), declared, str(p))


def assemble(cells: dict[tuple[int, int, str], int], agent_ids: list[str], n_actions: int | None,
             source: str) -> Trajectories:
    """``{(episode, step, agent): action}`` -> ``Trajectories`` (checks completeness)."""
    steps: dict[int, set[int]] = {}
    for ep, step, _ in cells:
        steps.setdefault(ep, set()).add(step)
    episodes = sorted(steps)
    length = min(len(s) for s in steps.values())
    actions = np.zeros((len(episodes), length, len(agent_ids)), np.int64)
    for e, ep in enumerate(episodes):
        ordered = sorted(steps[ep])[:length]
        for t, step in enumerate(ordered):
            for i, agent in enumerate(agent_ids):
                try:
                    actions[e, t, i] = cells[(ep, step, agent)]
                except KeyError:
                    raise TrajectoryError(f"{source}: episode {ep} step {step} has no action of agent {agent!r}") from None
    a = n_actions if n_actions is not None else int(actions.max()) + 1
    return Trajectories(actions, agent_ids, max(a, 2), episodes)
