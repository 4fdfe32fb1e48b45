"""Payments as ledger transfers: the documented encoding of a round's float payments.

A market hands the round's payments ``t`` (what each agent pays; negative: it is paid)
to ``payment_transfers``; the audit and the report read them back with
``signed_minor_from_transfers``. ``budget_balanced_payments`` rounds payments that sum
to zero so that they also settle to exactly zero.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from mbiagents.ledger.invariants import agent_payments
from mbiagents.ledger.money import MINOR_UNITS, from_minor_units, to_minor_units
from mbiagents.ledger.store import TREASURY, PaymentBatch, agent_account


def payment_transfers(agent_ids: list[str], payments: np.ndarray, kind: str) -> list[PaymentBatch]:
    """One transfer per agent for its payment ``t_i`` (what it pays; negative = it is paid).

    ``t_i > 0`` debits the agent and credits the treasury; ``t_i < 0`` the reverse; an
    amount that rounds to zero writes no transfer. Returned as one ``PaymentBatch``
    (``.rows()`` lists the transfers): no per-agent Python object until the write.
    """
    return minor_transfers(agent_ids, to_minor_units(payments), kind)


def minor_transfers(agent_ids: list[str], minor: np.ndarray, kind: str) -> list[PaymentBatch]:
    """``payment_transfers`` of payments already in integer minor units (e.g. netted ones)."""
    return [PaymentBatch(kind, agent_ids, np.asarray(minor, dtype=np.int64), TREASURY)]


def signed_minor_from_transfers(agent_ids: list[str], transfers: Iterable, kind: str) -> np.ndarray:
    """Inverse of ``payment_transfers``: each agent's net payment in minor units."""
    rows = transfers if isinstance(transfers, list) else list(transfers)
    return signed_minor_from_columns(agent_ids, tuple(zip(*rows)), kind)


def signed_minor_from_columns(agent_ids: list[str], columns: tuple[tuple, ...], kind: str) -> np.ndarray:
    """``signed_minor_from_transfers`` of transfers given column-wise ``(ids, kinds, debits,
    credits, amounts)`` (``RoundRecord.columns``; ``()`` for none): ``invariants.agent_payments``
    as a vector in agent order."""
    paid = agent_payments(columns, agent_positions(agent_ids), kind)
    return paid_vector(len(agent_ids), list(paid), list(paid.values()))


def paid_vector(n: int, at: Sequence[int], amounts: Sequence[int]) -> np.ndarray:
    """What ``n`` agents paid, as a vector: ``amounts[j]`` at position ``at[j]`` (the
    ``invariants.agent_payments`` of a round), zero elsewhere."""
    out = np.zeros(n, dtype=np.int64)
    if len(at):
        out[np.asarray(at, dtype=np.int64)] = np.asarray(amounts, dtype=np.int64)
    return out


_POSITIONS: list = [None, {}]  # the last agent list (kept alive, so identity is safe) and its positions


def agent_positions(agent_ids: list[str]) -> dict[str, int]:
    """``{agent account: position}``, built once per agent list (the audit asks every round)."""
    if _POSITIONS[0] is not agent_ids:
        _POSITIONS[:] = [agent_ids, {agent_account(a): i for i, a in enumerate(agent_ids)}]
    return _POSITIONS[1]


def budget_balanced_payments(payments: np.ndarray) -> np.ndarray:
    """Payments that sum to 0 rounded to minor units, so that they settle *exactly* balanced.

    Each ``t_i`` is rounded half to even (``to_minor_units``); the residual of the sum
    (at most ``N/2`` units) is taken back one unit each from the agents whose rounding
    moved them furthest in the residual's direction (largest remainder; ties by agent
    order). Returns the float payments ``minor / 10**6``, which ``payment_transfers``
    settles unchanged and the audit recomputes bit for bit.
    """
    exact = np.asarray(payments, dtype=np.float64)
    minor = to_minor_units(exact)
    residual = int(minor.sum())
    if residual:
        step = int(np.sign(residual))
        err = minor - exact * MINOR_UNITS  # > 0: rounded up
        order = np.argsort(-step * err, kind="stable")
        minor[order[: abs(residual)]] -= step
    return np.asarray(from_minor_units(minor), dtype=np.float64)
