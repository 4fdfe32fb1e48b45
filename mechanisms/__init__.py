"""Pure JAX mechanism layer of mbiagents.

No I/O, no SQL, no LLM and no global state beyond one switch: importing this package turns
on JAX's 64-bit mode, because payments are settled to 1e-6 units and welfare is compared
to closed forms at 1e-6 relative, which float32 cannot carry. Every function is
deterministic given its inputs (and a PRNG key where random), and jit-able.

This package must never import ``mbiagents``.

The main functions are importable from here (``from mechanisms import dpm_solve``), each
loaded from its module on first use; names two modules share (``clarke_pivot_payments``)
stay in their modules (``mechanisms.dpm``, ``mechanisms.vcg``).
"""

import importlib
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

#: public name -> the module of ``mechanisms`` that defines it
_EXPORTS: dict[str, str] = {
    # Differentiable Price Mechanism (MBI)
    "team_signals": "dpm",
    "dpm_init": "dpm",
    "dpm_step": "dpm",
    "dpm_solve": "dpm",
    # VCG for discrete outcomes
    "unit_demand_payments": "vcg",
    # expected-externality (AGV) payments
    "agv_payments": "bayesian",
    "team_agv_payments": "bayesian",
    # social-gradient incentive design
    "social_gradient_init": "social_gradient",
    "social_gradient_step": "social_gradient",
    "social_gradient_flow": "social_gradient",
    "two_timescale_run": "social_gradient",
    # two-phase principal
    "principal_init": "principal",
    "principal_transfers": "principal",
    "principal_update": "principal",
    "agent_round": "principal",
    # learning dynamics and the model-free baseline
    "projected_gradient_play": "learning",
    "logit_q_simulate": "learning",
    "reinforce_init": "rl",
    "reinforce_round": "rl",
    # inverse mechanism learning (DIML)
    "fit": "diml",
    "payoff_differences": "diml",
    # property checks
    "dsic_violation": "properties",
    "bic_violation": "properties",
    "ir_violation": "properties",
    "budget_violation": "properties",
    "efficiency_violation": "properties",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mechanisms' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mechanisms.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
