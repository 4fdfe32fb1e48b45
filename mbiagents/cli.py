"""The ``mbi`` command.

Every subcommand exits 0 on success; bad input prints one line ``error: ...`` on stderr
and exits 2 (nothing written); a failed audit exits 1. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import heapq
import json
import os
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mbiagents.errors import MbiError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Coordinate agent teams with market-based incentives; audit and replay their ledgers.")
db_app = typer.Typer(no_args_is_help=True, help="Ledger database schema (Alembic).")
app.add_typer(db_app, name="db")
keys_app = typer.Typer(no_args_is_help=True, help="The Ed25519 key that signs run headers, round heads and run ends.")
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True)

LedgerOpt = Annotated[Optional[str], typer.Option(
    "--ledger", envvar="MBI_LEDGER",
    help="SQLAlchemy URL of the ledger [default: sqlite:///mbi-ledger.db; env MBI_LEDGER]. "
         "PostgreSQL: postgresql+psycopg://user@host/db")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Write over existing output files (never over the ledger's own database files).")]
RunOpt = Annotated[Optional[str], typer.Option("--run", help="Run id (default: the latest run).")]
WitnessOpt = Annotated[Optional[str], typer.Option(
    "--witness", metavar="FILE", help="Witness file (JSON lines of signed statements), kept outside the database.")]
PublicKeyOpt = Annotated[Optional[list[str]], typer.Option(
    "--public-key", metavar="HEX", help="Trust this Ed25519 public key (repeatable; the local signing key is "
                                        "trusted too).")]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, infinity) as ``null``: strict JSON always."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    """Strict JSON: a NaN or infinity prints as ``null``, never as ``NaN``."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


@app.command()
def run(
    scenario: Annotated[Optional[str], typer.Argument(help="Scenario TOML file (see examples/).")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", min=1, help="Round limit (default: the scenario's).")] = None,
    ledger: LedgerOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**63 - 1,
                                                help="Override the scenario's seed (0 to 2^63-1).")] = None,
    llm: Annotated[Optional[str], typer.Option(
        "--llm", help="Model backend of LLM agents: 'local' (embedded model, offline; needs the "
                      "'local' extra), 'openai' (OPENAI_API_KEY), or an OpenAI-compatible base URL "
                      "(vLLM, Ollama, llama.cpp server). Default: the scenario's [llm] table, else local.")] = None,
    report_dir: Annotated[Optional[str], typer.Option(
        "--report", help="After the run, write its report (PNG plots + index.html) into this folder.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="RUN_ID", help="Continue a crashed run from its checkpoint (same run id; "
                                           "no SCENARIO, --rounds or --seed).")] = None,
    force: ForceOpt = False,
    witness: WitnessOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a team through rounds of a mechanism and settle every payment in the ledger.

    With a signing key (`mbi keys init`) every round head is signed; --witness FILE also
    appends each signed head to FILE, for `mbi audit --witness FILE`."""
    from mbiagents.runner import resume_run, run_scenario
    from mbiagents.scenario import load_scenario

    if (scenario is None) == (resume is None):
        _fail("give either SCENARIO or --resume RUN_ID")
    if resume is not None and (rounds is not None or seed is not None):
        _fail("--resume continues a run as it was started: --rounds and --seed do not apply")
    try:
        if resume is not None:
            title, total = f"resume {resume}", None
            start = lambda on_round: resume_run(resume, ledger_url=ledger, on_round=on_round,  # noqa: E731
                                                witness=witness)
        else:
            sc = load_scenario(scenario)
            if seed is not None:
                sc = sc.model_copy(update={"scenario": sc.scenario.model_copy(update={"seed": seed})})
            title, total = sc.scenario.name, rounds or sc.scenario.rounds
            start = lambda on_round: run_scenario(sc, ledger_url=ledger, rounds=rounds, on_round=on_round,  # noqa: E731
                                                  llm=llm, witness=witness)
        if report_dir is not None:  # after the scenario is known good, before anything runs
            from mbiagents.report import prepare_out_dir

            prepare_out_dir(report_dir, force=force)
        if not as_json and err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True) as bar:
                task = bar.add_task(title, total=total, info="")

                def on_round(i: int, m: dict[str, float]) -> None:
                    info = "  ".join(f"{k}={v:.6g}" for k, v in m.items())
                    bar.update(task, completed=i + 1, info=info)

                result = start(on_round)
        else:
            result = start(None)
        written = _write_report(ledger, result.run_id, report_dir, force) if report_dir is not None else None
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json({**result.as_json(), **({"report": written.as_json()} if written else {})})
        return
    _print_run_summary(title, result)
    if written:
        out.print(f"report: {written.index}")


def _write_report(ledger_url: Optional[str], run_id: Optional[str], out_dir: str, force: bool = False):
    from mbiagents.ledger.schema import open_ledger
    from mbiagents.report import build_report

    led = open_ledger(ledger_url, create=False)
    try:
        return build_report(led, run_id, out_dir, force=force)
    finally:
        led.dispose()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    if isinstance(v, (list, tuple)):  # e.g. tasks done over the run: "fix-bug x3, triage"
        counts = dict.fromkeys(v, 0)
        for x in v:
            counts[x] += 1
        return ", ".join(f"{x} x{c}" if c > 1 else str(x) for x, c in counts.items()) or "-"
    return str(v)


def _id_column(table: Table, header: str, ids) -> None:
    """A column of ids shown whole on any terminal width (other columns wrap instead)."""
    table.add_column(header, no_wrap=True, min_width=max([len(header), *(len(str(i)) for i in ids)]))


def _print_table(table: Table) -> None:
    """Print a table; one narrower than its whole ids and numbers (an 80-column terminal)
    loses its borders first, then becomes one ``column: value`` line per cell."""
    from rich import box

    def words(c) -> int:  # the widest unbreakable text of a column (a no-wrap column's header is one)
        head = [len(str(c.header))] if c.no_wrap else list(map(len, str(c.header).split()))
        return max([*head, *(len(v) if c.no_wrap else len(w) for v in map(str, c.cells) for w in v.split())])

    need = sum(map(words, table.columns))
    if need + 3 * len(table.columns) + 1 > out.width:
        table.box, table.pad_edge, table.show_edge = box.SIMPLE_HEAD, False, False
    if need + 2 * len(table.columns) <= out.width:
        out.print(table)
        return
    heads = [str(c.header) for c in table.columns]
    if table.title:
        out.print(str(table.title), highlight=False)
    for cells in zip(*(list(c.cells) for c in table.columns)):
        out.print(f"{cells[0]}: " + "  ".join(f"{h} {v}" for h, v in zip(heads[1:], cells[1:]) if v != ""),
                  highlight=False, soft_wrap=True)


#: agents shown in ``mbi run``'s tables; a larger team prints these and a count (``--json`` has all)
SUMMARY_ROWS = 50


def _shown_agents(agents: dict) -> list:
    """The summary's ``(id, row)`` pairs, or for a team larger than ``SUMMARY_ROWS`` the
    ``SUMMARY_ROWS`` agents with the largest ``|total_paid|`` (ties in the summary's order)."""
    if len(agents) <= SUMMARY_ROWS:
        return list(agents.items())
    return heapq.nsmallest(SUMMARY_ROWS, agents.items(), key=lambda kv: -abs(kv[1].get("total_paid") or 0.0))


def _more_agents(agents: dict) -> None:
    if len(agents) > SUMMARY_ROWS:
        out.print(f"... and {len(agents) - SUMMARY_ROWS:,} more agents (shown: the {SUMMARY_ROWS} with the largest "
                  "total paid; all of them: mbi run --json, mbi export, mbi report)", highlight=False, soft_wrap=True)


def _print_run_summary(name: str, result) -> None:
    """The market's per-agent columns (``Market.summary_columns``) for at most
    ``SUMMARY_ROWS`` agents (``_shown_agents``), welfare, the last round's assignment where there is one, the
    budget, and the run id."""
    s = result.summary
    table = Table(title=f"{name}: {result.rounds} rounds, {'converged' if result.converged else 'round limit reached'}")
    _id_column(table, "agent", s["agents"])
    rows = s["agents"].values()
    cols = [k for k in (result.columns or ("action", "payment", "utility", "total_paid")) if any(k in r for r in rows)]
    for c in cols:  # ids stay whole; numbers fold rather than being cut; the tasks list wraps between ids
        if c == "tasks":
            table.add_column("tasks", min_width=max([5, *(len(t) + 1 for r in rows for t in r.get(c) or [])]))
        else:
            table.add_column(c.replace("_", " "), justify="right", no_wrap=True)
    for aid, row in _shown_agents(s["agents"]):
        table.add_row(aid, *(_cell(row.get(c)) for c in cols))
    _print_table(table)
    _more_agents(s["agents"])
    if any("llm" in r for r in rows):  # LLM agents: model use beside the mechanism's payments, own table
        use = Table(title="model use")
        _id_column(use, "agent", s["agents"])
        for c in ("model calls", "tokens", "model cost", "fallbacks"):
            use.add_column(c, justify="right", no_wrap=True)
        for aid, row in _shown_agents(s["agents"]):
            u = row.get("llm")
            use.add_row(aid, *([str(u["calls"]), str(u["prompt_tokens"] + u["completion_tokens"]), f"{u['cost']:.4f}",
                                str(u["fallbacks"])] if u else ["", "", "", ""]))
        _print_table(use)
        _more_agents(s["agents"])
    out.print(f"welfare {s['welfare']:.9g}   optimum {s['optimal_welfare']:.9g}   gap {s['welfare_gap']:.3g}")
    if "assignment" in s:
        out.print("assignment (last round): " + ", ".join(f"{t} -> {a or 'not done'}" for t, a in s["assignment"].items()))
    reg = s.get("regret")  # principal runs: welfare regret against the first-best
    if reg:
        slope = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        out.print(f"regret R(T={reg['T']}) {reg['total']:.4g} (exponent in run {slope(reg['exponent_in_run'])})   "
                  f"no incentives {reg['no_incentives_total']:.4g} "
                  f"(exponent {slope(reg['no_incentives_exponent_in_run'])})  ({reg['note']})")
    b = s.get("budget")
    if b:
        out.print("budget: " + "  ".join(f"{k.replace('_', ' ')} {v:.6f}" for k, v in b.items()))
    out.print(f"run {result.run_id}  ledger {result.ledger_url}", soft_wrap=True, highlight=False)
    if result.head:
        out.print(f"head {result.head}  (mbi audit --expect-head HASH catches a later truncation)",
                  soft_wrap=True, highlight=False)
    out.print(f"audit it: mbi audit --run {result.run_id}" + (f" --ledger {result.ledger_url}"
                                                              if "MBI_LEDGER" not in os.environ else ""),
              soft_wrap=True, highlight=False)


@app.command()
def audit(
    ledger: LedgerOpt = None,
    run_id: RunOpt = None,
    public_key: PublicKeyOpt = None,
    witness: WitnessOpt = None,
    expect_head: Annotated[Optional[str], typer.Option(
        "--expect-head", metavar="HASH", help="A round hash the run's chain must hold (the head `mbi run` printed).")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a run: double entry, hash chain, idempotency, completeness, every payment recomputed,
    signed heads; with --witness / --expect-head also truncation, replacement and deletion."""
    from mbiagents.ledger.schema import open_ledger
    from mbiagents.ledger.signing import read_witness
    from mbiagents.verify.audit import audit_run
    from mbiagents.verify.trust import TrustOptions

    try:
        if expect_head is not None and not _is_hash(expect_head):
            raise MbiError(f"--expect-head: {expect_head!r} is not a 64-digit hex round hash")
        trust = TrustOptions(trusted_keys=_trusted_keys(public_key),
                             witness=read_witness(witness) if witness is not None else None,
                             expect_head=expect_head)
        led = open_ledger(ledger, create=False)
        report = audit_run(led, run_id, trust)
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(report.as_json())
    else:
        table = Table(title=f"audit of run {report.run_id}: {report.rounds} rounds, {report.transfers} transfers")
        _id_column(table, "check", [c.name for c in report.checks])
        table.add_column("result", no_wrap=True)
        table.add_column("first failure")
        for c in report.checks:
            result = ("[green]pass[/]" if c.ok else f"[yellow]info[/] ({c.failures})" if c.informational
                      else f"[red]FAIL[/] ({c.failures})")  # informational checks never fail an audit
            table.add_row(c.name, result, c.detail)
        out.print(table)
    raise typer.Exit(0 if report.ok else 1)


def _is_hash(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def _trusted_keys(given: Optional[list[str]]) -> tuple[str, ...]:
    """``--public-key`` values and the locally configured signing key's public key."""
    from mbiagents.ledger.signing import load_signing_key, public_hex

    keys = []
    for k in given or []:
        if len(k) != 64 or not all(c in "0123456789abcdefABCDEF" for c in k):
            raise MbiError(f"--public-key: {k!r} is not a 64-digit hex Ed25519 public key")
        keys.append(k.lower())
    local = load_signing_key()
    if local is not None:
        keys.append(public_hex(local[0]))
    return tuple(dict.fromkeys(keys))


@keys_app.command("init")
def keys_init(
    path: Annotated[Optional[str], typer.Option("--path", help="Key file [default: $MBI_KEY_FILE or "
                                                               "~/.config/mbi/signing-key.pem].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the Ed25519 signing key (file mode 0600); refuses to overwrite one without --force."""
    from pathlib import Path

    from mbiagents.ledger.signing import init_key

    try:
        where, pub = init_key(Path(path) if path else None, force=force)
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json({"path": str(where), "public_key": pub})
    else:
        out.print(f"signing key {where}\npublic key {pub}", highlight=False, soft_wrap=True)


@keys_app.command("show")
def keys_show(as_json: JsonOpt = False) -> None:
    """Print the configured signing key's public key (give it to auditors: --public-key HEX)."""
    from mbiagents.ledger.signing import KEY_ENV, key_file, load_signing_key, public_hex

    try:
        loaded = load_signing_key()
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if loaded is None:
        _fail(f"no signing key: ${KEY_ENV} is unset and {key_file()} does not exist (mbi keys init)")
        return
    if as_json:
        _print_json({"source": loaded[1], "public_key": public_hex(loaded[0])})
    else:
        out.print(f"public key {public_hex(loaded[0])}  ({loaded[1]})", highlight=False, soft_wrap=True)


@app.command()
def prove(
    ledger: LedgerOpt = None,
    run_id: RunOpt = None,
    agent: Annotated[Optional[str], typer.Option("--agent", help="The agent whose payments to prove.")] = None,
    round_index: Annotated[Optional[int], typer.Option("--round", min=0, help="Only this round.")] = None,
    verify_file: Annotated[Optional[str], typer.Option(
        "--verify", metavar="PROOF.json", help="Check a proof instead (signatures and inclusion paths).")] = None,
    public_key: Annotated[Optional[str], typer.Option(
        "--public-key", metavar="HEX", help="With --verify: the operator's public key the heads must be signed by.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Merkle inclusion proofs of one agent's payments against the signed round heads.

    `mbi prove --run ID --agent A --json > proof.json`, then anyone holding proof.json and the
    operator's public key runs `mbi prove --verify proof.json --public-key HEX`."""
    from mbiagents.verify.proof import payment_proof, verify_payment_proof

    try:
        if verify_file is not None:
            if agent is not None or round_index is not None:
                raise MbiError("--verify checks a proof file: --agent and --round do not apply")
            from pathlib import Path

            try:
                doc = json.loads(Path(verify_file).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise MbiError(f"{verify_file}: no such proof file") from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise MbiError(f"{verify_file}: not a readable JSON proof: {exc}") from None
            check = verify_payment_proof(doc, public_key)
            if as_json:
                _print_json(check.as_json())
            else:
                out.print(("proof verified: " if check.ok else "proof FAILED: ") + check.detail,
                          highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(0 if check.ok else 1)
        if agent is None:
            raise MbiError("give --agent ID (or --verify PROOF.json)")
        from mbiagents.ledger.schema import open_ledger

        led = open_ledger(ledger, create=False)
        try:
            doc = payment_proof(led, run_id, agent, round_index)
        finally:
            led.dispose()
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(doc)
        return
    table = Table(title=f"payment proof of {agent} in run {doc['run_id']} "
                        f"({'signed by ' + doc['public_key'][:16] if doc['public_key'] else 'UNSIGNED'})")
    for c in ("round", "transfer", "amount", "leaf", "path length"):
        table.add_column(c, justify="right" if c != "transfer" else "left", no_wrap=True)
    for rd in doc["rounds"]:
        for t in rd["transfers"]:
            sign = 1 if t["credit"] == doc["account"] else -1
            table.add_row(str(rd["round"]), t["kind"], f"{sign * t['amount']}", f"{t['leaf_index']}/{rd['tree_size']}",
                          str(len(t["path"])))
    _print_table(table)
    out.print(f"received {doc['received_minor_units']} minor units; write it with --json and check it with "
              f"mbi prove --verify FILE --public-key HEX", highlight=False, soft_wrap=True)


@app.command()
def report(
    ledger: LedgerOpt = None,
    run_id: Annotated[Optional[str], typer.Option("--run", help="Run id (default: the latest run).")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the PNG plots and index.html (created if needed).")]
    = "mbi-report",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Plot a run from the ledger alone: welfare vs optimum, actions, payments, budget, LLM use, audit verdict."""
    try:
        written = _write_report(ledger, run_id, out_dir, force)
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(written.as_json())
        return
    verdict = "[green]pass[/]" if written.audit_ok else "[red]FAIL[/]"
    out.print(f"report of run {written.run_id} (audit {verdict}): {len(written.files)} files in {written.out}")
    out.print(f"open {written.index}")


@app.command()
def infer(
    ledger: LedgerOpt = None,
    run_id: Annotated[Optional[str], typer.Option("--run", help="Run id in the ledger (default: the latest run).")] = None,
    trajectories: Annotated[Optional[str], typer.Option(
        "--trajectories", help="Trajectory JSONL file to fit instead of a ledger run (format: README).")] = None,
    model: Annotated[str, typer.Option(
        "--model", help="Candidate mechanism: neural, congestion, public-goods, anonymous, tabular.")] = "neural",
    holdout: Annotated[float, typer.Option("--holdout", help="Fraction of episodes held out for the NLL.")] = 0.2,
    predict: Annotated[Optional[str], typer.Option(
        "--predict", help="Fit on all episodes and score the held-out NLL on this trajectory JSONL file.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="PRNG seed of the split and the initialisation.")] = 0,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs (default: per model).")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Learner step (default: the run's, else 0.25).")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="Learner inverse temperature (default: the run's, else 3).")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="Learner exploration (default: the run's, else 0.06).")] = None,
    save_trajectories: Annotated[Optional[str], typer.Option(
        "--save-trajectories", help="Also write the fitted trajectories to this JSONL file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Infer the incentives agents responded to (DIML): payoff differences per agent and action."""
    from mbiagents.infer import infer as run_infer
    from mbiagents.infer import learner_from_scenario
    from mbiagents.trajectories import read_jsonl, write_jsonl

    try:
        scenario = None
        if trajectories is not None:
            if run_id is not None:
                raise MbiError("give either --trajectories or --ledger/--run, not both")
            traj = read_jsonl(trajectories)
        else:
            from mbiagents.ledger.schema import open_ledger
            from mbiagents.replay import trajectories_from_ledger

            led = open_ledger(ledger, create=False)
            try:
                _, traj, scenario = trajectories_from_ledger(led, run_id)
            finally:
                led.dispose()
        learner = learner_from_scenario(scenario, alpha, beta, epsilon)
        held = read_jsonl(predict) if predict is not None else None
        if save_trajectories is not None:
            write_jsonl(traj, save_trajectories)
        if not as_json and err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("[bold]DIML {task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True) as bar:
                task = bar.add_task(model, total=epochs, info="")

                def on_epoch(s) -> None:
                    bar.update(task, completed=s.epoch, info=f"train NLL {s.train_nll:.4f}")

                report = run_infer(traj, model, holdout=holdout, predict=held, seed=seed, learner=learner,
                                   epochs=epochs, callback=on_epoch, on_config=lambda c: bar.update(task, total=c.epochs))
        else:
            report = run_infer(traj, model, holdout=holdout, predict=held, seed=seed, learner=learner, epochs=epochs)
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(report)
        return
    table = Table(title=f"DIML {report['model']}: payoff differences u_i(a) - u_i(0) "
                        f"({report['episodes']} episodes x {report['steps']} steps)")
    table.add_column("agent")
    for a in range(report["n_actions"]):
        table.add_column(f"a={a}", justify="right")
    for agent, row in report["payoff_differences"].items():
        table.add_row(agent, *(f"{v:+.4f}" for v in row))
    out.print(table)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    out.print(f"NLL per agent-step: train {fmt(report['train_nll'])}  held-out {fmt(report['heldout_nll'])}  "
              f"frequency baseline {fmt(report['frequency_baseline_nll'])}")
    out.print(f"learner alpha {report['alpha']:g}  beta {report['beta']:g}  epsilon {report['epsilon']:g};  "
              f"{report['epochs']} epochs in {report['seconds']:.1f} s")


@app.command()
def replay(ledger: LedgerOpt = None, run_id: RunOpt = None, as_json: JsonOpt = False) -> None:
    """Re-execute a run from its logged reports (no agent called); exit 1 naming the first mismatching round."""
    from mbiagents.verify.replay import replay_run
    from mbiagents.ledger.schema import open_ledger

    try:
        led = open_ledger(ledger, create=False)
        try:
            report = replay_run(led, run_id)
        finally:
            led.dispose()
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    bad = report.first_mismatch
    if as_json:
        _print_json(report.as_json())
    else:
        names = list(dict.fromkeys(n for r in report.rounds for n in r.checks)) or ["payments"]
        table = Table(title=f"replay of run {report.run_id}: {len(report.rounds)} rounds")
        table.add_column("round", justify="right")
        for n in names:
            table.add_column(n.removesuffix("_recompute"))
        table.add_column("detail")
        for r in report.rounds:
            table.add_row(str(r.index), *("" if n not in r.checks else "[green]match[/]" if r.checks[n] else "[red]MISMATCH[/]"
                                            for n in names),
                          r.detail)
        out.print(table)
        if bad is not None:
            err.print(f"error: round {bad.index} does not replay: {bad.detail}", markup=False, highlight=False)
    raise typer.Exit(0 if bad is None else 1)


@app.command()
def export(
    out_path: Annotated[str, typer.Option("--out", help="Output folder (csv, parquet) or file (jsonl).")],
    fmt: Annotated[str, typer.Option("--format", help="csv | jsonl | parquet")] = "jsonl",
    ledger: LedgerOpt = None,
    run_id: RunOpt = None,
    trajectories: Annotated[bool, typer.Option(
        "--trajectories", help="With --format jsonl: write the agents' discrete actions in the "
                               "`mbi infer --trajectories` format instead of the ledger rows.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a run's transfers and events (or its trajectories) for analysis."""
    from pathlib import Path

    from mbiagents.ledger.export import export_run
    from mbiagents.ledger.schema import open_ledger

    try:
        led = open_ledger(ledger, create=False)
        try:
            if trajectories:
                from mbiagents.replay import export_trajectories

                summary = export_trajectories(led, run_id, fmt, Path(out_path), force=force)
            else:
                summary = export_run(led, run_id, fmt, Path(out_path), force=force)
        finally:
            led.dispose()
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if as_json:
        _print_json(summary)
    else:
        counts = ", ".join(f"{summary[k]} {k}" for k in ("transfers", "events", "actions") if k in summary)
        out.print(f"run {summary['run_id']}: {counts} -> {', '.join(summary['files'])}")


@db_app.command("upgrade")
def db_upgrade(
    ledger: LedgerOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Migrate even a database that holds other tables and no ledger.")] = False,
) -> None:
    """Bring the ledger's schema to the newest revision (alembic upgrade head).

    A database that is not an mbiagents ledger (other tables, no ledger) is left alone
    unless --force is given (or, at a terminal, the question is answered yes).
    """
    from mbiagents.ledger.schema import head_revision, unrelated_database, upgrade
    from mbiagents.ledger.store import DEFAULT_LEDGER_URL, _short, display_url, make_engine

    url = ledger or DEFAULT_LEDGER_URL
    try:
        engine = make_engine(url)
        try:
            why = unrelated_database(engine)
            if why is not None and not force:
                if not (sys.stdin.isatty() and typer.confirm(
                        f"{display_url(url)} is not an mbiagents ledger ({why}); add the ledger's tables to it?")):
                    raise MbiError(f"ledger {display_url(url)!r} is not an mbiagents ledger ({why}); "
                                   "pass --force to add the ledger's tables to it anyway")
            upgrade(engine)
        finally:
            engine.dispose()
    except MbiError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - surface driver errors as one line, without a password
        _fail(f"cannot upgrade ledger {display_url(url)!r}: {_short(exc, url)}")
    out.print(f"ledger at schema {head_revision()}")


def main() -> None:
    from mbiagents.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # before anything imports JAX: a second command reuses the compiled programs
    app()


if __name__ == "__main__":
    main()
