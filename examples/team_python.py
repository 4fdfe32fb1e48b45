"""Three tool-using LLM agents (coder, researcher, writer) on real tasks, paid on verified
delivery, with budgets: the team of examples/team_tasks.toml.

    python examples/team_python.py                       # offline: a scripted model on loopback
    python examples/team_python.py --base-url http://127.0.0.1:11434/v1 --model qwen2.5   # any
                                                         # OpenAI-compatible server

Offline, the model is the repository's scripted OpenAI-compatible test server
(tests/agents/openai_server.py) on 127.0.0.1, answering with real tool calls over HTTP
through the openai SDK. The fizzbuzz deliverable is verified by running it (a test
command); the escrowed payment is posted only if it passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mbiagents as mbi  # noqa: E402
from mbiagents.team import verifiers  # noqa: E402

FIZZBUZZ = ("def fizzbuzz(n):\n    return ['FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else "
            "'Buzz' if i % 5 == 0 else str(i) for i in range(1, n + 1)]\n")


# ---- tools (priced per call, charged to the caller's budget) -------------------------
def run_python(code: str) -> str:
    """Run a Python snippet (here: only checks that it compiles) and report."""
    compile(code, "<agent>", "exec")
    return "compiled fine"


def search(query: str) -> str:
    """Search the team's notes."""
    notes = {"clarke": "Clarke pivot: a winner is paid its reported cost plus its marginal contribution "
                       "W*(N) - W*(N without it) to the team's welfare."}
    return next((v for k, v in notes.items() if k in query.lower()), "no notes found")


def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


# ---- the offline model: a scripted OpenAI-compatible server ---------------------------
BIDS = {"coder": {"fizzbuzz": 3.0, "vcg-facts": 9.0, "summary": 7.0},
        "researcher": {"fizzbuzz": None, "vcg-facts": 4.0, "summary": 6.0},
        "writer": {"fizzbuzz": None, "vcg-facts": 8.0, "summary": 2.0}}


def scripted_server():
    sys.path.insert(0, str(HERE.parent / "tests" / "agents"))
    from openai_server import Reply, ScriptedOpenAIServer

    srv = ScriptedOpenAIServer(model="scripted-team-model")

    @srv.script
    def answer(req):
        task = re.search(r"Task ([\w.-]+):", req.messages[1]["content"]).group(1)
        if req.step == "bid":
            return Reply.json({"cost": BIDS[req.agent][task]})
        if req.tool_results:  # second call: the final deliverable
            if task == "fizzbuzz":
                return Reply.text(FIZZBUZZ)
            if task == "vcg-facts":
                return Reply.text("The Clarke pivot pays the winner its cost plus its marginal contribution.")
            return Reply.text("mbiagents pays agents only for verified work. Every payment is audited.")
        tool = {"fizzbuzz": ("run_python", {"code": FIZZBUZZ}), "vcg-facts": ("search", {"query": "Clarke pivot"}),
                "summary": ("word_count", {"text": "mbiagents pays agents only for verified work."})}[task]
        return Reply.tool_call(*tool)

    return srv


async def verify(task: mbi.Task, deliverable) -> mbi.Verdict:
    """fizzbuzz: run its test; the others: a non-empty answer."""
    if task.id == "fizzbuzz":
        test = [sys.executable, "-c", "import sys; exec(open(sys.argv[1]).read()); "
                "assert fizzbuzz(15)[-1] == 'FizzBuzz'", "{deliverable}"]
        return await verifiers.command(test, timeout_s=30).averify(task, deliverable, "")
    return verifiers.accept_all(task, deliverable)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: the scripted loopback server)")
    ap.add_argument("--model", default="scripted")
    ap.add_argument("--ledger", default="sqlite:///team-ledger.db")
    args = ap.parse_args()
    srv = None if args.base_url else scripted_server().start()
    try:
        settings = mbi.LLMSettings(backend="custom", base_url=args.base_url or srv.base_url, model=args.model,
                                   price_per_1k_tokens=0.02, max_tokens=300, max_retries=0)
        team = {
            "coder": mbi.LLMAgent("coder", settings=settings, tools=[mbi.Tool(run_python, price=0.01)],
                                  persona="You write small, correct Python."),
            "researcher": mbi.LLMAgent("researcher", settings=settings, tools=[mbi.Tool(search, price=0.05)],
                                       persona="You find facts and cite them."),
            "writer": mbi.LLMAgent("writer", settings=settings, tools=[word_count],
                                   persona="You write short, clear prose."),
        }
        market = mbi.TaskMarket.from_toml(str(HERE / "team_tasks.toml"), team, verifier=verify, ledger=args.ledger)
        result = await market.arun(market.tasks)
    finally:
        if srv is not None:
            srv.stop()
    print(f"run {result.run_id} in {result.ledger_url}")
    for d in result.summary["deliveries"]:
        mark = "accepted" if d["accepted"] else f"REJECTED ({d['reason']})"
        print(f"  round {d['round']}: {d['task']:<10} by {d['agent']:<10} {mark}")
    print(f"  {'agent':<11}{'payment':>9}{'spend':>9}{'utility':>9}{'balance':>9}")
    for aid, a in result.summary["agents"].items():
        print(f"  {aid:<11}{a['payment']:>9.4f}{a['spend']:>9.4f}{a['utility']:>9.4f}{a['balance']:>9.4f}")
    report = market.audit(result.run_id)
    print("audit:", "pass" if report.ok else "FAIL", json.dumps([c.name for c in report.checks if not c.ok]))


if __name__ == "__main__":
    asyncio.run(main())
