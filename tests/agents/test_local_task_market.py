"""The LLM task-market example on the embedded local model (extra ``local``).

Run: pytest -m llm_local tests/agents/test_local_task_market.py -s
"""

from __future__ import annotations

import time

import pytest

from mbiagents.agents import local_backend_available
from mbiagents.verify.audit import audit_run
from mbiagents.ledger.schema import open_ledger
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES

pytestmark = [
    pytest.mark.llm_local,
    pytest.mark.skipif(not local_backend_available(), reason="install the local extra: pip install -e '.[local]'"),
]


def test_llm_task_market_example_on_the_local_model(sqlite_url):
    sc = load_scenario(EXAMPLES / "llm_task_market.toml")
    t0 = time.perf_counter()
    res = run_scenario(sc, ledger_url=sqlite_url, llm="local")
    wall = time.perf_counter() - t0
    agents = res.summary["agents"]
    print(f"\nllm task market on the local model: {wall:.1f} s; assignment {res.summary['assignment']}")
    for aid, row in agents.items():
        print(f"  {aid}: tasks={row['tasks']} payment={row['payment']:.6f} utility={row['utility']:.6f} llm={row['llm']}")
    assert set(agents) == {"backend", "analyst", "writer"}
    ledger = open_ledger(sqlite_url)
    rounds = ledger.read_rounds(res.run_id)
    reports = [(a, k) for r in rounds for _, k, a, _ in r.events if k == "llm_report"]
    assert sorted(a for a, _ in reports) == ["analyst", "backend", "writer"]  # every bid parsed or fell back
    for aid, row in agents.items():
        assert row["llm"]["calls"] >= 1
        if row["tasks"]:
            assert row["payment"] <= 0  # VCG pays winners at least their bid
    delivered = {a for r in rounds for _, k, a, _ in r.events if k == "llm_deliver"}
    assert delivered == {a for a, row in agents.items() if row["tasks"]}
    assert audit_run(ledger, res.run_id).ok
