"""Money: integer minor units, rounded once at settlement.

One unit of payment is ``MINOR_UNITS = 10**6`` minor units (micro-units). The
mechanism's float64 payment ``t`` settles as ``rint(t * 10**6)``, rounding half to even
(IEEE ``rint``). The audit recomputes ``t`` and accepts a logged amount only if it equals
that rounding, up to float noise of the recomputation (``AUDIT_SLACK``).

Where floats become money (``to_minor_units``) a payment must be finite and at most
``MAX_PAYMENT`` units in magnitude (``10**18`` minor units, inside int64): anything else
raises ``MoneyError``, so the run fails with a one-line error and nothing of that round
is written (the round's transfers are computed before its transaction opens).
"""

from __future__ import annotations

import numpy as np

from mbiagents.errors import MbiError

MINOR_UNITS = 1_000_000
AUDIT_SLACK = 1e-6  # minor units of float noise tolerated beyond the half-unit rounding
MAX_PAYMENT = 1e12  # units: 10**18 minor units, well inside int64 (9.2e18)


class MoneyError(MbiError, ValueError):
    """A payment that cannot be money: not finite, or beyond ``MAX_PAYMENT``."""


def to_minor_units(amounts: np.ndarray) -> np.ndarray:
    """Round float payments to integer minor units, half to even.

    Raises ``MoneyError`` for a non-finite payment or one beyond ``MAX_PAYMENT`` units.
    """
    x = np.asarray(amounts, dtype=np.float64)
    bad = ~(np.abs(x) <= MAX_PAYMENT)  # NaN compares False: caught too
    if bad.any():
        j = int(np.flatnonzero(bad.ravel())[0])
        v = float(x.ravel()[j])
        what = "is not finite" if not np.isfinite(v) else f"exceeds {MAX_PAYMENT:g} units"
        raise MoneyError(f"payment {v!r} (entry {j}) {what}: it cannot be settled in minor units")
    return np.rint(x * MINOR_UNITS).astype(np.int64)


def within_rounding(minor: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """True where ``minor`` is the documented rounding of ``amounts``."""
    exact = np.asarray(amounts, dtype=np.float64) * MINOR_UNITS
    return np.abs(np.asarray(minor, dtype=np.float64) - exact) <= 0.5 + AUDIT_SLACK + 1e-12 * np.abs(exact)


def from_minor_units(minor: int | np.ndarray) -> float | np.ndarray:
    return np.asarray(minor) / MINOR_UNITS


def settled(amounts) -> np.ndarray:
    """The money that actually moves for float payments: their rounding to minor units,
    back in units (what summaries show as ``payment``)."""
    return np.asarray(from_minor_units(to_minor_units(amounts)), dtype=np.float64)
