"""Agent teams on real tasks: bring your own agents, VCG award, pay on verified delivery,
budgets enforced by the ledger. See :class:`~mbiagents.team.market.TaskMarket`."""

from mbiagents.team.agent import Agent, WorkContext
from mbiagents.team.budget import BudgetExceeded, Wallet
from mbiagents.team.market import TaskMarket, TeamResult
from mbiagents.team.types import Budget, Task, Verdict
from mbiagents.team import verifiers

#: mechanisms of the task market, by name
MECHANISMS = ("vcg", "vcg-fast")

__all__ = ["Agent", "Budget", "BudgetExceeded", "MECHANISMS", "Task", "TaskMarket", "TeamResult", "Verdict",
           "Wallet", "WorkContext", "verifiers"]
