"""``mbi report``: PNG plots and one self-contained ``index.html`` for a run, from the ledger alone.

``build_report(ledger, run_id, out)`` reads the run (no re-run), audits it, asks the run's
market for its per-round series (``Market.report_data``), draws the plots
(``mbiagents.report.plots``) and renders ``mbiagents/templates/report.html.j2`` with every
image inlined as a ``data:`` URI, so the page needs no network and no other file. The PNGs
and ``report.json`` (the series behind the plots) are written beside it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbiagents.errors import MbiError
from mbiagents.ledger.store import Ledger
from mbiagents.ledger.outfiles import check_outputs, database_files
from mbiagents.report.data import ReportData, collect

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass
class ReportResult:
    run_id: str
    out: Path
    index: Path
    files: list[str]
    audit_ok: bool

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "out": str(self.out), "index": str(self.index), "files": self.files,
                "audit_ok": self.audit_ok}


#: every file a report may write into its folder
REPORT_FILES = ("welfare.png", "actions.png", "incentives.png", "payments.png", "budget.png", "tasks.png", "llm.png",
                "report.json", "index.html")


def prepare_out_dir(out: str | os.PathLike, *, force: bool = False, protected: set[Path] | None = None) -> Path:
    """Create ``out`` if needed and prove it writable; ``MbiError`` (one line) otherwise.

    A report file already there is written over only with ``force``; a database file in
    ``protected`` (the ledger's) never (``mbiagents.ledger.outfiles.check_outputs``).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise MbiError(f"--out {path}: exists and is not a folder")
    if path.is_dir():
        check_outputs([path / f for f in REPORT_FILES], force=force, protected=protected or set())
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".mbi-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MbiError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def build_report(ledger: Ledger, run_id: str | None, out: str | os.PathLike, *, force: bool = False) -> ReportResult:
    """Write the report of ``run_id`` (default: the latest run) into the folder ``out``.

    Existing report files are written over only with ``force``; the ledger's own files never.
    """
    path = prepare_out_dir(out, force=force, protected=database_files(ledger.engine))
    data = collect(ledger, run_id)
    from mbiagents.report.plots import draw_all, plotted_agents

    try:
        plots = draw_all(data, path)
        images = {p.file: "data:image/png;base64," + base64.b64encode((path / p.file).read_bytes()).decode()
                  for p in plots}
        (path / "report.json").write_text(json.dumps(_jsonable(report_json(data)), indent=1, allow_nan=False))
        html = render_html(data, plots, images, plotted_agents(data)[1])
        index = path / "index.html"
        index.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise MbiError(f"--out {path}: cannot write the report ({exc.strerror or exc})") from None
    files = [p.file for p in plots] + ["report.json", "index.html"]
    return ReportResult(data.run["id"], path, index, files, data.audit.ok)


def agent_rows(data: ReportData) -> list[dict[str, Any]]:
    """The summary table: one row per agent (final action, totals, LLM usage)."""
    actions = data.series.get("actions") or {}
    util = data.utility()
    rows = []
    for a in data.agent_ids:
        row: dict[str, Any] = {"agent": a}
        if a in actions:
            row["final action"] = actions[a][-1]
        row["total paid"] = float(np.sum(data.payments[a]))
        if util is not None:
            row["total utility"] = float(np.nansum(util[a]))
        u = data.llm.get(a)
        if u is not None:
            row["tokens"] = u.tokens
            row["model cost"] = u.cost
            row["fallbacks"] = u.fallbacks
            row["retries"] = u.retries
        rows.append(row)
    return rows


def headline(data: ReportData) -> list[tuple[str, str]]:
    s = data.series
    out = [("rounds", str(data.n_rounds))]
    if "welfare" in s:
        w = s["welfare"][-1]
        out.append(("final welfare", _fmt(w)))
        if "optimal_welfare" in s:
            w_star = s["optimal_welfare"][-1]
            out.append(("optimum", _fmt(w_star)))
            if w_star:
                out.append(("relative gap", f"{(w_star - w) / abs(w_star):.3g}"))
    collected = float(np.sum(data.collected))
    out.append(("payments collected (total)", _fmt(collected)))
    if "operator_cost" in s:
        cost = float(np.nansum(s["operator_cost"]))
        out.append(("operator cost (total)", _fmt(cost)))
        out.append(("surplus (total)", _fmt(collected - cost)))
    return out


def render_html(data: ReportData, plots, images: dict[str, str], subset_note: str) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]))
    env.filters["fmt"] = _fmt
    rows = agent_rows(data)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return env.get_template("report.html.j2").render(
        run=data.run, audit=data.audit, plots=plots, images=images, rows=rows, columns=columns,
        headline=headline(data), subset_note=subset_note, llm=data.llm)


def report_json(data: ReportData) -> dict[str, Any]:
    return {"run": data.run, "agents": data.agent_ids, "rounds": data.rounds, "series": data.series,
            "payments": data.payments, "collected": data.collected, "audit": data.audit.as_json(),
            "llm": {a: {k: v for k, v in vars(u).items()} for a, u in data.llm.items()}}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


__all__ = ["build_report", "prepare_out_dir", "ReportResult", "ReportData", "collect"]
