"""Programmatic (policy) agents as vectorised populations.

Team game policies:

- ``truthful``: reports its type ``(a_i, b_i)``; acts by projected gradient play on its
  DPM signal ``G_i``, which under truthful reports is exactly the gradient of its own
  utility ``v_i(x_i) - t_i(x)`` (Clarke payment), so following the signal is its own
  myopic best move.
- ``misreport``: reports ``(misreport_factor * a_i, b_i)`` and acts consistently with that
  report (it follows the signal priced on its report), so the mechanism steers to the
  optimum of the reported welfare; the summary shows what the lie costs it.

Step rule (the team game's ``[game] step``, ``mechanisms.dpm``): under ``clearing`` (the
default) and ``newton`` agent ``i`` plays ``x_i <- max(0, x_i + eta_i (G_i - pi))`` with
``pi`` the price move the mechanism broadcasts and ``eta_i = 1 / b_i`` (its own curvature):
``clearing``'s move lands on the optimum in one round, ``newton``'s converges in rounds that
do not grow like ``N``; under ``fixed``, ``pi = 0`` and
``eta_i = 1 / (b_i + kappa N)``, a contraction whose rounds grow like ``N``. A ``step`` in
the scenario overrides ``eta_i`` under either rule (``mechanisms.dpm.default_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from mechanisms.dpm import default_steps
from mechanisms.games.team import TeamTypes
from mechanisms.learning import LogitQParams, logit_q_log_policy, logit_q_update, projected_gradient_play


@dataclass
class TeamPopulation:
    ids: list[str]
    value: np.ndarray  # true a_i
    curvature: np.ndarray  # true b_i
    factor: np.ndarray  # misreport factor on a_i (1 = truthful)
    steps: np.ndarray

    @classmethod
    def from_specs(cls, specs, kappa: float, rule: str = "fixed") -> "TeamPopulation":
        value = np.array([s.value for s in specs], dtype=np.float64)
        curvature = np.array([s.curvature for s in specs], dtype=np.float64)
        factor = np.array([s.misreport_factor or 1.0 for s in specs], dtype=np.float64)
        default = np.asarray(default_steps(TeamTypes(value, curvature), kappa, rule))
        steps = np.array([s.step if s.step is not None else d for s, d in zip(specs, default)], dtype=np.float64)
        return cls([s.id for s in specs], value, curvature, factor, steps)

    @classmethod
    def from_arrays(cls, ids: list[str], value: np.ndarray, curvature: np.ndarray, kappa: float,
                    rule: str = "fixed") -> "TeamPopulation":
        """Truthful agents with the default steps, built column-wise (a generated population)."""
        value, curvature = np.asarray(value, np.float64), np.asarray(curvature, np.float64)
        steps = np.asarray(default_steps(TeamTypes(value, curvature), kappa, rule), dtype=np.float64)
        return cls(ids, value, curvature, np.ones_like(value), steps)

    @property
    def true_types(self) -> TeamTypes:
        return TeamTypes(self.value, self.curvature)

    def report(self, round_index: int) -> TeamTypes:
        return TeamTypes(self.value * self.factor, self.curvature)

    def act(self, signals: np.ndarray, actions: np.ndarray, move: float = 0.0) -> np.ndarray:
        """``x <- max(0, x + eta (G - pi))`` with the broadcast price move ``pi`` (0: ``fixed``)."""
        return np.asarray(_gradient_play(actions, signals, self.steps, move))


@jax.jit
def _gradient_play(x, signals, steps, move):
    return projected_gradient_play(x, signals - move, steps)


# ---- logit-Q learners (congestion / tolling game) ----------------------------------------


@dataclass
class LogitQPopulation:
    """Logit-Q learners (``mechanisms.learning``), one row of ``Q [n, A]`` each, vectorised.

    ``act``: sample ``a_i ~ (1 - eps_i) softmax(beta_i Q_i) + eps_i / A`` with the round's
    key ``fold_in(PRNGKey(seed), round)`` (reproducible, resumable). ``learn``:
    ``Q <- (1 - alpha) Q + alpha u_cf`` on the counterfactual payoffs of the round.
    ``reset``: ``Q = 0`` (uniform policy) at the start of every episode.
    """

    ids: list[str]
    n_actions: int
    seed: int
    params: LogitQParams  # alpha, beta, eps as [n, 1] arrays

    @classmethod
    def from_specs(cls, specs, n_actions: int, seed: int) -> "LogitQPopulation":
        col = lambda name: np.array([[getattr(s, name)] for s in specs], dtype=np.float64)  # noqa: E731
        return cls([s.id for s in specs], n_actions, seed, LogitQParams(col("alpha"), col("beta"), col("eps")))

    def reset(self) -> np.ndarray:
        return np.zeros((len(self.ids), self.n_actions))

    def act(self, q: np.ndarray, round_index: int) -> np.ndarray:
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), round_index)
        return np.asarray(_logit_q_sample(key, q, self.params), dtype=np.int64)

    def learn(self, q: np.ndarray, u_cf: np.ndarray) -> np.ndarray:
        return np.asarray(_logit_q_learn(q, u_cf, self.params))


@jax.jit
def _logit_q_sample(key, q, params):
    return jax.random.categorical(key, logit_q_log_policy(q, params), axis=-1)


_logit_q_learn = jax.jit(logit_q_update)
