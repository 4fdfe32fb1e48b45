"""What ``mbi audit`` loads at start (structural, not timed; timings: benchmarks/bench_cli_start.py):
no Alembic and no OpenAI SDK on the read path, JAX only where a market's recomputation
needs it, and JAX's persistent compilation cache where ``MBI_JAX_CACHE`` says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mbiagents.compile_cache import cache_dir
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("alembic", "openai", "jax", "langgraph", "matplotlib")
PROBE = """
import json, sys
from mbiagents.cli import main
sys.argv = ["mbi", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def mbi(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=cwd, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_audit_help_loads_nothing_heavy(tmp_path):
    got = mbi(["audit", "--help"], {"MBI_JAX_CACHE": "0"}, tmp_path)
    assert got == {"code": 0, "loaded": []}


def test_audit_of_a_team_run_loads_jax_but_not_alembic_or_openai(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    run_id = run_scenario(load_scenario(EXAMPLES / "shared_capacity.toml"), ledger_url=url, rounds=5,
                          checkpoint=False).run_id
    cache = tmp_path / "jax-cache"
    got = mbi(["audit", "--ledger", url, "--run", run_id, "--json"], {"MBI_JAX_CACHE": str(cache)}, tmp_path)
    assert got == {"code": 0, "loaded": ["jax"]}
    assert any(cache.iterdir())  # the compiled programs are kept for the next command


def test_cache_dir_follows_mbi_jax_cache(tmp_path):
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "mbiagents" / "jax"
    assert cache_dir({"MBI_JAX_CACHE": "0"}) is None and cache_dir({"MBI_JAX_CACHE": "off"}) is None
    assert cache_dir({"MBI_JAX_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
