"""The ``mbi`` command.

Every subcommand exits 0 on success; bad input prints one line ``error: ...`` on stderr
and exits 2 (nothing written); a failed audit exits 1. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mbiagents.errors import MbiError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Coordinate agent teams with market-based incentives; audit and replay their ledgers.")
db_app = typer.Typer(no_args_is_help=True, help="Ledger database schema (Alembic).")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

LedgerOpt = Annotated[Optional[str], typer.Option(
    "--ledger", envvar="MBI_LEDGER",
    help="SQLAlchemy URL of the ledger [default: sqlite:///mbi-ledger.db; env MBI_LEDGER]. "
         "PostgreSQL: postgresql+psycopg://user@host/db")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario TOML file (see examples/).")],
    rounds: Annotated[Optional[int], typer.Option("--rounds", min=1, help="Round limit (default: the scenario's).")] = None,
    ledger: LedgerOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the scenario's seed.")] = None,
    llm: Annotated[Optional[str], typer.Option(
        "--llm", help="Model backend of LLM agents: 'local' (embedded model, offline; needs the "
                      "'local' extra), 'openai' (OPENAI_API_KEY), or an OpenAI-compatible base URL "
                      "(vLLM, Ollama, llama.cpp server). Default: the scenario's [llm] table, else local.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a team through rounds of a mechanism and settle every payment in the ledger."""
    from mbiagents.runner import run_scenario
    from mbiagents.scenario import load_scenario

    try:
        sc = load_scenario(scenario)
        if seed is not None:
            sc = sc.model_copy(update={"scenario": sc.scenario.model_copy(update={"seed": seed})})
        max_rounds = rounds or sc.scenario.rounds
        show = not as_json and err.is_terminal
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True) as bar:
                task = bar.add_task(sc.scenario.name, total=max_rounds, info="")

                def on_round(i: int, m: dict[str, float]) -> None:
                    info = "  ".join(f"{k}={v:.6g}" for k, v in m.items())
                    bar.update(task, completed=i + 1, info=info)

                result = run_scenario(sc, ledger_url=ledger, rounds=rounds, on_round=on_round, llm=llm)
        else:
            result = run_scenario(sc, ledger_url=ledger, rounds=rounds, llm=llm)
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(result.as_json())
        return
    _print_run_summary(sc.scenario.name, result)


def _print_run_summary(name: str, result) -> None:
    s = result.summary
    table = Table(title=f"{name}: {result.rounds} rounds, {'converged' if result.converged else 'round limit reached'}")
    table.add_column("agent")
    cols = [k for k in ("action", "incentive", "payment", "utility", "total_paid") if k in next(iter(s["agents"].values()))]
    for c in cols:
        table.add_column(c, justify="right")
    for aid, row in s["agents"].items():
        table.add_row(aid, *(f"{row[c]:.6f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    out.print(table)
    out.print(f"welfare {s['welfare']:.9g}   optimum {s['optimal_welfare']:.9g}   gap {s['welfare_gap']:.3g}")
    reg = s.get("regret")  # principal runs: welfare regret against the first-best
    if reg:
        out.print(f"regret R(T={reg['T']}) {reg['total']:.4g} (exponent in run {reg['exponent_in_run']:.2f})   "
                  f"no incentives {reg['no_incentives_total']:.4g} (exponent {reg['no_incentives_exponent_in_run']:.2f})"
                  f"  ({reg['note']})")
    b = s.get("budget")
    if b:
        out.print(f"budget: payments {b['payments']:.6f}  operator cost {b['operator_cost']:.6f}  "
                  f"surplus {b['surplus']:.6f}")
    out.print(f"run {result.run_id}  ledger {result.ledger_url}")
    out.print(f"audit it: mbi audit --run {result.run_id}" + (f" --ledger {result.ledger_url}"
                                                              if "MBI_LEDGER" not in os.environ else ""))


@app.command()
def audit(
    ledger: LedgerOpt = None,
    run_id: Annotated[Optional[str], typer.Option("--run", help="Run id (default: the latest run).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a run: double entry, hash chain, idempotency, completeness, every payment recomputed."""
    from mbiagents.ledger.audit import audit_run
    from mbiagents.ledger.schema import open_ledger

    try:
        led = open_ledger(ledger, create=False)
        report = audit_run(led, run_id)
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(report.as_json())
    else:
        table = Table(title=f"audit of run {report.run_id}: {report.rounds} rounds, {report.transfers} transfers")
        table.add_column("check")
        table.add_column("result")
        table.add_column("first failure")
        for c in report.checks:
            table.add_row(c.name, "[green]pass[/]" if c.ok else f"[red]FAIL[/] ({c.failures})", c.detail)
        out.print(table)
    raise typer.Exit(0 if report.ok else 1)


@db_app.command("upgrade")
def db_upgrade(ledger: LedgerOpt = None) -> None:
    """Bring the ledger's schema to the newest revision (alembic upgrade head)."""
    from mbiagents.ledger.schema import head_revision, upgrade
    from mbiagents.ledger.store import DEFAULT_LEDGER_URL, make_engine

    try:
        engine = make_engine(ledger or DEFAULT_LEDGER_URL)
        upgrade(engine)
        engine.dispose()
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - surface driver errors as one line
        _fail(f"cannot upgrade ledger: {str(exc).splitlines()[0]}")
    out.print(f"ledger at schema {head_revision()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
