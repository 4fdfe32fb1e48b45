"""What the LLM client puts on the wire: the same requests as the SDK and httpx would build."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from pydantic import BaseModel

from mbiagents.agents import LLMClient, LLMSettings
from mbiagents.agents.llm import _DeadlineHttpClient, response_format_for


def _same(a: httpx2.Request, b: httpx2.Request) -> None:
    assert (a.method, str(a.url), a.content, a.extensions) == (b.method, str(b.url), b.content, b.extensions)
    assert a.headers.raw == b.headers.raw  # same headers, same order


@pytest.mark.parametrize("method", ["POST", "GET", "put"])
@pytest.mark.parametrize("url", ["http://h:2/v1/chat/completions", "/rel/path", "http://h:2/x?q=1"])
@pytest.mark.parametrize("content,headers", [
    (b'{"a": 1}', [("x-mbi-agent", "a1"), ("Content-Type", "application/json")]),
    (b"", []),
    (b"", [("Content-Length", "0")]),
    (b"abc", [("Host", "other"), ("Transfer-Encoding", "chunked")]),
    (b"ab", [("accept", "text/plain"), ("Accept", "application/json"), (b"x-raw", b"v")]),
])
def test_fast_build_request_equals_httpx(method, url, content, headers):
    client = _DeadlineHttpClient(5.0, base_url="http://base:1/v1/", headers={"x-client": "c"})
    fast = client.build_request(method, url, content=content, headers=headers, timeout=httpx2.Timeout(3.0))
    plain = httpx2.AsyncClient.build_request(client, method, url, content=content, headers=headers,
                                             timeout=httpx2.Timeout(3.0))
    _same(fast, plain)
    _same(client.build_request(method, url, content=content, headers=headers),
          httpx2.AsyncClient.build_request(client, method, url, content=content, headers=headers))


def test_other_request_shapes_go_to_httpx():
    client = _DeadlineHttpClient(5.0, base_url="http://base:1/v1/")
    for kw in ({"json": {"a": 1}}, {"params": {"q": "1"}}, {"content": b"x", "headers": {"a": "b"}},
               {"content": "text", "headers": []}, {"content": b"x", "headers": [("a", 1)]}):
        try:
            plain = httpx2.AsyncClient.build_request(client, "POST", "/p", **kw)
        except TypeError as exc:  # httpx refuses it: so must the fast path
            with pytest.raises(TypeError, match=str(exc)[:20]):
                client.build_request("POST", "/p", **kw)
            continue
        _same(client.build_request("POST", "/p", **kw), plain)


def test_sdk_request_is_what_httpx_would_build():
    """The SDK's own request for an ask (auth, SDK headers, body) is unchanged by the fast path."""
    from openai._models import FinalRequestOptions

    llm = LLMClient(LLMSettings(backend="custom", base_url="http://127.0.0.1:9/v1"))
    sdk = llm._client
    opts = FinalRequestOptions.construct(
        method="post", url="/chat/completions", json_data={"model": "m", "messages": [{"role": "user", "content": "é"}]},
        headers={"x-mbi-agent": "a1", "x-mbi-step": "report"}, idempotency_key="k")
    fast = sdk._build_request(opts)
    httpx_client = sdk._client
    httpx_client.build_request = lambda *a, **k: httpx2.AsyncClient.build_request(httpx_client, *a, **k)
    _same(fast, sdk._build_request(opts))
    assert fast.headers["authorization"] == "Bearer not-needed"


class _Ok(BaseModel):
    ok: bool


def _mock_llm(seen: list[httpx2.Request], **settings) -> LLMClient:
    def reply(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"model": "m", "choices": [
            {"message": {"content": '{"ok": true}'}, "finish_reason": "stop"}]})

    llm = LLMClient(LLMSettings(backend="custom", base_url="http://127.0.0.1:9/v1", **settings))
    llm._client = llm._client.with_options(http_client=_DeadlineHttpClient(5.0, transport=httpx2.MockTransport(reply)))
    return llm


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "none"])
def test_request_body_is_the_sdk_encoding_of_the_request(mode):
    """The body sent is byte for byte what the SDK would encode from the request as a dict."""
    from openai._utils._json import openapi_dumps

    seen: list[httpx2.Request] = []
    llm = _mock_llm(seen, response_format=mode, temperature=0.7, max_tokens=33, model="mé")
    msgs = [{"role": "system", "content": "sé \"quoted\" \n"}, {"role": "user", "content": "\u2028 ok?"}]
    answer = asyncio.run(llm.ask(agent_id="a1", step="s", messages=msgs, schema=_Ok, fallback=_Ok(ok=False)))
    assert answer.ok and answer.value.ok
    expected = {"model": "mé", "temperature": 0.7, "max_tokens": 33, "messages": msgs}
    if mode != "none":
        expected["response_format"] = response_format_for(mode, _Ok)
    assert seen[0].content == openapi_dumps(expected)
    assert json.loads(seen[0].content) == expected


def test_no_sdk_telemetry_headers_are_sent():
    seen: list[httpx2.Request] = []
    llm = _mock_llm(seen, response_format="json_schema")
    asyncio.run(llm.ask(agent_id="a1", step="report", messages=[{"role": "user", "content": "?"}], schema=_Ok,
                        fallback=_Ok(ok=False)))
    names = [k.lower() for k, _ in seen[0].headers.raw]
    assert not [n for n in names if n.startswith(b"x-stainless")]
    assert seen[0].headers["x-mbi-agent"] == "a1" and seen[0].headers["x-mbi-step"] == "report"
    assert seen[0].headers["user-agent"].startswith("AsyncOpenAI/Python ")
    assert seen[0].headers["content-type"] == "application/json"
    assert str(seen[0].url) == "http://127.0.0.1:9/v1/chat/completions"
