"""LangGraph checkpointers that live with the ledger, for ``mbi run --resume``.

- SQLite ledger ``sqlite:///PATH``: a ``SqliteSaver`` in the file ``PATH-checkpoints``
  beside it (WAL, ``synchronous=NORMAL``: a checkpoint costs no fsync);
- PostgreSQL ledger: a ``PostgresSaver`` in the schema ``mbi_checkpoints`` of the same
  database (the ledger's own schema stays exactly what the migrations create);
- in-memory SQLite: no checkpointer (nothing to resume after a crash).

The thread id of a run's checkpoints is its run id. Graph state (numpy arrays included)
round-trips bit-exactly through LangGraph's msgpack serializer (tested).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterator

from mbiagents.errors import LedgerError
from mbiagents.ledger.outfiles import CHECKPOINT_FILE_SUFFIX as SQLITE_SUFFIX
from mbiagents.ledger.store import Ledger

CHECKPOINT_SCHEMA = "mbi_checkpoints"
SETUP_LOCK = 0x6D6269_01  # PostgreSQL advisory lock key: checkpointer set-up


@contextmanager
def open_checkpointer(ledger: Ledger) -> Iterator[Any | None]:
    """A checkpointer beside ``ledger`` (set up, closed on exit), or ``None`` for ``:memory:``."""
    url = ledger.engine.url
    if url.get_backend_name() == "postgresql":
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row

        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=0, row_factory=dict_row,
                                   options=f"-c search_path={CHECKPOINT_SCHEMA}")
        except psycopg.Error as exc:
            raise _setup_error(exc) from None
        with conn:
            try:
                # concurrent runs set up one at a time; poll between statements (no open transaction,
                # which set-up's CREATE INDEX CONCURRENTLY would otherwise wait for: a deadlock)
                while not conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (SETUP_LOCK,)).fetchone()["ok"]:
                    time.sleep(0.05)
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {CHECKPOINT_SCHEMA}")
                saver = PostgresSaver(conn)
                saver.setup()
                conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))
            except psycopg.Error as exc:
                raise _setup_error(exc) from None
            yield saver
        return
    if not url.database or url.database == ":memory:":
        yield None
        return
    from langgraph.checkpoint.sqlite import SqliteSaver

    try:
        conn = sqlite3.connect(url.database + SQLITE_SUFFIX, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _setup_error(exc) from None
    try:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            saver = SqliteSaver(conn)
            saver.setup()
        except sqlite3.Error as exc:
            raise _setup_error(exc) from None
        yield saver
    finally:
        conn.close()


def _setup_error(exc: Exception) -> LedgerError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return LedgerError(f"cannot set up the run's checkpoints beside the ledger: {first}")
