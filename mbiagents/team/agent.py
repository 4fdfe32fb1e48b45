"""Bring your own agent: anything that can bid on a task and work on it.

An :class:`Agent` has an id and two callables:

- ``bid(task)`` -> its own cost estimate (units, a finite number >= 0) or ``None`` to
  abstain. The cost is the agent's private information: it is never in the scenario and
  never shown to the other agents (they see only the round's outcome);
- ``work(task)`` or ``work(task, ctx)`` -> the deliverable (any JSON-able value). ``ctx``
  is a :class:`WorkContext`: the round, and ``ctx.charge(...)`` for priced calls.

Either may be a plain function, an ``async`` function, a LangChain ``Runnable`` or a
compiled LangGraph graph (called with ``{"task": {...}}``; a dict result with an
``output`` key yields that value). Sync callables run in a worker thread, so they never
block the event loop. ``bid`` may also be a number (a fixed estimate).
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Union

from mbiagents.team.budget import Wallet
from mbiagents.team.types import Budget, Task

BidFn = Union[float, Callable[..., Any]]
WorkFn = Callable[..., Any]


@dataclass
class WorkContext:
    """What ``work`` and ``bid`` get besides the task: who, which round, and the wallet."""

    agent_id: str
    round: int
    wallet: Wallet
    step: str = "work"

    task_id: str = ""

    def charge(self, reserve: float, what: str, *, shrinkable: bool = False):
        """Reserve ``reserve`` units before a priced call; set ``.actual`` to its cost.
        A context manager usable with ``with`` (sync and async code alike)."""
        return self.wallet.charge(reserve, what, shrinkable=shrinkable, tag={"task": self.task_id, "step": self.step})


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params) or 1


async def call_user(fn: Any, task: Task, ctx: WorkContext) -> Any:
    """Call a user's bid/work callable the way it wants to be called (see the module doc)."""
    if hasattr(fn, "ainvoke"):  # LangChain Runnable / compiled LangGraph graph
        out = await fn.ainvoke({"task": task.model_dump(mode="json")})
        return out["output"] if isinstance(out, dict) and "output" in out else out
    target = fn.__call__ if not inspect.isfunction(fn) and not inspect.ismethod(fn) and callable(fn) else fn
    args = (task, ctx)[: min(2, _positional_arity(target))]
    if inspect.iscoroutinefunction(target):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


@dataclass
class Agent:
    """A team member. ``capacity``: tasks it can win per round. ``budget``: its account (see
    :class:`~mbiagents.team.types.Budget`); ``None``: calls are recorded, not limited."""

    id: str
    work: WorkFn
    bid: BidFn
    capacity: int = 1
    budget: Budget | None = None
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    #: releases what the agent holds on the running event loop (an LLM agent's client); the
    #: market awaits it when a run ends or pauses
    close: Callable[[], Awaitable[None]] | None = None

    async def abid(self, task: Task, ctx: WorkContext) -> Any:
        if isinstance(self.bid, (int, float)) and not isinstance(self.bid, bool):
            return float(self.bid)
        return await call_user(self.bid, task, ctx)

    async def awork(self, task: Task, ctx: WorkContext) -> Any:
        return await call_user(self.work, task, ctx)


def as_agent(obj: Any) -> Agent:
    """An :class:`Agent` as is, or an object with ``id``, ``bid`` and ``work`` attributes
    (and, optionally, ``capacity``, ``budget`` and an async ``aclose``: ``Agent.close``)."""
    if isinstance(obj, Agent):
        return obj
    if all(hasattr(obj, a) for a in ("id", "bid", "work")):
        return Agent(id=obj.id, bid=obj.bid, work=obj.work, capacity=getattr(obj, "capacity", 1),
                     budget=getattr(obj, "budget", None), close=getattr(obj, "aclose", None))
    raise TypeError(f"{obj!r} is not an agent: give an mbiagents.Agent or an object with id, bid and work")

