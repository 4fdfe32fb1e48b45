"""A scripted OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

The real ``openai`` SDK talks to it over HTTP (no monkeypatching). Answers are scripted:

* ``server.queue(Reply.json({...}), Reply.error(429), agent="a1")``: FIFO of replies for
  the agent named by the request header ``x-mbi-agent`` (sent by ``LLMClient``); replies
  queued with ``agent=None`` serve any agent whose own queue is empty;
* ``server.script(fn)``: ``fn(request: RecordedRequest) -> Reply | None`` is asked first;
* otherwise ``server.default`` (a ``Reply`` or a callable) answers.

Tool calls (function calling): ``Reply.tool_call("search", {"q": "vcg"})`` (or
``Reply.tool_calls([(name, args), ...])``) answers with ``message.tool_calls`` and
``finish_reason = "tool_calls"``; ``args`` may be a raw string (a hostile, malformed
arguments text). The request's ``tools`` and its ``tool`` role messages are kept
(``RecordedRequest.tools``, ``.tool_results``).

Capabilities: ``reject_json_schema=True`` answers ``reject_status`` (422, or 500 as
llama-cpp-python 0.3.36's server really does) to ``response_format.type == "json_schema"``; ``reject_response_format=True`` answers
400 to any ``response_format``. ``latency=(mean_s, jitter_s)`` adds a uniform random
delay to every successful reply. Every request is kept in ``server.requests``;
``server.peak_concurrent`` is the most requests that were held in their reply delay at once
since the last ``reset()`` (concurrency is checked by overlap, never by wall-clock time; a
request still sleeping from before the reset is not counted).

Use the ``openai_server`` fixture (``tests/agents/conftest.py``) or
``with ScriptedOpenAIServer() as srv: srv.base_url``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Reply:
    """One scripted reply. ``content`` is the assistant text; ``status != 200`` is an error."""

    content: str = ""
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection in the middle of the response body
    model: str | None = None
    trickle_s: float = 0.0  # send the body one byte at a time, spread over this many seconds
    echo_key: bool = False  # replace "{key}" in content, error and model by the request's Bearer token
    body: bytes | None = None  # the raw response body, sent as is (hostile servers: bad UTF-8, odd usage)
    calls: list[tuple[str, Any]] | None = None  # tool calls: (function name, arguments dict or raw text)

    @classmethod
    def json(cls, obj: Any, **kw: Any) -> "Reply":
        return cls(content=json.dumps(obj), **kw)

    @classmethod
    def text(cls, text: str, **kw: Any) -> "Reply":
        return cls(content=text, **kw)

    @classmethod
    def tool_call(cls, name: str, arguments: Any, **kw: Any) -> "Reply":
        return cls.tool_calls([(name, arguments)], **kw)

    @classmethod
    def tool_calls(cls, calls: list[tuple[str, Any]], **kw: Any) -> "Reply":
        kw.setdefault("finish_reason", "tool_calls")
        return cls(calls=list(calls), **kw)

    @classmethod
    def error(cls, status: int, message: str = "scripted error", **kw: Any) -> "Reply":
        if status == 429:
            kw.setdefault("headers", {"retry-after-ms": "10"})
        elif status >= 500:
            kw.setdefault("headers", {"retry-after-ms": "10"})
        return cls(content=message, status=status, **kw)

    @classmethod
    def dropped(cls) -> "Reply":
        return cls(drop=True, headers={"retry-after-ms": "10"})


@dataclass
class RecordedRequest:
    agent: str | None
    step: str | None
    body: dict[str, Any]
    received_at: float
    reply: Reply | None = None
    delay_s: float = 0.0
    authorization: str | None = None  # the Authorization header as received
    peer: str | None = None  # the client's host:port (one per TCP connection)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def response_format(self) -> dict[str, Any] | None:
        return self.body.get("response_format")

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.body.get("tools") or []

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("role") == "tool"]

    @property
    def last_user(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""


class _Drop(Exception):
    pass


class ScriptedOpenAIServer:
    def __init__(
        self,
        *,
        reject_json_schema: bool = False,
        reject_response_format: bool = False,
        reject_status: int = 422,
        latency: tuple[float, float] = (0.0, 0.0),
        seed: int = 0,
        model: str = "scripted-model",
    ) -> None:
        self.reject_json_schema = reject_json_schema
        self.reject_response_format = reject_response_format
        self.reject_status = reject_status
        self.latency = latency
        self.model = model
        self.default: Reply | Callable[[RecordedRequest], Reply] = Reply.json({})
        self.requests: list[RecordedRequest] = []
        self.peak_concurrent = 0
        self._delayed = 0
        self._generation = 0  # bumped by reset(): requests from before it leave the count alone
        self._queues: dict[str | None, collections.deque[Reply]] = collections.defaultdict(collections.deque)
        self._script: Callable[[RecordedRequest], Reply | None] | None = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self.port: int | None = None

    # ---------------------------------------------------------------- scripting
    def queue(self, *replies: Reply, agent: str | None = None) -> "ScriptedOpenAIServer":
        with self._lock:
            self._queues[agent].extend(replies)
        return self

    def script(self, fn: Callable[[RecordedRequest], Reply | None]) -> Callable[[RecordedRequest], Reply | None]:
        """Set the script hook (usable as a decorator)."""
        self._script = fn
        return fn

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self.requests.clear()
            self.peak_concurrent = 0
            self._delayed = 0
            self._generation += 1
        self._script = None
        self.default = Reply.json({})
        self.reject_json_schema = False
        self.reject_response_format = False
        self.reject_status = 422
        self.latency = (0.0, 0.0)

    def requests_for(self, agent: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.agent == agent]

    @property
    def base_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}/v1"

    def _choose(self, req: RecordedRequest) -> Reply:
        if self._script is not None:
            r = self._script(req)
            if r is not None:
                return r
        with self._lock:
            for key in (req.agent, None):
                q = self._queues.get(key)
                if q:
                    return q.popleft()
        d = self.default
        return d(req) if callable(d) else d

    # ---------------------------------------------------------------- app
    async def _models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "tests"}]})

    async def _chat(self, request: Request):  # noqa: ANN202
        body = await request.json()
        req = RecordedRequest(
            agent=request.headers.get("x-mbi-agent"),
            step=request.headers.get("x-mbi-step"),
            body=body,
            received_at=time.time(),
            authorization=request.headers.get("authorization"),
            peer=f"{request.client.host}:{request.client.port}" if request.client else None,
        )
        with self._lock:
            self.requests.append(req)
        rf = body.get("response_format")
        if rf is not None and self.reject_response_format:
            return JSONResponse({"error": {"message": "response_format not supported", "type": "invalid_request_error"}}, status_code=400)
        if rf is not None and rf.get("type") == "json_schema" and self.reject_json_schema:
            # what llama-cpp-python's server answers: its FastAPI validation error, as a 422,
            # or (llama-cpp-python 0.3.36, reject_status=500) wrapped into a 500 text body
            detail = [{"type": "literal_error", "loc": ["body", "response_format", "type"],
                       "msg": "Input should be 'text' or 'json_object'", "input": "json_schema"}]
            if self.reject_status == 422:
                return JSONResponse({"detail": detail}, status_code=422)
            return JSONResponse({"error": {"message": f"1 validation error: {detail[0]}", "type": "internal_server_error"}},
                                status_code=self.reject_status)
        reply = self._choose(req)
        req.reply = reply
        mean, jitter = self.latency
        delay = reply.delay_s + (max(0.0, mean + self._rng.uniform(-jitter, jitter)) if mean or jitter else 0.0)
        req.delay_s = delay
        if delay:
            with self._lock:
                generation = self._generation
                self._delayed += 1
                self.peak_concurrent = max(self.peak_concurrent, self._delayed)
            try:
                await asyncio.sleep(delay)
            finally:
                with self._lock:
                    if generation == self._generation:
                        self._delayed -= 1
        if reply.drop:
            raise _Drop()
        if reply.echo_key:  # a hostile server: echo the key wherever the client may keep it
            key = (req.authorization or "").removeprefix("Bearer ")
            reply = Reply(**{**vars(reply), "echo_key": False, "content": reply.content.replace("{key}", key),
                             "model": (reply.model or self.model).replace("{key}", key)})
        if reply.status != 200:
            return JSONResponse(
                {"error": {"message": reply.content, "type": "scripted", "code": reply.status}},
                status_code=reply.status,
                headers=reply.headers,
            )
        if reply.body is not None:
            return Response(reply.body, media_type="application/json", headers=reply.headers)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        pt = reply.prompt_tokens if reply.prompt_tokens is not None else max(1, prompt_chars // 4)
        ct = reply.completion_tokens if reply.completion_tokens is not None else max(1, len(reply.content) // 4)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.calls is not None:
            message = {"role": "assistant", "content": reply.content or None, "tool_calls": [
                {"id": f"call_{len(self.requests)}_{k}", "type": "function",
                 "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                for k, (name, args) in enumerate(reply.calls)]}
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }
        if reply.trickle_s:
            data = json.dumps(payload).encode()

            async def trickle():
                for i in range(len(data)):
                    yield data[i:i + 1]
                    await asyncio.sleep(reply.trickle_s / len(data))

            return StreamingResponse(trickle(), headers={**reply.headers, "content-type": "application/json",
                                                         "content-length": str(len(data))})
        return JSONResponse(payload, headers=reply.headers)

    async def _debug_requests(self, request: Request) -> JSONResponse:
        """Requests seen so far (agent, step, injected delay); ``DELETE`` clears them."""
        with self._lock:
            out = [{"agent": r.agent, "step": r.step, "delay_s": r.delay_s} for r in self.requests]
            if request.method == "DELETE":
                self.requests.clear()
        return JSONResponse(out)

    def _app(self) -> Any:
        app = Starlette(routes=[
            Route("/_debug/requests", self._debug_requests, methods=["GET", "DELETE"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
        ])

        async def asgi(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = False

            async def guarded_send(msg: dict) -> None:
                nonlocal started
                if msg["type"] == "http.response.start":
                    started = True
                await send(msg)

            try:
                await app(scope, receive, guarded_send)
            except _Drop:
                # start a response, send half a body, then die: uvicorn closes the socket
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
                await send({"type": "http.response.body", "body": b'{"id": "cut', "more_body": True})
                raise RuntimeError("scripted connection drop") from None

        return asgi

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "ScriptedOpenAIServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="critical", access_log=False, lifespan="off",
                                backlog=2048, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("scripted OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "ScriptedOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve in the foreground (a separate process, e.g. for benchmarks); prints the base URL."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("MEAN_S", "JITTER_S"))
    ap.add_argument("--reply", default="{}", help="JSON text every request gets")
    ap.add_argument("--reject-json-schema", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    srv = ScriptedOpenAIServer(latency=tuple(args.latency), reject_json_schema=args.reject_json_schema, seed=args.seed)
    srv.default = Reply.text(args.reply)
    with srv:
        print(srv.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
