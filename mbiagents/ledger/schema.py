"""Schema management: Alembic owns the schema; ``mbi db upgrade`` wraps ``alembic upgrade head``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from mbiagents.errors import LedgerError
from mbiagents.ledger.store import DEFAULT_LEDGER_URL, Ledger, _short, make_engine, table_names

MIGRATE_LOCK = 0x6D6269_00  # PostgreSQL advisory lock key: schema migration
MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` on this engine, in one transaction."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # concurrent first runs: one migrates, the others find head
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def open_ledger(url: str | None = None, *, create: bool = True) -> Ledger:
    """Open a ledger, creating the schema on an empty database when ``create`` is set.

    Raises ``LedgerError`` if the database cannot be reached, has no ledger (``create``
    unset), or is at an older schema revision (run ``mbi db upgrade``).
    """
    url = url or DEFAULT_LEDGER_URL
    engine = make_engine(url)
    try:
        tables = table_names(engine)
        rev = current_revision(engine) if "alembic_version" in tables else None
    except OperationalError as exc:
        engine.dispose()
        raise LedgerError(f"ledger {url!r} cannot be reached: {_short(exc)}") from None
    head = head_revision()
    if rev is None:
        if [t for t in tables if t != "alembic_version"]:
            engine.dispose()
            raise LedgerError(f"ledger {url!r} holds tables that are not an mbiagents ledger")
        if not create:
            engine.dispose()
            raise LedgerError(f"ledger {url!r} is empty: no runs have been written to it")
        upgrade(engine)
    elif rev != head:
        engine.dispose()
        raise LedgerError(f"ledger {url!r} is at schema {rev}, this mbi needs {head}: run `mbi db upgrade --ledger URL`")
    return Ledger(engine)
