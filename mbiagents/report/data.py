"""What a report shows, read from the ledger alone (no re-run).

``collect`` gathers, for one run: the run's header, the audit verdict, the market's own
per-round series (``Market.report_data``), the payments each agent settled per round
(from the transfers, in units), the budget, and per-agent LLM usage (from ``llm_*``
events). The plots and the HTML page are drawn from this record only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbiagents.errors import MbiError
from mbiagents.ledger.money import MINOR_UNITS
from mbiagents.ledger.payments import signed_minor_from_transfers
from mbiagents.ledger.store import Ledger, RoundRecord
from mbiagents.markets import market_of
from mbiagents.verify.audit import AuditReport, audit_run


@dataclass
class LLMUsage:
    """One LLM agent's calls over the run; per-round lists have one entry per round."""

    models: list[str] = field(default_factory=list)
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    fallbacks: int = 0
    retries: int = 0
    errors: int = 0
    tokens_per_round: list[int] = field(default_factory=list)
    fallbacks_per_round: list[int] = field(default_factory=list)
    retries_per_round: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ReportData:
    run: dict[str, Any]
    agent_ids: list[str]
    rounds: list[int]
    series: dict[str, Any]  # Market.report_data
    payments: dict[str, list[float]]  # what each agent paid per round, as settled (units)
    audit: AuditReport
    llm: dict[str, LLMUsage] = field(default_factory=dict)

    @property
    def n_rounds(self) -> int:
        return len(self.rounds)

    @property
    def collected(self) -> list[float]:
        """Payments the mechanism collected per round (net of what it paid out)."""
        if not self.payments:
            return [0.0] * self.n_rounds
        return np.sum([self.payments[a] for a in self.agent_ids], axis=0).tolist()

    def cumulative_payments(self) -> dict[str, list[float]]:
        return {a: np.cumsum(p).tolist() for a, p in self.payments.items()}

    def utility(self) -> dict[str, list[float]] | None:
        """Per-round utility ``value - payment`` where the market knows the true values."""
        values = self.series.get("values")
        if not values:
            return None
        return {a: (np.asarray(values[a]) - np.asarray(self.payments[a])).tolist() for a in self.agent_ids}

    def cumulative_utility(self) -> dict[str, list[float]] | None:
        u = self.utility()
        return None if u is None else {a: np.nancumsum(v).tolist() for a, v in u.items()}

    def welfare_gap(self) -> list[float] | None:
        """``W* - W`` per round (``nan`` where unknown)."""
        s = self.series
        if "welfare" not in s or "optimal_welfare" not in s:
            return None
        return (np.asarray(s["optimal_welfare"], float) - np.asarray(s["welfare"], float)).tolist()


def collect(ledger: Ledger, run_id: str | None) -> ReportData:
    """Read one run's report data; ``MbiError`` for an unknown or empty run."""
    run = ledger.get_run(run_id)
    rounds = ledger.read_rounds(run.id)
    if not rounds:
        raise MbiError(f"run {run.id} has no rounds: nothing to report")
    market = market_of(run)
    agent_ids = list(market.agent_ids)
    series = market.report_data(rounds)
    payments = {a: [] for a in agent_ids}
    for rec in rounds:
        minor = signed_minor_from_transfers(agent_ids, rec.transfers, market.payment_kind)
        for a, m in zip(agent_ids, minor.tolist()):
            payments[a].append(m / MINOR_UNITS)
    header = {"id": run.id, "name": run.name, "game": run.game, "mechanism": run.mechanism, "seed": run.seed,
              "status": run.status, "created_at": run.created_at}
    return ReportData(run=header, agent_ids=agent_ids, rounds=[r.index for r in rounds], series=series,
                      payments=payments, audit=audit_run(ledger, run.id), llm=llm_usage(rounds))


def llm_usage(rounds: list[RoundRecord]) -> dict[str, LLMUsage]:
    """Per-agent LLM calls, tokens, cost, fallbacks and retries from ``llm_*`` events.

    A retry is an answer's model call beyond its first (a re-ask after invalid output or a
    failed request): ``max(attempts, calls) - 1``.
    """
    out: dict[str, LLMUsage] = {}
    n = len(rounds)
    for r, rec in enumerate(rounds):
        for _, kind, agent, text in rec.events:
            if agent is None or not kind.startswith("llm_"):
                continue
            ans = json.loads(text)
            u = out.get(agent)
            if u is None:
                u = out[agent] = LLMUsage(tokens_per_round=[0] * n, fallbacks_per_round=[0] * n,
                                          retries_per_round=[0] * n)
            records = ans.get("records") or []
            for c in records:
                model = c.get("model")
                if model and model not in u.models:
                    u.models.append(model)
                p, q = int(c.get("prompt_tokens") or 0), int(c.get("completion_tokens") or 0)
                u.prompt_tokens += p
                u.completion_tokens += q
                u.tokens_per_round[r] += p + q
                u.cost += float(c.get("cost") or 0.0)
                u.latency_s += float(c.get("latency_s") or 0.0)
            u.calls += len(records)
            retries = max(int(ans.get("attempts") or 0), len(records)) - 1
            retries = max(retries, 0)
            u.retries += retries
            u.retries_per_round[r] += retries
            fb = int(bool(ans.get("used_fallback")))
            u.fallbacks += fb
            u.fallbacks_per_round[r] += fb
            u.errors += len(ans.get("errors") or [])
    return dict(sorted(out.items()))
