"""``mbi infer``: fit a candidate mechanism to observed trajectories by DIML.

Trajectories (``mbiagents.trajectories``, from a file or a ledger run) go to
``mechanisms.diml.fit``; the result is reported per agent in the trajectories' agent
order. Payoff differences are relative to action 0, averaged over the observed (training)
contexts, in the units fixed by the learner's ``beta``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import numpy as np

from mechanisms import diml
from mechanisms.learning import LogitQParams
from mbiagents.errors import MbiError
from mbiagents.trajectories import Trajectories

# CLI model name -> ``mechanisms.diml.MODELS`` name
MODELS = {"neural": "neural", "congestion": "congestion", "public-goods": "public_goods",
          "anonymous": "anonymous", "tabular": "tabular"}
MIN_STEPS = 2


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def learner_from_scenario(scenario: dict | None, alpha: float | None = None, beta: float | None = None,
                          eps: float | None = None) -> LogitQParams:
    """Learner parameters for the fit: the given ones, else the run's agents' (when they all
    share them), else the paper's defaults ``0.25 / 3 / 0.06``."""
    default = LogitQParams()
    agents = (scenario or {}).get("agents") or []
    given = {"alpha": alpha, "beta": beta, "eps": eps}
    out = {}
    for name, value in given.items():
        if value is None:
            seen = {a.get(name) for a in agents if isinstance(a, dict)}
            value = seen.pop() if len(seen) == 1 and None not in seen else getattr(default, name)
        out[name] = float(value)
    if not (0 < out["alpha"] <= 1 and out["beta"] >= 0 and 0 < out["eps"] < 1):
        raise MbiError(f"learner parameters out of range: alpha {out['alpha']}, beta {out['beta']}, "
                       f"epsilon {out['eps']} (need 0 < alpha <= 1, beta >= 0, 0 < epsilon < 1)")
    return LogitQParams(**out)


def infer(
    traj: Trajectories, model: str = "neural", *, holdout: float = 0.2, predict: Trajectories | None = None,
    seed: int = 0, learner: LogitQParams = LogitQParams(), epochs: int | None = None,
    callback: Callable[[diml.EpochStats], None] | None = None,
    on_config: Callable[[diml.FitConfig], None] | None = None,
) -> dict[str, Any]:
    """Fit ``model`` to ``traj`` (``holdout`` fraction of episodes held out, or score the
    held-out NLL on ``predict``); a JSON-ready report. ``MbiError`` on unusable input."""
    if model not in MODELS:
        raise MbiError(f"unknown model {model!r} (choose: {', '.join(MODELS)})")
    n_episodes, n_steps, n_agents = traj.actions.shape
    if n_steps < MIN_STEPS:
        raise MbiError(f"too few steps to fit: {n_steps} step(s) per episode, need at least {MIN_STEPS}")
    if not 0.0 <= holdout < 1.0:
        raise MbiError(f"--holdout must be in [0, 1), got {holdout}")
    held = None
    if predict is not None:
        if sorted(predict.agent_ids) != sorted(traj.agent_ids):
            raise MbiError("--predict: the file's agents differ from the fitted trajectories' agents")
        order = [predict.agent_ids.index(a) for a in traj.agent_ids]
        held = predict.actions[..., order]
        if int(held.max()) >= traj.n_actions:
            raise MbiError(f"--predict: action {int(held.max())} outside the fitted range [0, {traj.n_actions})")
        holdout = 0.0
    try:
        mech = diml.make_model(MODELS[model], n_agents, traj.n_actions)
    except ValueError as exc:
        raise MbiError(f"model {model!r}: {exc}") from None
    config = diml.recommended_config(mech.name, n_agents, epochs)
    if on_config is not None:
        on_config(config)
    t0 = time.perf_counter()
    res = diml.fit(traj.actions, traj.n_actions, mech, key=jax.random.PRNGKey(seed), learner=learner,
                   config=config, heldout_fraction=holdout, callback=callback)
    heldout_nll, freq = res.heldout_nll, res.frequency_nll
    if held is not None:
        train = traj.actions[res.train_episodes]
        heldout_nll = float(diml.nll(mech, res.params, held, res.learner))
        freq = float(diml.frequency_nll(train, held, traj.n_actions))
    seconds = time.perf_counter() - t0
    lr = res.learner
    return {
        "model": model,
        "alpha": float(lr.alpha), "beta": float(lr.beta), "epsilon": float(lr.eps),
        "train_nll": _num(res.train_nll),
        "heldout_nll": _num(heldout_nll),
        "frequency_baseline_nll": _num(freq),
        "payoff_differences": {a: np.asarray(res.payoff_differences[i]).tolist() for i, a in enumerate(traj.agent_ids)},
        "agents": list(traj.agent_ids),
        "n_actions": traj.n_actions,
        "episodes": n_episodes, "steps": n_steps,
        "heldout_episodes": [traj.episodes[e] for e in res.heldout_episodes.tolist()] if held is None else None,
        "epochs": config.epochs,
        "seconds": seconds,
    }
