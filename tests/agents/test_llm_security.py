"""Issue 16, the LLM items: prompt templates cannot run code (2), a scenario cannot aim the
key (3), a hostile server cannot get a secret stored (4), make a field unstorable (5) or hold
the agents (6). The real openai SDK talks to the scripted loopback server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from openai_server import RecordedRequest, Reply
from typer.testing import CliRunner

from mbiagents.agents import Bounds, LLMClient, LLMSettings, TeamAgentInfo, TeamReport, team_act, team_report
from mbiagents.agents.prompts import PromptError, render
from mbiagents.cli import app
from mbiagents.errors import ScenarioError
from mbiagents.ledger.schema import open_ledger
from mbiagents.llm_settings import resolve_llm_settings
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.conftest import EXAMPLES

LLM_SCENARIO = EXAMPLES / "llm_shared_capacity.toml"
INFO = TeamAgentInfo(agent_id="a1", value=2.0, curvature=1.0, kappa=0.5, n_agents=3)
VB, CB, UB = Bounds(lo=0, hi=100), Bounds(lo=0.01, hi=10), Bounds(lo=0, hi=20)
SECRET = "sk-live-0123456789abcdef"
runner = CliRunner()


def scenario_file(tmp_path: Path, llm_lines: str) -> Path:
    text = LLM_SCENARIO.read_text().replace("[llm]\n", "[llm]\n" + llm_lines + "\n", 1)
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


# ---- 2. templates are sandboxed and confined to their folder --------------------------------
PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ persona.__class__.__base__.__subclasses__() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ value_bounds.__dict__ }}",
    "{% set x = joiner.__init__.__globals__.os.system('touch MARKER') %}x",
    "{% include '../outside.md' %}",
    "{% include '/etc/passwd' %}",
    "{% include 'link.md' %}",
    "{{ range(10**9) | list | length }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_template_injection_is_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (tmp_path / "outside.md").write_text("SECRET FILE CONTENT")
    (prompts / "link.md").symlink_to(tmp_path / "outside.md")
    (prompts / "team_report.md").write_text(payload)
    ctx = dict(vars(INFO), round=0, value_bounds=VB, curvature_bounds=CB)
    with pytest.raises(PromptError, match="prompt template"):
        render("team_report.md", ctx, prompts)
    assert not (tmp_path / "MARKER").exists()


def test_ordinary_override_still_renders(tmp_path):
    (tmp_path / "team_report.md").write_text("{{ agent_id | upper }} {{ value | num }} {% for i in range(2) %}{{ i }}{% endfor %}")
    out = render("team_report.md", dict(vars(INFO), round=0, value_bounds=VB, curvature_bounds=CB), tmp_path)
    assert out == "A1 2 01\n"


def test_scenario_prompts_dir_must_be_beside_the_scenario(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(ScenarioError, match="prompts_dir.*outside"):
        load_scenario(scenario_file(tmp_path, 'prompts_dir = "/etc"'))
    sc = load_scenario(scenario_file(tmp_path, 'prompts_dir = "p"'))
    assert sc.llm.prompts_dir == (tmp_path / "p").resolve()


def test_broken_template_fails_the_run_before_anything_is_written(tmp_path, openai_server, sqlite_url):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "team_act.md").write_text("{% if %}")
    res = runner.invoke(app, ["run", str(scenario_file(tmp_path, 'prompts_dir = "p"')), "--ledger", sqlite_url,
                              "--llm", openai_server.base_url])
    assert res.exit_code == 2 and "team_act.md" in res.stderr and res.stderr.count("\n") == 1, res.output
    assert openai_server.requests == []


# ---- 3. a scenario cannot choose which variable is sent, nor send the key to its own host -----
def test_api_key_env_must_look_like_a_key(monkeypatch):
    with pytest.raises(ValueError, match="does not look like an API key"):
        resolve_llm_settings({"api_key_env": "HOME"}, env={})
    with pytest.raises(ValueError, match="MBI_LLM_KEY_VARS"):
        resolve_llm_settings({"api_key_env": "DATABASE_URL"}, env={})
    assert resolve_llm_settings({"api_key_env": "GROQ_API_KEY"}, env={}).api_key_env == "GROQ_API_KEY"
    # the user's own allow-list (environment, never the scenario)
    s = resolve_llm_settings({"api_key_env": "MY_TOKEN"}, env={"MBI_LLM_KEY_VARS": "OTHER, MY_TOKEN"})
    assert s.api_key_env == "MY_TOKEN"


def test_scenario_with_a_non_key_variable_is_refused_before_the_run(tmp_path, openai_server, sqlite_url):
    path = scenario_file(tmp_path, 'api_key_env = "HOME"')
    res = runner.invoke(app, ["run", str(path), "--ledger", sqlite_url, "--llm", openai_server.base_url])
    assert res.exit_code == 2 and "api_key_env" in res.stderr and res.stderr.count("\n") == 1, res.output
    assert openai_server.requests == []


def _auth_seen(openai_server) -> set[str | None]:
    return {r.authorization for r in openai_server.requests}


def test_key_goes_only_to_a_host_the_user_chose(tmp_path, openai_server, monkeypatch, sqlite_url):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    openai_server.default = Reply.json({"value": 1.0, "curvature": 1.0})
    # the scenario names the URL: the run goes there, but without the key
    path = scenario_file(tmp_path, f'base_url = "{openai_server.base_url}"')
    run_scenario(load_scenario(path), ledger_url=sqlite_url, rounds=1)
    assert openai_server.requests and f"Bearer {SECRET}" not in _auth_seen(openai_server)
    # the user passes the same URL on the command line: now the key is sent
    openai_server.requests.clear()
    run_scenario(load_scenario(path), ledger_url=sqlite_url, rounds=1, llm=openai_server.base_url)
    assert _auth_seen(openai_server) == {f"Bearer {SECRET}"}


# ---- 4. a server that echoes the key gets nothing stored or shown ---------------------------
def test_echoed_key_is_in_no_ledger_export_or_report(tmp_path, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MBI_SOME_TOKEN", "tok-0000-also-secret")

    def script(req: RecordedRequest):
        if req.step == "report":
            return Reply(content='{"value": 2.0, "curvature": 1.0, "note": "{key}"}', echo_key=True, model="m-{key}")
        if req.step == "act":
            return Reply(content='your key is {key} and tok-0000-also-secret', echo_key=True,
                         finish_reason="stop")
        return None

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(script)
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    res = run_scenario(load_scenario(LLM_SCENARIO), ledger_url=url, rounds=2, llm=openai_server.base_url)
    assert any(r.authorization == f"Bearer {SECRET}" for r in openai_server.requests)  # it was sent...
    led = open_ledger(url)
    payloads = " ".join(p for r in led.read_rounds(res.run_id) for *_, p in r.events)
    led.dispose()
    assert "[redacted]" in payloads  # ...and came back, redacted
    out = tmp_path / "e.jsonl"
    assert runner.invoke(app, ["export", "--ledger", url, "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["report", "--ledger", url, "--out", str(tmp_path / "r")]).exit_code == 0
    with sqlite3.connect(db) as conn:
        conn.execute("pragma wal_checkpoint(truncate)")
    stored = [db, out, *(tmp_path / "r").iterdir()]
    for path in stored:
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"tok-0000-also-secret" not in data, path


# ---- 5. every stored field is bounded and storable ------------------------------------------
def test_huge_token_counts_surrogates_and_long_fields_do_not_crash_a_run(openai_server, sqlite_url):
    big = 10**400

    def script(req: RecordedRequest):
        if req.step == "report":
            return Reply(content='{"value": 2.0, "curvature": 1.0}', prompt_tokens=big, completion_tokens=-5,
                         model="m" * 100_000, finish_reason="stop")
        if req.step == "act":
            return Reply(content='{"usage": 1.0, "why": "\\udcff\\ud800"} \\udcff', model="\\udcff" * 10,
                         finish_reason="x" * 50_000)
        return None

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(script)
    res = run_scenario(load_scenario(LLM_SCENARIO), ledger_url=sqlite_url, rounds=2, llm=openai_server.base_url)
    led = open_ledger(sqlite_url)
    events = [json.loads(p) for r in led.read_rounds(res.run_id) for _, k, a, p in r.events if a is not None]
    led.dispose()
    records = [c for e in events for c in e["records"]]
    assert records and max(c["prompt_tokens"] for c in records) == 10**9
    assert min(c["completion_tokens"] for c in records) >= 0
    assert max(len(c["model"]) for c in records) < 300 and max(len(c["finish_reason"] or "") for c in records) < 300
    assert res.summary["agents"]["planner"]["llm"]["prompt_tokens"] <= 4 * 10**9


def test_surrogate_escape_in_an_answer_is_stored_cleanly(openai_server):
    from mbiagents.agents import Deliverable

    openai_server.queue(Reply.text('{"text": "ok \\udcff done"}'))

    async def go():
        async with LLMClient(LLMSettings(backend="custom", base_url=openai_server.base_url, max_retries=0)) as llm:
            return await llm.ask(agent_id="a1", step="deliver", messages=[{"role": "user", "content": "x"}],
                                 schema=Deliverable, fallback=Deliverable(text=""))

    ans = asyncio.run(go())
    assert ans.ok and ans.value.text == "ok ? done"
    ans.model_dump_json().encode("utf-8")  # storable


# ---- 6. a trickling server cannot hold the agents -------------------------------------------
def test_timeout_is_total_per_request_and_per_agent(openai_server):
    trickle = 6.0  # the body would take 6 s, one byte at a time; each byte comes well within 1 s
    openai_server.default = Reply(content='{"value": 1, "curvature": 1}', trickle_s=trickle)
    settings = LLMSettings(backend="custom", base_url=openai_server.base_url, timeout_s=1.0, max_retries=0,
                           validation_retries=0)
    agents = [TeamAgentInfo(agent_id=f"a{i}", value=2.0, curvature=1.0, kappa=0.5, n_agents=4) for i in range(4)]

    async def go():
        async with LLMClient(settings) as llm:  # no probe: the first ask decides the mode, and fails
            return await asyncio.gather(*[team_report(llm, a, value_bounds=VB, curvature_bounds=CB,
                                                      fallback=TeamReport(value=0, curvature=1)) for a in agents])

    answers = asyncio.run(go())
    assert all(a.used_fallback and "Timeout" in a.errors[-1] for a in answers)
    latencies = [r.latency_s for a in answers for r in a.records]
    assert max(latencies) < trickle / 2  # ended by the total deadline, not by the trickle's end
    # after the deciding request failed, the other agents' requests ran side by side, not one by one
    first = sorted(min(r.received_at for r in openai_server.requests_for(a.agent_id)) for a in agents)[1:]
    assert first[-1] - first[0] < 1.0


def test_act_step_scrubs_the_key_from_validation_errors(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    openai_server.queue(Reply(content="{key}", echo_key=True), Reply(content='{"usage": "{key}"}', echo_key=True),
                        Reply(content="{key}", echo_key=True))

    async def go():
        async with LLMClient(LLMSettings(backend="custom", base_url=openai_server.base_url, max_retries=0)) as llm:
            return await team_act(llm, INFO, signal=0.0, usage=0.0, aggregate=0.0, usage_bounds=UB)

    ans = asyncio.run(go())
    assert ans.used_fallback and SECRET not in ans.model_dump_json()


# ---- 7. reports at the bounds are harmless to truthful agents -------------------------------
def test_hostile_reports_at_the_bounds_cannot_make_truthful_agents_pay(openai_server, sqlite_url):
    import numpy as np

    from mbiagents.markets import market_of
    from mbiagents.verify.audit import audit_run
    from mechanisms import dpm
    from mechanisms.games import team

    def at_the_bounds(req: RecordedRequest):
        if req.step == "report":  # the largest value and the smallest curvature the schema allows
            props = req.response_format["json_schema"]["schema"]["properties"]
            return Reply.json({"value": props["value"]["maximum"], "curvature": props["curvature"]["minimum"]})
        if req.step == "act":
            return Reply.json({"usage": 0.0})  # ... and then use nothing
        return None

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(at_the_bounds)
    sc = load_scenario(LLM_SCENARIO)
    res = run_scenario(sc, ledger_url=sqlite_url, rounds=4, llm=openai_server.base_url)
    led = open_ledger(sqlite_url)
    run = led.get_run(res.run_id)
    market = market_of(run)
    rounds = led.read_rounds(res.run_id)
    truthful = [i for i, a in enumerate(sc.agents) if a.backend != "llm"]
    truth = market.population.true_types
    uncapped_max = 0.0
    for k, r in enumerate(rounds):
        x = np.asarray(r.payload("actions")["x"])
        t = np.asarray(r.payload("payments")["t"])
        reports = next(rr.payload("reports") for rr in reversed(rounds[: k + 1]) if "reports" in
                       {kind for _, kind, a, _ in rr.events if a is None})
        rep = team.TeamTypes(np.asarray(reports["value"]), np.asarray(reports["curvature"]))
        uncapped_max = max(uncapped_max, float(np.max(np.asarray(dpm.clarke_pivot_payments(x, rep, market.kappa))[truthful])))
        v = np.asarray(team.values(x, truth))
        for i in truthful:  # a truthful agent never pays more than its usage is worth to it
            assert t[i] <= max(v[i], 0.0) + 1e-6, (k, sc.agents[i].id, t[i], v[i])
    assert uncapped_max > 1.0  # the plain Clarke rule would have charged them (the attack is real)
    report = audit_run(led, res.run_id)
    checks = {c.name: c for c in report.checks}
    assert report.ok and checks["individual_rationality"].ok and not checks["individual_rationality"].informational
    led.dispose()
