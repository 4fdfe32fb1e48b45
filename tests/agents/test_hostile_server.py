"""A hostile model server (issue 13): absurd token counts, invalid UTF-8, lone surrogates.

Every run completes without a traceback: token counts are sane, text is valid Unicode,
the summary is strict JSON and the ledger audits.
"""

from __future__ import annotations

import json

import pytest
from openai_server import RecordedRequest, Reply

from mbiagents.ledger.schema import open_ledger
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario
from mbiagents.verify.audit import audit_run

from tests.conftest import EXAMPLES


def completion(content_json: str, usage: str = '{"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}') -> bytes:
    return ('{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [{"index": 0, '
            '"message": {"role": "assistant", "content": ' + content_json + '}, "finish_reason": "stop"}], '
            '"usage": ' + usage + '}').encode()


GOOD = json.dumps(json.dumps({"value": 4.0, "curvature": 1.0}))
HOSTILE = {
    "usage 1e30": completion(GOOD, '{"prompt_tokens": 1e30, "completion_tokens": 1e30, "total_tokens": 1e30}'),
    "usage negative and text": completion(GOOD, '{"prompt_tokens": -5, "completion_tokens": "many", "total_tokens": null}'),
    "invalid utf-8": completion('"\\u0041"').replace(b'"\\u0041"', b'"\xff\xfe bad bytes"'),
    "lone surrogate": completion('"\\ud800 lone surrogate {\\"value\\": 1}"'),
    "surrogate in json answer": completion(json.dumps('{"value": 4.0, "curvature": 1.0, "note": "') [:-1]
                                           + '\\ud83d"}"'),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_server_answers_end_in_no_traceback(name, openai_server, sqlite_url):
    body = HOSTILE[name]

    def script(req: RecordedRequest):
        if req.agent is None:  # capability probe
            return None
        return Reply(body=body)

    openai_server.default = Reply.json({"ok": True})
    openai_server.script(script)
    sc = load_scenario(EXAMPLES / "llm_shared_capacity.toml")
    res = run_scenario(sc, ledger_url=sqlite_url, rounds=1, llm=openai_server.base_url)
    for row in res.summary["agents"].values():
        u = row.get("llm")
        if u:
            assert 0 <= u["prompt_tokens"] <= 10**12 and 0 <= u["completion_tokens"] <= 10**12
    json.dumps(res.as_json(), allow_nan=False)
    led = open_ledger(sqlite_url)
    assert audit_run(led, res.run_id).ok
    led.dispose()
