"""Agent learning dynamics as pure functions (state in, state out).

- ``projected_gradient_play``: gradient play on a price signal, projected onto ``x >= 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def projected_gradient_play(x: Array, gradient: Array, step: Array) -> Array:
    """One step of projected gradient play: ``x_i <- max(0, x_i + eta_i * g_i)``.

    Each agent ascends its own utility gradient ``g_i`` with its own step ``eta_i``. With
    the DPM signal as ``g`` and ``eta_i <= 1 / (b_i + kappa N)`` in the team game the joint
    map is a contraction onto the team optimum (the Jacobian of ``-g`` is
    ``diag(b) + kappa 11^T``, whose eigenvalues scaled by ``eta`` lie in ``(0, 2)``).
    """
    return jnp.maximum(0.0, x + step * gradient)


def projected_gradient_norm(x: Array, gradient: Array) -> Array:
    """Stationarity on ``x >= 0``: ``max_i |g_i|``, ignoring ``g_i < 0`` where ``x_i = 0``.

    Zero exactly at a KKT point of ``max U`` subject to ``x >= 0``.
    """
    blocked = (x <= 0.0) & (gradient < 0.0)
    return jnp.max(jnp.where(blocked, 0.0, jnp.abs(gradient)), initial=0.0)
