"""Shared fixtures: real SQLite files and a real PostgreSQL database per test session."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import mechanisms  # noqa: F401  (64-bit JAX before anything traces)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# tests sign only with the keys they set up (monkeypatch): no developer key from ~/.config/mbi
os.environ.pop("MBI_SIGNING_KEY", None)
os.environ["MBI_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="mbi-nokey-"), "absent-key.pem")
PG_ADMIN_URL = os.environ.get("MBI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the real PostgreSQL server (tests fail, not skip, if it is down)."""
    engine = create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        conn.execute(text("select 1"))
    engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str):
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"mbi_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'create database "{name}"'))
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


def drop_append_only_triggers(engine) -> None:
    """What an attacker with raw SQL does first: drop the ledger's append-only triggers."""
    with engine.begin() as conn:
        for table in ("transfers", "events", "rounds", "arrays", "round_heads", "pending_transfers",
                      "pending_resolutions"):
            for action in ("update", "delete", "truncate", "append_completed"):
                if engine.dialect.name == "postgresql":
                    conn.execute(text(f"drop trigger if exists {table}_no_{action} on {table}"))
                else:
                    conn.execute(text(f"drop trigger if exists {table}_no_{action}"))


def example_scenarios(policy_only: bool = False) -> dict[tuple[str, str], dict]:
    """One example scenario mapping per registered ``(game, mechanism)`` (the first example
    file naming it; for a pair no example names, a scenario of its game under that
    mechanism). ``policy_only``: skip examples with LLM agents."""
    import tomllib

    from mbiagents.scenario import REGISTRY

    out: dict[tuple[str, str], dict] = {}
    for path in sorted(EXAMPLES.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        if policy_only and any(a.get("backend") == "llm" for a in data.get("agents", [])):
            continue
        meta = data["scenario"]
        out.setdefault((meta["game"], meta["mechanism"]), data)
    for game, mechanism in REGISTRY:
        if (game, mechanism) not in out:
            donor = next(d for (g, _), d in out.items() if g == game)
            out[(game, mechanism)] = {**donor, "scenario": {**donor["scenario"], "mechanism": mechanism}}
    return out


def run_scenario_examples(policy_only: bool = True) -> dict[tuple[str, str], dict]:
    """``example_scenarios`` of the pairs ``run_scenario`` runs: team-tasks runs from Python
    (``mbiagents.TaskMarket``; tests/team), not from a scenario file."""
    from mbiagents.scenario import REGISTRY

    return {k: v for k, v in example_scenarios(policy_only).items()
            if not getattr(REGISTRY[k].market_class(), "python_only", False)}
