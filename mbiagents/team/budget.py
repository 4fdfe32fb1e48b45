"""Per-agent budgets: reservations before a priced call, charges of the actual cost.

A :class:`Wallet` holds what an agent may still spend in one ledger round (its available
balance in the ledger, minor units) and the charges it made. ``reserve`` runs before a
priced model or tool call and either grants the reservation or applies the budget's
exhaustion policy; ``settle`` charges the actual cost, at most the reservation. The
charges reach the ledger as one ``spend`` transfer per agent and round plus a ``usage``
event listing every call; the ledger refuses a round that would take a budgeted account
below zero, and the audit re-checks it (``no_overdraft``) and recomputes each ``spend``
from its ``usage`` calls (``spend_recompute``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from mbiagents.ledger.money import MINOR_UNITS, to_minor_units


class BudgetExceeded(Exception):
    """The agent's budget cannot cover a call (policy ``stop``, or nothing left / no top-up)."""

    def __init__(self, agent: str, needed: int, available: int):
        super().__init__(f"agent {agent}: a call needs {needed / MINOR_UNITS:g}, "
                         f"{available / MINOR_UNITS:g} left in its budget")
        self.agent, self.needed, self.available = agent, needed, available


def minor(amount: float) -> int:
    """Units -> integer minor units (half to even, as every settled amount)."""
    return int(to_minor_units(amount))


@dataclass
class Charge:
    """A reservation in flight; set ``actual`` (units) before the block ends."""

    reserved: int
    actual: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Wallet:
    """What one agent may spend in one ledger round (``available=None``: no budget, unbounded)."""

    agent: str
    available: int | None
    policy: str = "stop"
    calls: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    topup: int = 0
    _held: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def spent(self) -> int:
        return sum(c["charged"] for c in self.calls)

    def left(self) -> int | None:
        if self.available is None:
            return None
        return self.available + self.topup - self.spent - self._held

    def reserve(self, amount: int, what: str, *, shrinkable: bool = False, tag: dict | None = None) -> int:
        """Reserve ``amount`` minor units for a call. Returns the reservation granted: all of
        it, or (policy ``warn`` and ``shrinkable``) what is left; else raises
        :class:`BudgetExceeded` (``stop``) or interrupts for a top-up (``pause``)."""
        while True:
            with self._lock:
                left = self.left()
                if left is None or amount <= left:
                    self._held += amount
                    return amount
                event = {"agent": self.agent, "what": what, "needed": amount, "left": left, "policy": self.policy,
                         **(tag or {})}
                if self.policy == "warn" and shrinkable and left > 0:
                    self.events.append({**event, "granted": left})
                    self._held += left
                    return left
            if self.policy == "pause":
                from langgraph.types import interrupt

                answer = interrupt({"budget_exceeded": event})
                top = minor(float(answer or 0))
                with self._lock:
                    self.events.append({**event, "topup": top})
                    if top > 0:
                        self.topup += top
                        continue
            else:
                with self._lock:
                    self.events.append(event)
            raise BudgetExceeded(self.agent, amount, max(left, 0))

    def settle(self, reserved: int, actual: float, what: str, **info: Any) -> int:
        """Charge the actual cost of a call (at most its reservation); release the rest."""
        cost = minor(actual)
        charged = min(cost, reserved)
        with self._lock:
            self._held -= reserved
            self.calls.append({"what": what, "reserved": reserved, "charged": charged,
                               **({"overage": cost - charged} if cost > reserved else {}), **info})
        return charged

    @contextmanager
    def charge(self, reserve: float, what: str, *, shrinkable: bool = False,
               tag: dict | None = None) -> Iterator[Charge]:
        """``with wallet.charge(reserve=0.02, what="tool:search") as c: ...; c.actual = 0.01``:
        reserve before the call, charge ``c.actual`` (default: the reservation) after it."""
        held = self.reserve(minor(reserve), what, shrinkable=shrinkable, tag=tag)
        c = Charge(held)
        try:
            yield c
        finally:
            actual = c.reserved / MINOR_UNITS if c.actual is None else c.actual
            self.settle(held, actual, what, **(tag or {}), **c.info)

    def of(self, task_id: str, step: str) -> dict[str, Any]:
        """The calls and events one task's step made (each ``Send`` reports its own)."""
        mine = lambda d: d.get("task") == task_id and d.get("step") == step  # noqa: E731
        with self._lock:
            return {"calls": [c for c in self.calls if mine(c)], "events": [e for e in self.events if mine(e)],
                    "topup": sum(e.get("topup", 0) for e in self.events if mine(e))}

    def record(self) -> dict[str, Any]:
        """What the round's ledger write needs: calls, events, top-up (JSON)."""
        return {"calls": list(self.calls), "events": list(self.events), "topup": self.topup}
