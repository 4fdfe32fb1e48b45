"""``mbi export``: a run's transfers and events as CSV, JSONL or Parquet, or its
trajectories (discrete actions) as the JSONL that ``mbi infer --trajectories`` reads.

Formats (documented in the README):

- ``csv`` / ``parquet``: ``OUT`` is a folder; it gets ``transfers.{csv,parquet}`` (columns
  ``run_id, round, id, kind, debit, credit, amount``) and ``events.{csv,parquet}``
  (``run_id, round, seq, kind, agent, payload``: payload as canonical JSON text, with the
  event's array records folded in as JSON lists).
- ``jsonl``: ``OUT`` is a file, one JSON object a line, in ledger order: a ``run`` record,
  then per round its ``event`` records (seq order), ``transfer`` records (id order) and a
  ``round`` record with the round's hashes.
- ``--trajectories`` (jsonl only): the trajectory JSONL of ``mbiagents.trajectories``
  (``{"n_actions": A}``, then one ``{"episode", "step", "agent", "action"}`` per agent per
  step), written by ``mbiagents.replay.export_trajectories`` (the ledger only stores and
  streams rows; it knows no market). Only for markets whose actions are discrete (the
  congestion market).

Output files are checked first (``mbiagents.ledger.outfiles``): an existing file is written over
only with ``force``, a file of the ledger's own database never; each file is written under
a temporary name and renamed into place when complete.

Rows are streamed round by round; a run of 10^6 transfers never sits in memory at once
(except for Parquet, whose writer takes one round group per round).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from mbiagents.errors import MbiError
from mbiagents.ledger.store import Ledger, RoundRecord
from mbiagents.ledger.outfiles import atomic_path, atomic_text, check_outputs, database_files

FORMATS = ("csv", "jsonl", "parquet")
TRANSFER_FIELDS = ("run_id", "round", "id", "kind", "debit", "credit", "amount")
EVENT_FIELDS = ("run_id", "round", "seq", "kind", "agent", "payload")


def transfer_rows(run_id: str, r: RoundRecord) -> Iterator[tuple]:
    for tid, kind, debit, credit, amount in r.transfers:
        yield run_id, r.index, tid, kind, debit, credit, amount


def event_rows(run_id: str, r: RoundRecord) -> Iterator[tuple]:
    for seq, kind, agent, _payload in r.events:
        yield run_id, r.index, seq, kind, agent, r.payload_json(seq)


def jsonl_records(ledger: Ledger, run_id: str) -> Iterator[dict[str, Any]]:
    """The JSONL event format, record by record."""
    run = ledger.get_run(run_id)
    yield {"record": "run", "run_id": run.id, "name": run.name, "game": run.game, "mechanism": run.mechanism,
           "seed": run.seed, "minor_units": run.minor_units, "header_hash": run.header_hash, "status": run.status,
           "accounts": [name for name, _ in ledger.accounts(run.id)]}
    for r in ledger.iter_rounds(run.id):
        for row in event_rows(run.id, r):
            yield {"record": "event", **dict(zip(EVENT_FIELDS, row)), "payload": json.loads(row[-1])}
        for row in transfer_rows(run.id, r):
            yield {"record": "transfer", **dict(zip(TRANSFER_FIELDS, row))}
        yield {"record": "round", "run_id": run.id, "round": r.index, "prev_hash": r.prev_hash, "hash": r.hash}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise MbiError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def export_run(ledger: Ledger, run_id: str | None, fmt: str, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Export a run; returns ``{"run_id", "format", "files", "transfers", "events"}``.

    ``MbiError`` before anything is written if an output file exists (unless ``force``) or
    is a file of the ledger's database (always).
    """
    check_format(fmt)
    run = ledger.get_run(run_id)
    counts = {"transfers": 0, "events": 0}
    if fmt == "jsonl":
        with open_output(out, ledger, force) as fh:
            for rec in jsonl_records(ledger, run.id):
                counts[rec["record"] + "s"] = counts.get(rec["record"] + "s", 0) + 1
                fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        return {"run_id": run.id, "format": fmt, "files": [str(out)], "transfers": counts["transfers"],
                "events": counts["events"]}
    if out.exists() and not out.is_dir():
        raise MbiError(f"--out {out}: exists and is not a folder")
    paths = {name: out / f"{name}.{fmt}" for name in ("transfers", "events")}
    check_outputs(list(paths.values()), force=force, protected=database_files(ledger.engine))
    _mkdir(out)
    with atomic_path(paths["transfers"]) as tmp_t, atomic_path(paths["events"]) as tmp_e:
        writers = {"csv": _CsvTables, "parquet": _ParquetTables}[fmt]({"transfers": tmp_t, "events": tmp_e})
        try:
            for r in ledger.iter_rounds(run.id):
                t, e = list(transfer_rows(run.id, r)), list(event_rows(run.id, r))
                writers.write("transfers", TRANSFER_FIELDS, t)
                writers.write("events", EVENT_FIELDS, e)
                counts["transfers"] += len(t)
                counts["events"] += len(e)
        finally:
            writers.close()
    return {"run_id": run.id, "format": fmt, "files": [str(p) for p in paths.values()], **counts}


class _CsvTables:
    def __init__(self, paths: dict[str, Path]):
        self.files = {k: open(p, "w", newline="", encoding="utf-8") for k, p in paths.items()}
        self.writers = {k: csv.writer(f) for k, f in self.files.items()}
        self.writers["transfers"].writerow(TRANSFER_FIELDS)
        self.writers["events"].writerow(EVENT_FIELDS)

    def write(self, name: str, fields: tuple[str, ...], rows: list[tuple]) -> None:
        self.writers[name].writerows(rows)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class _ParquetTables:
    def __init__(self, paths: dict[str, Path]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.paths = pa, paths
        s, i = pa.string(), pa.int64()
        self.schemas = {"transfers": pa.schema(list(zip(TRANSFER_FIELDS, (s, i, s, s, s, s, i)))),
                        "events": pa.schema(list(zip(EVENT_FIELDS, (s, i, i, s, s, s))))}
        self.writers = {k: pq.ParquetWriter(p, self.schemas[k]) for k, p in paths.items()}

    def write(self, name: str, fields: tuple[str, ...], rows: list[tuple]) -> None:
        if rows:
            cols = list(zip(*rows))
            self.writers[name].write_table(self.pa.table(
                {f: self.pa.array(c, type=self.schemas[name].field(f).type) for f, c in zip(fields, cols)},
                schema=self.schemas[name]))

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MbiError(f"cannot create output folder {out}: {exc.strerror}") from None



def open_output(out: Path, ledger: Ledger, force: bool = False):
    """``out`` checked (``outfiles.check_outputs``: not over a file without ``force``, never
    over the ledger's database) and opened for writing under a temporary name."""
    check_outputs([out], force=force, protected=database_files(ledger.engine))
    return atomic_text(out)
