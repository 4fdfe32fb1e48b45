"""Verification of a logged run, from the ledger alone: ``mbi audit`` and ``mbi replay``.

Sits above ``markets`` and ``ledger``: it reads rounds from the ledger and asks the run's
market to recompute them (``mbiagents.markets.AuditSteps``).
"""

from mbiagents.verify.audit import AuditReport, Check, audit_run
from mbiagents.verify.replay import ReplayReport, ReplayRound, replay_run

__all__ = ["AuditReport", "Check", "audit_run", "ReplayReport", "ReplayRound", "replay_run"]
