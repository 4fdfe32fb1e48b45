"""The report's PNG plots (matplotlib, Agg backend), each drawn from ``ReportData`` only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from mbiagents.report.data import ReportData  # noqa: E402

MAX_AGENTS_PLOTTED = 8
DPI = 100


@dataclass
class Plot:
    file: str  # PNG file name in the report folder
    title: str
    caption: str


def plotted_agents(data: ReportData, limit: int = MAX_AGENTS_PLOTTED) -> tuple[list[str], str]:
    """The agents drawn in per-agent plots and a note saying which, when not all of them.

    With more than ``limit`` agents: the ``limit`` with the largest total payments in
    absolute value (ties by agent order), in agent order.
    """
    ids = data.agent_ids
    if len(ids) <= limit:
        return list(ids), ""
    total = np.array([np.abs(np.sum(data.payments[a])) for a in ids])
    keep = sorted(np.argsort(-total, kind="stable")[:limit].tolist())
    return [ids[i] for i in keep], (f"showing {limit} of {len(ids)} agents: those with the largest total "
                                    f"payments (absolute value)")


def _rounds(data: ReportData) -> np.ndarray:
    return np.asarray(data.rounds)


def _agent_lines(ax, data: ReportData, series: dict[str, list[float]], agents: list[str], ylabel: str, title: str):
    r = _rounds(data)
    for a in agents:
        ax.plot(r, series[a], label=a, linewidth=1.4)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(agents) > 4 else 1, loc="best")


def _save(fig, out: Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)


def welfare_plot(data: ReportData, out: Path) -> Plot | None:
    s = data.series
    if "welfare" not in s:
        return None
    r = _rounds(data)
    w = np.asarray(s["welfare"], float)
    gap = data.welfare_gap()
    fig, axes = plt.subplots(1, 2 if gap is not None else 1, figsize=(11 if gap is not None else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(r, w, label="welfare W (true types)", color="C0", linewidth=1.6)
    if "optimal_welfare" in s:
        ax.plot(r, s["optimal_welfare"], label="optimum W*", color="k", linestyle="--", linewidth=1.2)
    ax.set_xlabel("round")
    ax.set_ylabel("welfare (units)")
    ax.set_title("Welfare per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    note = ""
    if gap is not None:
        g = np.asarray(gap, float)
        ax2 = axes[0, 1]
        pos = g > 0
        if pos.any():
            ax2.semilogy(r[pos], g[pos], color="C3", linewidth=1.4, marker="." if pos.sum() < 40 else None)
        else:
            ax2.text(0.5, 0.5, "W = W* in every round", ha="center", va="center", transform=ax2.transAxes)
        if (~pos & np.isfinite(g)).any():
            note = f" Rounds at or above the optimum ({int((~pos & np.isfinite(g)).sum())}) have no point on the log axis."
        ax2.set_xlabel("round")
        ax2.set_ylabel("W* - W (units, log scale)")
        ax2.set_title("Gap to the optimum")
        ax2.grid(alpha=0.3, which="both")
    _save(fig, out, "welfare.png")
    return Plot("welfare.png", "Welfare against the optimum",
                "True welfare of each round's actions (agents' types from the run's scenario) and the "
                "optimum; right: the gap W* - W on a log scale." + note)


def actions_plot(data: ReportData, out: Path) -> Plot | None:
    s = data.series
    if "actions" not in s and "signals" not in s:
        return None
    agents, note = plotted_agents(data)
    panels = [k for k in ("actions", "signals") if k in s]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, k in zip(axes[0], panels):
        if k == "actions":
            _agent_lines(ax, data, s[k], agents, "action (units of usage)", "Action per agent")
        else:
            label = s.get("signal_label", "signal")
            _agent_lines(ax, data, s[k], agents, f"{label} (units per unit of action)", "Signal / price per agent")
    _save(fig, out, "actions.png")
    return Plot("actions.png", "Actions and signals",
                "Each agent's action per round and the signal (price) the mechanism sent it. " + note)


def payments_plot(data: ReportData, out: Path) -> Plot:
    agents, note = plotted_agents(data)
    cum_u = data.cumulative_utility()
    fig, axes = plt.subplots(1, 2 if cum_u else 1, figsize=(11 if cum_u else 6, 4), squeeze=False)
    _agent_lines(axes[0, 0], data, data.cumulative_payments(), agents, "cumulative payment (units)",
                 "Cumulative payments (paid by agent)")
    if cum_u:
        _agent_lines(axes[0, 1], data, cum_u, agents, "cumulative utility (units)", "Cumulative utility (value - payment)")
    _save(fig, out, "payments.png")
    return Plot("payments.png", "Payments and utility",
                "Cumulative payments each agent settled in the ledger (positive: the agent paid)"
                + ("; right: cumulative utility, true value of its action minus its payment." if cum_u else ".")
                + (" " + note if note else ""))


def budget_plot(data: ReportData, out: Path) -> Plot:
    r = _rounds(data)
    collected = np.asarray(data.collected)
    cost = data.series.get("operator_cost")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(r, collected, label="payments collected", color="C2", linewidth=1.5)
    if cost is not None:
        cost = np.asarray(cost, float)
        ax.plot(r, cost, label="operator cost", color="C1", linewidth=1.5, linestyle="--")
        ax.plot(r, collected - cost, label="surplus (collected - cost)", color="C4", linewidth=1.2)
    ax.axhline(0, color="k", linewidth=0.6)
    ax.set_xlabel("round")
    ax.set_ylabel("units per round")
    ax.set_title("Budget balance per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    _save(fig, out, "budget.png")
    return Plot("budget.png", "Budget balance",
                "Net payments collected from the agents each round (from the ledger's transfers)"
                + (" against the operator's cost; a surplus at or above zero means the round paid for itself."
                   if cost is not None else "."))


def tasks_plot(data: ReportData, out: Path) -> Plot | None:
    s = data.series
    assign = s.get("assignment")
    if not assign or not any(assign):
        return None
    tasks: list[str] = []
    for m in assign:
        tasks += [t for t in m if t not in tasks]
    tasks = tasks[:40]
    idx = {a: i for i, a in enumerate(data.agent_ids)}
    grid = np.full((len(tasks), data.n_rounds), np.nan)
    for r, m in enumerate(assign):
        for j, t in enumerate(tasks):
            if t in m:
                grid[j, r] = -1 if m[t] is None else idx.get(m[t], -1)
    used = sorted({int(v) for v in grid[np.isfinite(grid)].ravel() if v >= 0})
    palette, size = ("tab10", 10) if len(data.agent_ids) <= 10 else ("tab20", 20)
    colors = ["#dddddd"] + [plt.get_cmap(palette)(k % size) for k in range(len(data.agent_ids))]
    cmap = ListedColormap(colors)
    costs = _cost_pairs(data)
    fig, axes = plt.subplots(1, 2 if costs else 1, figsize=(12 if costs else 7, max(3.5, 0.3 * len(tasks) + 1.5)),
                             squeeze=False)
    ax = axes[0, 0]
    masked = np.ma.masked_invalid(grid + 1)
    ax.imshow(masked, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=len(colors) - 1,
              extent=(data.rounds[0] - 0.5, data.rounds[-1] + 0.5, len(tasks) - 0.5, -0.5))
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    ax.set_xlabel("round")
    ax.set_ylabel("task")
    ax.set_title("Who got which task")
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[k + 1], label=data.agent_ids[k]) for k in used[:12]]
    handles.append(Patch(color=colors[0], label="not assigned"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if costs:
        ax2 = axes[0, 1]
        rep = np.array([c[0] for c in costs])
        true = np.array([c[1] for c in costs])
        ax2.scatter(true, rep, s=12, alpha=0.6)
        lo, hi = float(min(rep.min(), true.min())), float(max(rep.max(), true.max()))
        ax2.plot([lo, hi], [lo, hi], color="k", linestyle="--", linewidth=1, label="truthful")
        ax2.set_xlabel("true cost (units)")
        ax2.set_ylabel("reported cost (units)")
        ax2.set_title("Reported vs true cost (assigned tasks)")
        ax2.grid(alpha=0.3)
        ax2.legend()
    _save(fig, out, "tasks.png")
    more = "" if len(tasks) == len({t for m in assign for t in m}) else " (first 40 tasks shown)"
    return Plot("tasks.png", "Task assignment",
                f"Agent that won each task per round{more}; grey: logged but not assigned."
                + (" Right: each assigned task's reported cost against its true cost." if costs else ""))


def _cost_pairs(data: ReportData) -> list[tuple[float, float]]:
    s = data.series
    rep, true, assign = s.get("reported_costs"), s.get("true_costs"), s.get("assignment")
    if not rep or not true or not assign:
        return []
    out = []
    for r, m in enumerate(assign):
        for task, agent in m.items():
            if agent is None:
                continue
            rc = (rep[r].get(agent) or {}).get(task)
            tc = (true[r].get(agent) or {}).get(task) if r < len(true) else None
            if rc is not None and tc is not None:
                out.append((float(rc), float(tc)))
    return out


def incentives_plot(data: ReportData, out: Path) -> Plot | None:
    s = data.series
    inc, sc = s.get("incentives"), s.get("social_cost")
    if not inc and sc is None:
        return None
    r = _rounds(data)
    panels = int(bool(inc)) + int(sc is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    k = 0
    note = ""
    if inc:
        names = list(inc)[:MAX_AGENTS_PLOTTED]
        if len(inc) > len(names):
            note = f" Showing {len(names)} of {len(inc)} incentive components."
        ax = axes[0, k]
        for name in names:
            ax.plot(r, inc[name], label=name, linewidth=1.4)
        ax.set_xlabel("round")
        ax.set_ylabel("incentive (units per unit of action)")
        ax.set_title("Incentive trajectory")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        k += 1
    if sc is not None:
        ax = axes[0, k]
        ax.plot(r, sc, color="C3", linewidth=1.5)
        ax.set_xlabel("round")
        ax.set_ylabel("social cost (units)")
        ax.set_title("Social cost")
        ax.grid(alpha=0.3)
    _save(fig, out, "incentives.png")
    return Plot("incentives.png", "Incentives and social cost",
                "The incentives the mechanism set each round and the social cost they led to." + note)


def llm_plot(data: ReportData, out: Path) -> Plot | None:
    if not data.llm:
        return None
    agents = list(data.llm)[:MAX_AGENTS_PLOTTED * 2]
    u = [data.llm[a] for a in agents]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    y = np.arange(len(agents))
    ax = axes[0]
    ax.barh(y, [x.prompt_tokens for x in u], label="prompt", color="C0")
    ax.barh(y, [x.completion_tokens for x in u], left=[x.prompt_tokens for x in u], label="completion", color="C1")
    ax.set_yticks(y, agents)
    ax.invert_yaxis()
    ax.set_xlabel("tokens (run total)")
    ax.set_title("Token use per LLM agent")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.barh(y, [x.cost for x in u], color="C2")
    ax.set_yticks(y, agents)
    ax.invert_yaxis()
    ax.set_xlabel("model cost (currency of [llm] price_per_1k_tokens)")
    ax.set_title("Model cost per LLM agent")
    ax = axes[2]
    r = _rounds(data)
    fb = np.sum([x.fallbacks_per_round for x in data.llm.values()], axis=0)
    rt = np.sum([x.retries_per_round for x in data.llm.values()], axis=0)
    w = 0.4
    ax.bar(r - w / 2, fb, width=w, label="fallbacks", color="C3")
    ax.bar(r + w / 2, rt, width=w, label="retries", color="C7")
    ax.set_xlabel("round")
    ax.set_ylabel("answers / calls (all LLM agents)")
    ax.set_title("Fallbacks and retries per round")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    _save(fig, out, "llm.png")
    more = f" Showing {len(agents)} of {len(data.llm)} LLM agents." if len(agents) < len(data.llm) else ""
    return Plot("llm.png", "LLM agents",
                "Tokens and model cost per LLM agent over the run; fallbacks (answers replaced by the "
                "documented fallback) and retries (model calls beyond the first) per round." + more)


PLOTS: list[Callable[[ReportData, Path], Plot | None]] = [
    welfare_plot, actions_plot, payments_plot, budget_plot, tasks_plot, incentives_plot, llm_plot]


def draw_all(data: ReportData, out: Path) -> list[Plot]:
    return [p for p in (f(data, out) for f in PLOTS) if p is not None]
