"""``TaskMarket``: agents bid on tasks, VCG awards them, the winners work, a verifier
accepts or rejects, and the escrowed payment is posted or voided in the ledger.

The market is a LangGraph graph (``TaskMarket.graph()``), runnable on its own
(``run``/``arun``) or as a node of your own ``StateGraph`` (``as_node()``: a compiled
subgraph that uses the parent's checkpointer and thread id). One market round::

    bid (one Send per agent) -> award (VCG; ledger round 2r: bids, assignment,
    pending escrow) -> work (one Send per awarded task) -> verify (one Send per
    deliverable; may interrupt() for a human) -> settle (ledger round 2r+1: verdicts,
    escrow posted/voided, spend) -> next round with the tasks not accepted, or finish.

Crash safety: every ledger write is idempotent (a re-run node rewrites the same round,
which the ledger recognises as a duplicate), and LangGraph keeps each finished ``Send``'s
result in the checkpoint, so a resumed run neither asks an agent again for work it
already delivered nor pays twice. The run id is derived from the thread id (and, inside a
parent graph, the node's checkpoint namespace), so a resume finds its run.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Sequence

import numpy as np
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send
from typing_extensions import TypedDict

from mbiagents.aio import run_sync
from mbiagents.errors import LedgerError, MbiError
from mbiagents.graph import merge_llm_answers
from mbiagents.ledger.money import to_minor_units
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import TREASURY, EventRow, Ledger, Resolution, TransferRow, agent_account, transfer_id
from mbiagents.ledger.payments import payment_transfers
from mbiagents.markets.tasks import encode_costs, vcg_outcome
from mbiagents.markets.team_tasks import ESCROW, GAME, GRANT, PROVIDER, SPEND, TOPUP, TeamTasksMarket, TeamTasksScenario
from mbiagents.team.agent import Agent, WorkContext, as_agent
from mbiagents.team.budget import BudgetExceeded, Wallet, minor
from mbiagents.team.types import Task
from mbiagents.team.verifiers import accept_all, run_verifier

RUN_NAMESPACE = uuid.UUID("6d626961-6765-6e74-732d-7465616d7321")
NODES_PER_ROUND = 7
OUTPUT_CHARS = 20_000  # a deliverable longer than this (as text) is cut in the ledger event


def merge_lists(old: list | None, new: list | None) -> list:
    return (old or []) + (new or [])


class TeamInput(TypedDict):
    """What the market node reads from its parent's state."""

    tasks: list[Any]


class TeamOutput(TypedDict, total=False):
    """What the market node writes back to its parent's state."""

    results: list[dict[str, Any]]
    run_id: str
    summary: dict[str, Any]


class TeamState(TypedDict, total=False):
    tasks: list[Any]
    results: list[dict[str, Any]]
    run_id: str
    summary: dict[str, Any]
    round: int
    open_tasks: list[dict[str, Any]]
    bids: Annotated[dict, merge_llm_answers]
    award: dict[str, Any]
    work: Annotated[dict, merge_llm_answers]
    verdicts: Annotated[dict, merge_llm_answers]


@dataclass
class TeamResult:
    """A finished (or interrupted) market run. ``interrupts``: LangGraph ``Interrupt``s
    (``.id``, ``.value``) waiting for an answer: ``run(thread_id=..., resume=value)`` for
    one, ``resume={id: value, ...}`` for several."""

    run_id: str
    thread_id: str
    results: list[dict[str, Any]]
    summary: dict[str, Any]
    ledger_url: str
    interrupts: list[Any] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return bool(self.interrupts)


def _jsonable(value: Any) -> Any:
    """The deliverable as JSON data (pydantic models dumped; anything else as text)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if hasattr(value, "content") and not isinstance(value, (str, dict)):  # a LangChain message
        value = value.content
    try:
        import json

        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return str(value)


class TaskMarket:
    """A team of agents and the VCG task market that coordinates them.

    Args:
      agents: the team (:class:`~mbiagents.team.agent.Agent` or objects with ``id``,
        ``bid``, ``work``).
      mechanism: ``"vcg"`` (Clarke pivot, any capacities) or ``"vcg-fast"`` (unit demand).
      verifier: decides acceptance (a function, ``verifiers.command``, ``verifiers.human``);
        default: a non-empty deliverable is accepted.
      ledger: SQLAlchemy URL of the ledger (default ``sqlite:///mbi-ledger.db``) or an open
        :class:`~mbiagents.ledger.store.Ledger`.
      max_rounds: market rounds at most (rejected tasks are offered again).
      max_bid: bids outside ``[0, max_bid]`` are rejected (and logged).
    """

    def __init__(self, agents: Sequence[Any], *, mechanism: str = "vcg", verifier: Any = None,
                 ledger: str | Ledger | None = None, max_rounds: int = 3, max_bid: float = 1e6,
                 name: str = "team"):
        self.agents: list[Agent] = [as_agent(a) for a in agents]
        self.by_id = {a.id: a for a in self.agents}
        self.verifier = verifier or accept_all
        self._ledger_arg = ledger
        self._ledger: Ledger | None = ledger if isinstance(ledger, Ledger) else None
        self.max_rounds = max_rounds
        data = {"scenario": {"name": name, "game": GAME, "mechanism": mechanism, "rounds": max_rounds},
                "game": {"max_bid": max_bid},
                "agents": [{"id": a.id, "capacity": a.capacity,
                            **({"grant": a.budget.grant, "on_exhausted": a.budget.on_exhausted} if a.budget else {})}
                           for a in self.agents]}
        from mbiagents.scenario import parse_scenario

        self.scenario: TeamTasksScenario = parse_scenario(data, "TaskMarket")  # type: ignore[assignment]
        self.market = TeamTasksMarket(self.scenario)
        self.agent_ids = [a.id for a in self.agents]
        self.capacities = np.array([a.capacity for a in self.agents], dtype=np.int64)
        self._wallets: dict[tuple[str, int, str], Wallet] = {}
        self._lock = threading.Lock()
        self._memory = None
        self.tasks: list[Task] = []

    @classmethod
    def from_toml(cls, path: str, agents: dict[str, Any], **kw: Any) -> "TaskMarket":
        """A market from a team TOML file (``game = "team-tasks"``): its mechanism, rounds,
        ``max_bid``, agents' capacities and budgets; ``agents`` maps each agent id to an
        object with ``bid`` and ``work`` (or an :class:`Agent`). Its ``[[tasks]]`` are in
        ``market.tasks``. A bad file or a missing agent is a one-line ``ScenarioError``."""
        from mbiagents.errors import ScenarioError
        from mbiagents.scenario import load_scenario
        from mbiagents.team.types import Budget

        sc = load_scenario(path)
        if not isinstance(sc, TeamTasksScenario):
            raise ScenarioError(f"{path}: scenario.game: a team file needs game = {GAME!r}")
        team = []
        for i, spec in enumerate(sc.agents):
            impl = agents.get(spec.id)
            if impl is None:
                raise ScenarioError(f"{path}: agents[{i}].id: no implementation given for agent {spec.id!r}")
            budget = Budget(grant=spec.grant, on_exhausted=spec.on_exhausted) if spec.grant is not None else None
            team.append(Agent(id=spec.id, bid=impl.bid, work=impl.work, capacity=spec.capacity, budget=budget))
        meta = sc.scenario
        market = cls(team, mechanism=meta.mechanism, max_rounds=meta.rounds, max_bid=sc.game.max_bid,
                     name=meta.name, **kw)
        market.tasks = [Task(**t.model_dump()) for t in sc.tasks]
        return market

    # ---- the ledger ---------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = open_ledger(self._ledger_arg)
        return self._ledger

    def _ensure_run(self, run_id: str) -> None:
        try:
            run = self.ledger.get_run(run_id)
        except LedgerError:
            meta = self.scenario.scenario
            floors = {a.id: 0 for a in self.agents if a.budget is not None}
            self.ledger.create_run(name=meta.name, game=GAME, mechanism=meta.mechanism, seed=meta.seed,
                                   scenario=self.scenario.model_dump(mode="json"), agent_ids=self.agent_ids,
                                   extra_accounts=(PROVIDER,), run_id=run_id, floors=floors)
            return
        if run.status == "completed":
            raise MbiError(f"run {run_id} is already completed: start a new thread for new tasks")

    def _wallet(self, run_id: str, ledger_round: int, agent: Agent) -> Wallet:
        key = (run_id, ledger_round, agent.id)
        with self._lock:
            w = self._wallets.get(key)
            if w is None:
                available = None
                if agent.budget is not None:
                    available = self.ledger.available(run_id)[agent_account(agent.id)]
                    if ledger_round == 0:  # the grant is written with round 0
                        available += minor(agent.budget.grant)
                policy = agent.budget.on_exhausted if agent.budget else "stop"
                w = self._wallets[key] = Wallet(agent.id, available, policy)
            return w

    async def _awallet(self, run_id: str, ledger_round: int, agent: Agent) -> Wallet:
        if agent.budget is None or (run_id, ledger_round, agent.id) in self._wallets:
            return self._wallet(run_id, ledger_round, agent)  # no ledger read
        return await asyncio.to_thread(self._wallet, run_id, ledger_round, agent)

    # ---- nodes ----------------------------------------------------------------------
    async def _start(self, state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        conf = config.get("configurable", {})
        run_id = uuid.uuid5(RUN_NAMESPACE, f"{conf.get('thread_id')}|{conf.get('checkpoint_ns', '')}").hex
        tasks = [Task.model_validate(t if not isinstance(t, Task) else t.model_dump()) for t in state.get("tasks") or []]
        ids = [t.id for t in tasks]
        if len(set(ids)) != len(ids):
            raise MbiError(f"tasks: duplicate task ids in {ids}")
        await asyncio.to_thread(self._ensure_run, run_id)
        return {"run_id": run_id, "round": 0, "open_tasks": [t.model_dump(mode="json") for t in tasks],
                "results": [], "bids": None, "work": None, "verdicts": None}

    def _to_bids(self, state: dict[str, Any]):
        if not state.get("open_tasks") or state["round"] >= self.max_rounds:
            return "finish"
        view = {"tasks": state["open_tasks"], "round": state["round"], "run_id": state["run_id"]}
        return [Send("bid", {**view, "agent": a.id}) for a in self.agents]

    async def _bid(self, payload: dict[str, Any]) -> dict[str, Any]:
        agent = self.by_id[payload["agent"]]
        r, run_id = payload["round"], payload["run_id"]
        tasks = [Task.model_validate(t) for t in payload["tasks"]]
        wallet = await self._awallet(run_id, 2 * r, agent)
        max_bid = self.scenario.game.max_bid
        costs: dict[str, float | None] = {}
        rejected: dict[str, str] = {}

        async def one(task: Task) -> None:
            ctx = WorkContext(agent.id, r, wallet, step="bid", task_id=task.id)
            try:
                b = await agent.abid(task, ctx)
            except GraphBubbleUp:
                raise
            except BudgetExceeded as exc:
                costs[task.id], rejected[task.id] = None, f"budget exceeded: {exc}"
                return
            except Exception as exc:  # noqa: BLE001 - an agent's failure is its abstention, logged
                costs[task.id], rejected[task.id] = None, f"bid raised {type(exc).__name__}: {exc}"[:300]
                return
            if b is None:
                costs[task.id] = None
            elif isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not 0 <= b <= max_bid:
                costs[task.id], rejected[task.id] = None, f"bid {b!r} is not a number in [0, {max_bid:g}]"[:300]
            else:
                costs[task.id] = float(b)

        await asyncio.gather(*(one(t) for t in tasks))
        money = [wallet.of(t.id, "bid") for t in tasks]
        return {"bids": {agent.id: {"costs": costs, "rejected": rejected, **_merge_money(money)}}}

    def _money_rows(self, records: dict[str, dict[str, Any]]) -> tuple[list[EventRow], list[TransferRow]]:
        """Usage events and spend/top-up transfers of a round from the agents' wallet records."""
        calls, events, transfers = [], [], []
        for aid in self.agent_ids:
            rec = records.get(aid)
            if not rec:
                continue
            calls += [{**c, "agent": aid} for c in rec["calls"]]
            events += [EventRow("budget_exceeded", e, agent=aid) for e in rec["events"]]
            spent = sum(c["charged"] for c in rec["calls"])
            if spent:
                transfers.append(TransferRow(SPEND, agent_account(aid), PROVIDER, spent))
            if rec["topup"]:
                transfers.append(TransferRow(TOPUP, TREASURY, agent_account(aid), rec["topup"]))
        if calls:
            events.insert(0, EventRow("usage", {"calls": calls}))
        return events, transfers

    async def _award(self, state: dict[str, Any]) -> dict[str, Any]:
        r, run_id = state["round"], state["run_id"]
        tasks = [Task.model_validate(t) for t in state["open_tasks"]]
        bids = state.get("bids") or {}
        reports = np.full((len(self.agents), len(tasks)), np.inf)
        for i, aid in enumerate(self.agent_ids):
            for j, t in enumerate(tasks):
                c = (bids.get(aid) or {}).get("costs", {}).get(t.id)
                if c is not None:
                    reports[i, j] = c
        values = np.array([t.value for t in tasks], np.float64)
        out = vcg_outcome(reports, values, self.capacities, self.scenario.scenario.mechanism)
        assignment = {t.id: (self.agent_ids[a] if a >= 0 else None) for t, a in zip(tasks, out.assignment.tolist())}
        events = [
            EventRow("tasks", {"ids": [t.id for t in tasks], "values": values.tolist(),
                               "tasks": [t.model_dump(mode="json") for t in tasks]}),
            EventRow("reports", {"costs": encode_costs(reports)}),
            EventRow("outcome", {"assignment": assignment, "reported_welfare": out.reported_welfare}),
            EventRow("payments", {"t": out.payments.tolist()}),
        ]
        events += [EventRow("bid_rejected", {"reasons": bids[a]["rejected"]}, agent=a)
                   for a in self.agent_ids if (bids.get(a) or {}).get("rejected")]
        money_events, transfers = self._money_rows(bids)
        if r == 0:
            transfers = [TransferRow(GRANT, TREASURY, agent_account(a.id), minor(a.budget.grant))
                         for a in self.agents if a.budget is not None and a.budget.grant > 0] + transfers
        pending = payment_transfers(self.agent_ids, out.payments, ESCROW)
        await asyncio.to_thread(self.ledger.write_round, run_id, 2 * r, events + money_events, transfers,
                                pending=pending)
        return {"award": {"assignment": assignment, "t": out.payments.tolist()}}

    def _to_work(self, state: dict[str, Any]):
        assignment = state["award"]["assignment"]
        tasks = {t["id"]: t for t in state["open_tasks"]}
        sends = [Send("work", {"task": tasks[tid], "agent": a, "round": state["round"], "run_id": state["run_id"]})
                 for tid, a in assignment.items() if a is not None]
        return sends or "settle"

    async def _work(self, payload: dict[str, Any]) -> dict[str, Any]:
        agent = self.by_id[payload["agent"]]
        r, run_id = payload["round"], payload["run_id"]
        task = Task.model_validate(payload["task"])
        wallet = await self._awallet(run_id, 2 * r + 1, agent)
        ctx = WorkContext(agent.id, r, wallet, step="work", task_id=task.id)
        output, error = None, None
        try:
            output = _jsonable(await agent.awork(task, ctx))
        except GraphBubbleUp:
            raise
        except BudgetExceeded as exc:
            error = f"budget exceeded: {exc}"
        except Exception as exc:  # noqa: BLE001 - a failed work is a rejected delivery, logged
            error = f"work raised {type(exc).__name__}: {exc}"[:500]
        return {"work": {task.id: {"agent": agent.id, "output": output, "error": error, **wallet.of(task.id, "work")}}}

    def _to_verify(self, state: dict[str, Any]):
        tasks = {t["id"]: t for t in state["open_tasks"]}
        sends = [Send("verify", {"task": tasks[tid], **w}) for tid, w in sorted((state.get("work") or {}).items())]
        return sends or "settle"

    async def _verify(self, payload: dict[str, Any]) -> dict[str, Any]:
        task = Task.model_validate(payload["task"])
        if payload.get("error"):
            verdict = {"accepted": False, "reason": payload["error"]}
        else:
            try:
                v = await run_verifier(self.verifier, task, payload["output"], payload["agent"])
                verdict = v.model_dump()
            except GraphBubbleUp:
                raise
            except Exception as exc:  # noqa: BLE001 - a verifier that fails rejects, with the reason logged
                verdict = {"accepted": False, "reason": f"verifier raised {type(exc).__name__}: {exc}"[:500]}
        return {"verdicts": {task.id: verdict}}

    async def _settle(self, state: dict[str, Any]) -> dict[str, Any]:
        r, run_id = state["round"], state["run_id"]
        award, work, verdicts = state["award"], state.get("work") or {}, state.get("verdicts") or {}
        items = []
        for tid in sorted(work):
            w, v = work[tid], verdicts.get(tid, {"accepted": False, "reason": "not verified"})
            out = w["output"]
            if isinstance(out, str) and len(out) > OUTPUT_CHARS:
                out = out[:OUTPUT_CHARS] + f"...[truncated {len(out) - OUTPUT_CHARS} chars]"
            items.append({"task": tid, "agent": w["agent"], "accepted": bool(v["accepted"]), "reason": v["reason"],
                          "output": out, "error": w["error"]})
        accepted = {i["task"]: i["accepted"] for i in items}
        resolutions = []
        for aid, m in zip(self.agent_ids, to_minor_units(award["t"]).tolist()):
            if m >= 0:
                continue
            won = [t for t, a in award["assignment"].items() if a == aid]
            ok = bool(won) and all(accepted.get(t, False) for t in won)
            pid = transfer_id(run_id, 2 * r, ESCROW, TREASURY, agent_account(aid))
            resolutions.append(Resolution(pid, "posted" if ok else "voided"))
        records: dict[str, dict[str, Any]] = {}
        for tid in sorted(work):
            w = work[tid]
            records[w["agent"]] = _merge_money([records.get(w["agent"], {}), w])
        money_events, transfers = self._money_rows(records)
        events = [EventRow("deliveries", {"items": items})] + money_events
        await asyncio.to_thread(self.ledger.write_round, run_id, 2 * r + 1, events, transfers,
                                resolutions=resolutions)
        results = list(state.get("results") or []) + [{"round": r, **i} for i in items if i["accepted"]]
        still_open = [t for t in state["open_tasks"] if not accepted.get(t["id"], False)]
        return {"round": r + 1, "open_tasks": still_open, "results": results,
                "bids": None, "work": None, "verdicts": None}

    async def _finish(self, state: dict[str, Any]) -> dict[str, Any]:
        run_id = state["run_id"]

        def close() -> dict[str, Any]:
            self.ledger.finish_run(run_id, "completed")
            return self.summary(run_id)

        summary = await asyncio.to_thread(close)
        with self._lock:
            for key in [k for k in self._wallets if k[0] == run_id]:
                del self._wallets[key]
        await self._close_agents()
        return {"summary": summary, "results": state.get("results") or []}

    async def _close_agents(self) -> None:
        """Let the agents release what they hold on this event loop (``Agent.close``: an LLM
        agent's connections); a failure to close is no failure of the run."""
        await asyncio.gather(*(a.close() for a in self.agents if a.close is not None), return_exceptions=True)

    # ---- the graph ------------------------------------------------------------------
    def graph(self, checkpointer: Any = None):
        """The market as a compiled LangGraph graph (input ``tasks``, output ``results``,
        ``run_id``, ``summary``). Without a checkpointer, inside a parent graph, it uses
        the parent's."""
        g = StateGraph(TeamState, input_schema=TeamInput, output_schema=TeamOutput)
        for name, fn in (("start", self._start), ("bid", self._bid), ("award", self._award), ("work", self._work),
                         ("collect", _collect), ("verify", self._verify), ("settle", self._settle),
                         ("finish", self._finish)):
            g.add_node(name, _node(fn))
        g.add_edge(START, "start")
        g.add_conditional_edges("start", self._to_bids, ["bid", "finish"])
        g.add_edge("bid", "award")
        g.add_conditional_edges("award", self._to_work, ["work", "settle"])
        g.add_edge("work", "collect")
        g.add_conditional_edges("collect", self._to_verify, ["verify", "settle"])
        g.add_edge("verify", "settle")
        g.add_conditional_edges("settle", self._to_bids, ["bid", "finish"])
        g.add_edge("finish", END)
        return g.compile(checkpointer=checkpointer, name="task_market")

    def as_node(self):
        """The market as a subgraph node of your ``StateGraph`` (reads ``tasks``; writes
        ``results``, ``run_id``, ``summary``): ``builder.add_node("market", market.as_node())``.
        It checkpoints with the parent's checkpointer under the parent's thread id."""
        return self.graph()

    # ---- running ----------------------------------------------------------------------
    def _config(self, thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": NODES_PER_ROUND * self.max_rounds + 10}

    async def arun(self, tasks: Iterable[Task | dict] | None = None, *, thread_id: str | None = None,
                   checkpointer: Any = None, resume: Any = None) -> TeamResult:
        """Run the market on ``tasks`` (async; safe inside any running event loop).

        ``checkpointer``: a LangGraph async-capable saver (default: in memory, kept by the
        market). Continue an interrupted or crashed run with the same ``thread_id`` and
        ``resume=`` the interrupt's answer (``resume=None`` and no tasks: just continue).
        """
        if checkpointer is None:
            if self._memory is None:
                from langgraph.checkpoint.memory import InMemorySaver

                self._memory = InMemorySaver()
            checkpointer = self._memory
        graph = self.graph(checkpointer)
        thread_id = thread_id or uuid.uuid4().hex
        config = self._config(thread_id)
        if resume is not None:
            inp: Any = Command(resume=resume)
        elif tasks is None:
            inp = None  # continue from the newest checkpoint (after a crash)
        else:
            inp = {"tasks": [t.model_dump(mode="json") if isinstance(t, Task) else t for t in tasks]}
        try:
            out = await graph.ainvoke(inp, config, durability="sync")
        finally:  # the run ended, paused at an interrupt or failed: its agents' connections go
            await self._close_agents()
        state = (await graph.aget_state(config)).values
        run_id = out.get("run_id") or state.get("run_id", "")
        interrupts = list(out.get("__interrupt__", []))
        return TeamResult(run_id=run_id, thread_id=thread_id, results=out.get("results") or state.get("results") or [],
                          summary=out.get("summary") or {}, ledger_url=self.ledger.url, interrupts=interrupts)

    def run(self, tasks: Iterable[Task | dict] | None = None, **kw: Any) -> TeamResult:
        """Synchronous :meth:`arun`. Inside a running event loop (Jupyter, an async server)
        it runs on a worker thread with its own loop, never ``asyncio.run`` in the caller's."""
        return run_sync(lambda: self.arun(tasks, **kw))

    # ---- reading back ---------------------------------------------------------------
    def summary(self, run_id: str) -> dict[str, Any]:
        """Per agent: won, accepted, payment (posted escrow), spend, utility = payment - spend,
        balance; the deliveries (from the ledger alone)."""
        return self.market.team_summary(self.ledger.read_rounds(run_id))

    def audit(self, run_id: str):
        from mbiagents.verify.audit import audit_run

        return audit_run(self.ledger, run_id)


def _merge_money(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"calls": [c for r in records for c in r.get("calls", [])],
            "events": [e for r in records for e in r.get("events", [])],
            "topup": sum(r.get("topup", 0) for r in records)}


async def _collect(state: dict[str, Any]) -> dict[str, Any]:
    """Join of the work fan-out (so the verify fan-out is emitted once)."""
    return {}


def _node(afn):
    """A node usable from ``invoke`` and ``ainvoke``: the coroutine runs on the caller's loop
    (async) or, for a sync parent graph, on a fresh loop of this worker thread."""
    import inspect

    takes_config = "config" in inspect.signature(afn).parameters

    def sync(inp, config: RunnableConfig):
        coro = afn(inp, config) if takes_config else afn(inp)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        coro.close()
        raise MbiError("a TaskMarket node was invoked synchronously inside a running event loop: use ainvoke")

    async def anode(inp, config: RunnableConfig):
        return await (afn(inp, config) if takes_config else afn(inp))

    return RunnableLambda(sync, afunc=anode, name=afn.__name__.strip("_"))
