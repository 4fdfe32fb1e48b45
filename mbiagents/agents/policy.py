"""Programmatic (policy) agents as vectorised populations.

Team game policies:

- ``truthful``: reports its type ``(a_i, b_i)``; acts by projected gradient play on its
  DPM signal ``G_i``, which under truthful reports is exactly the gradient of its own
  utility ``v_i(x_i) - t_i(x)`` (Clarke payment), so following the signal is its own
  myopic best move.
- ``misreport``: reports ``(misreport_factor * a_i, b_i)`` and acts consistently with that
  report (it follows the signal priced on its report), so the mechanism steers to the
  optimum of the reported welfare; the summary shows what the lie costs it.

Step sizes: ``step`` from the scenario, else ``1 / (b_hat_i + kappa N)`` (see
``mechanisms.dpm.default_steps``), which keeps simultaneous gradient play a contraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from mechanisms.games.team import TeamTypes
from mechanisms.learning import projected_gradient_play


@dataclass
class TeamPopulation:
    ids: list[str]
    value: np.ndarray  # true a_i
    curvature: np.ndarray  # true b_i
    factor: np.ndarray  # misreport factor on a_i (1 = truthful)
    steps: np.ndarray

    @classmethod
    def from_specs(cls, specs, kappa: float) -> "TeamPopulation":
        value = np.array([s.value for s in specs], dtype=np.float64)
        curvature = np.array([s.curvature for s in specs], dtype=np.float64)
        factor = np.array([s.misreport_factor or 1.0 for s in specs], dtype=np.float64)
        default = 1.0 / (curvature + kappa * len(specs))
        steps = np.array([s.step if s.step is not None else d for s, d in zip(specs, default)], dtype=np.float64)
        return cls([s.id for s in specs], value, curvature, factor, steps)

    @property
    def true_types(self) -> TeamTypes:
        return TeamTypes(self.value, self.curvature)

    def report(self, round_index: int) -> TeamTypes:
        return TeamTypes(self.value * self.factor, self.curvature)

    def act(self, signals: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return np.asarray(_gradient_play(actions, signals, self.steps))


_gradient_play = jax.jit(projected_gradient_play)
