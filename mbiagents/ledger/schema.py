"""Schema management: Alembic owns the schema; ``mbi db upgrade`` wraps ``alembic upgrade head``.

Migrations run under a lock, so simultaneous first runs on a new ledger migrate it once: a
PostgreSQL advisory lock, or an exclusive ``flock`` on the SQLite database file (SQLite's
own locks are POSIX record locks, which ``flock`` does not touch). Whoever gets the lock
second finds the schema at head and does nothing.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from mbiagents.errors import LedgerError
from mbiagents.ledger.store import DEFAULT_LEDGER_URL, Ledger, _short, display_url, make_engine, table_names

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATE_LOCK = 0x6D6269_00  # PostgreSQL advisory lock key: schema migration
MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package
#: the newest migration's revision (a test holds it equal to Alembic's head of ``MIGRATIONS``):
#: opening a ledger compares the stored revision with it, without importing Alembic
HEAD_REVISION = "0005_compact"


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The schema revision this mbi needs (``HEAD_REVISION``)."""
    return HEAD_REVISION


def alembic_head() -> str:
    """Alembic's head revision of the shipped migration scripts (what ``HEAD_REVISION`` names)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The ledger's stored schema revision (the ``alembic_version`` row; ``None`` if none),
    read with a plain ``SELECT`` (Alembic's own reader, without importing Alembic)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise LedgerError(f"ledger {engine.url.render_as_string(hide_password=True)!r} holds several schema "
                          f"revisions ({', '.join(sorted(rows))}): not a ledger's")
    return rows[0] if rows else None


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Exclusive ``flock`` on an SQLite ledger's file while it is migrated (no-op otherwise):
    against other processes by the ``flock``, against this process's other threads by a
    lock per file (two markets opening one new ledger from worker threads); re-entrant
    within a thread.

    The descriptor is kept open for the life of the process: closing any descriptor of a
    database file drops every POSIX lock the process holds on it, SQLite's own included.
    """
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:" or db.startswith("file:"):
        yield
        return
    key = os.path.realpath(db)
    with _LOCKS_GUARD:
        in_process = _IN_PROCESS.setdefault(key, threading.RLock())
    with in_process:
        if key in _HELD:  # this thread holds it already (the RLock admits no other)
            yield
            return
        fd = _LOCK_FDS.get(key)
        if fd is None:
            fd = _LOCK_FDS[key] = os.open(db, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)


_HELD: set[str] = set()  # SQLite files whose migration lock this process holds
_LOCK_FDS: dict[str, int] = {}  # never closed (see migration_lock)
_IN_PROCESS: dict[str, threading.RLock] = {}  # one per file: this process's threads in turn
_LOCKS_GUARD = threading.Lock()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` on this engine, in one transaction, under
    the migration lock (concurrent callers: one migrates, the others find it done)."""
    from alembic import command

    cfg = alembic_config()
    with migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def unrelated_database(engine: Engine) -> str | None:
    """Why this database is not an mbiagents ledger (None if it is one, or is empty)."""
    tables = table_names(engine)
    if "alembic_version" in tables:
        from alembic.script import ScriptDirectory

        rev = current_revision(engine)
        known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        return None if rev is None or rev in known else f"its schema revision {rev!r} is not an mbiagents ledger's"
    others = [t for t in tables if t != "alembic_version"]
    return f"it holds tables ({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}) but no ledger" \
        if others else None


def open_ledger(url: str | None = None, *, create: bool = True) -> Ledger:
    """Open a ledger, creating the schema on an empty database when ``create`` is set.

    Raises ``LedgerError`` if the database cannot be reached, has no ledger (``create``
    unset), or is at an older schema revision (run ``mbi db upgrade``).
    """
    url = url or DEFAULT_LEDGER_URL
    engine = make_engine(url)
    shown = display_url(url)  # never a password in a message
    try:
        head = head_revision()
        # a first run may be creating this SQLite file right now (switching it to WAL,
        # migrating it): look at it, and migrate it, under the migration lock
        with migration_lock(engine) if create else nullcontext():
            tables = table_names(engine)
            rev = current_revision(engine) if "alembic_version" in tables else None
            if rev is None and create and not [t for t in tables if t != "alembic_version"]:
                upgrade(engine)
                rev = head
        if rev is None:
            if [t for t in tables if t != "alembic_version"]:
                raise LedgerError(f"ledger {shown!r} holds tables that are not an mbiagents ledger")
            raise LedgerError(f"ledger {shown!r} is empty: no runs have been written to it")
        if rev != head:
            raise LedgerError(f"ledger {shown!r} is at schema {rev}, this mbi needs {head}: "
                              "run `mbi db upgrade --ledger URL`")
    except OperationalError as exc:
        engine.dispose()
        raise LedgerError(f"ledger {shown!r} cannot be reached: {_short(exc, url)}") from None
    except DBAPIError as exc:  # e.g. SQLite: "file is not a database"
        engine.dispose()
        raise LedgerError(f"ledger {shown!r} is not a usable database: {_short(exc, url)}") from None
    except LedgerError:
        engine.dispose()
        raise
    return Ledger(engine)
