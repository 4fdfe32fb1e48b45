"""Money: integer minor units, rounded once at settlement.

One unit of payment is ``MINOR_UNITS = 10**6`` minor units (micro-units). The
mechanism's float64 payment ``t`` settles as ``rint(t * 10**6)``, rounding half to even
(IEEE ``rint``). The audit recomputes ``t`` and accepts a logged amount only if it equals
that rounding, up to float noise of the recomputation (``AUDIT_SLACK``).
"""

from __future__ import annotations

import numpy as np

MINOR_UNITS = 1_000_000
AUDIT_SLACK = 1e-6  # minor units of float noise tolerated beyond the half-unit rounding


def to_minor_units(amounts: np.ndarray) -> np.ndarray:
    """Round float payments to integer minor units, half to even."""
    return np.rint(np.asarray(amounts, dtype=np.float64) * MINOR_UNITS).astype(np.int64)


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
