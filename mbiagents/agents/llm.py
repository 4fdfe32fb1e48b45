"""LLM client: one ``openai.AsyncOpenAI`` per run, structured answers, full call records.

Every model (OpenAI, vLLM, Ollama, llama.cpp's server) is spoken to through the official
``openai`` SDK; the backend is chosen by ``base_url``/``model``/key in
:class:`~mbiagents.llm_settings.LLMSettings`.

What :meth:`LLMClient.ask` guarantees:

* The answer is parsed with pydantic, always. The JSON schema of the answer model is sent
  as ``response_format`` where the server accepts it. The client detects once (on its first
  request) what the server supports and then keeps it: ``json_schema`` (OpenAI, vLLM,
  Ollama) -> ``json_object`` + ``schema`` (llama-cpp-python's server, which answers 422 to
  ``json_schema``) -> ``none`` (prompt-only JSON). A 400/422 to a ``response_format``
  demotes the mode one step; the rejected requests are recorded like any other call.
* Invalid JSON, a missing or extra field, NaN/Infinity, a number outside the caller's
  bounds, a reply cut by ``max_tokens``, or a reply over :data:`MAX_PARSE_CHARS`: the model
  is asked again with the validation error fed back, at most ``validation_retries`` times;
  then the caller's ``fallback`` is returned with ``used_fallback=True``.
* Transport failures (429/5xx/connection/timeouts) are retried by the SDK itself
  (``max_retries``, exponential backoff, ``Retry-After`` honoured); if the SDK gives up,
  the ask ends with the fallback at once (no re-asks: they would just multiply timeouts).
* Every HTTP call made on behalf of an ask is a :class:`CallRecord` (agent, step, attempt,
  model, latency, tokens, cost, error, raw text truncated to :data:`RAW_TEXT_LIMIT`
  characters); the :class:`Answer` carries them, so the caller can write them as ledger
  events.

What a hostile model server cannot do (README, "Security model"):

* get a secret stored or shown: the API key, and the value of every environment variable
  whose name says it is a secret (``*_API_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``),
  is replaced by ``[redacted]`` in the model text as soon as it arrives, so neither the
  records, nor the parsed answer, nor the ledger, export or report can hold it;
* make a stored field unbounded or unstorable: every stored string is cut (``model`` and
  ``finish_reason`` to :data:`FIELD_LIMIT` characters, texts to :data:`RAW_TEXT_LIMIT`),
  lone surrogates (``\\udcff``) become ``?``, token counts are clamped to
  ``[0, MAX_TOKENS_COUNTED]``;
* hold the run: ``timeout_s`` bounds each HTTP request in total (connect, a trickling
  body and all), per agent; a server that cannot even answer the capability probe does
  not serialise the agents behind one another.

Concurrency and cost: one client is shared by all coroutines of a run (LangGraph ``Send``
fan-out): one ``AsyncOpenAI``, one connection pool, one
``asyncio.Semaphore(concurrency)``. The request body is encoded here: a head read from the
settings once, the messages, and the answer schema's ``response_format`` encoded once per
model (no per-call validation of settings or of the SDK's typed parameters; the same bytes
the SDK would send). It goes through the SDK's own ``request`` (its auth, retries, backoff,
``Retry-After`` and status errors) with options copied from a per-client template, over an
httpx client that builds the SDK's requests in one pass and a pool whose idle-socket check
reads a cached socket. The SDK's telemetry headers are not sent. The whole SDK call,
retries included, is bounded by ``timeout_s * (max_retries + 1) + 8 s * max_retries``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from typing import Any, Callable, Generic, Sequence, TypeVar

import httpcore2
import httpx2
import openai
from httpcore2._utils import is_socket_readable
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from mbiagents.llm_settings import LLMSettings

#: Raw model text stored per call (characters); longer text is cut and flagged.
RAW_TEXT_LIMIT = 4000
#: Replies longer than this (characters) are rejected without being parsed.
MAX_PARSE_CHARS = 20_000
#: Length of a validation error message fed back to the model / kept in ``errors``.
ERROR_TEXT_LIMIT = 600
#: Placeholder key for endpoints that need none (local llama.cpp, most vLLM/Ollama).
NO_KEY = "not-needed"
#: Stored length of short server-chosen fields (``model``, ``finish_reason``).
FIELD_LIMIT = 200
#: Token counts above this are stored as this (a server may send any integer).
MAX_TOKENS_COUNTED = 10**9
#: Environment variables whose values are scrubbed from everything kept (besides the key).
SECRET_VAR = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.I)
REDACTED = "[redacted]"

MODES: tuple[str, ...] = ("json_schema", "json_object", "none")

T = TypeVar("T", bound=BaseModel)


class LLMConfigError(RuntimeError):
    """The LLM backend is misconfigured (e.g. the OpenAI backend without an API key)."""


class CallRecord(BaseModel):
    """One HTTP request to the model, as the ledger stores it."""

    model_config = ConfigDict(frozen=True)

    agent_id: str
    step: str
    attempt: int = Field(description="1-based attempt within the ask (re-asks and capability probes count)")
    model: str
    mode: str = Field(description="response_format mode used: json_schema | json_object | none")
    started_at: float = Field(description="unix time the request was sent")
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    raw_text: str = Field(default="", description=f"model text, cut to {RAW_TEXT_LIMIT} chars")
    raw_chars: int = Field(default=0, description="length of the full model text")
    raw_truncated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Answer(BaseModel, Generic[T]):
    """Result of :meth:`LLMClient.ask`: a validated value or the caller's fallback."""

    agent_id: str
    step: str
    value: SerializeAsAny[T]
    used_fallback: bool
    attempts: int = Field(description="model answers obtained and judged")
    errors: list[str] = Field(default_factory=list)
    raw: list[str] = Field(default_factory=list, description="raw texts, each truncated")
    records: list[CallRecord] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.used_fallback

    @property
    def latency_s(self) -> float:
        return sum(r.latency_s for r in self.records)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.records)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.records)

    @property
    def cost(self) -> float:
        return sum(r.cost for r in self.records)


def truncate(text: str, limit: int = RAW_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with a marker when cut)."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"...[truncated {len(text) - limit} chars]"


def clean_text(text: str) -> str:
    """``text`` storable as UTF-8: lone surrogates (e.g. from a ``\\udcff`` escape) become ``?``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _clean_strings(obj: Any) -> Any:
    """``clean_text`` on every string of parsed JSON."""
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, dict):
        return {clean_text(k): _clean_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean_strings(v) for v in obj]
    return obj


def _count(x: Any) -> int:
    """A server's token count as a stored integer in ``[0, MAX_TOKENS_COUNTED]``."""
    try:
        n = int(x or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(n, 0), MAX_TOKENS_COUNTED)


def _short_field(x: Any) -> str | None:
    return None if x is None else truncate(clean_text(str(x)), FIELD_LIMIT)


class Scrubber:
    """Replaces secrets (the API key, secret-looking environment variables) by ``[redacted]``."""

    def __init__(self, key: str | None, env: Any = None) -> None:
        import os

        env = os.environ if env is None else env
        found = {v for k, v in env.items()
                 if SECRET_VAR.search(k) and not k.startswith("MBI_LLM_") and len(v) >= 8}  # MBI_LLM_*: names
        if key and key != NO_KEY and len(key) >= 4:
            found.add(key)
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class _SocketCachingStream(httpcore2.AsyncNetworkStream):
    """A network stream that answers the pool's "is the idle socket readable?" from a cached
    socket. httpcore asks it of every idle connection each time it assigns a request;
    through anyio each answer rebuilds a dict of socket attributes, which made the pool
    check about a third of the client's CPU per call at 64 agents (profiled)."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        return _SocketCachingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._sock is not None:
            return is_socket_readable(self._sock)
        if info == "socket":
            return self._sock
        return self._inner.get_extra_info(info)


class _SocketCachingBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        from httpcore2._backends.auto import AutoBackend

        self._inner = AutoBackend()

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return _SocketCachingStream(await self._inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return _SocketCachingStream(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _DeadlineHttpClient(openai.DefaultAsyncHttpxClient):
    """The SDK's httpx client with a total deadline per request (connect + send + the whole
    body): httpx's own read timeout restarts with every byte, so a trickling server could
    hold a request for ever. A request past the deadline raises ``ReadTimeout``, which the
    SDK treats as any timeout (retry, then ``APITimeoutError``)."""

    def __init__(self, total_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._total_s = total_s
        self._targets: dict[str, httpx2.URL] = {}  # URL string -> parsed target (build_request)
        # the direct (non-proxy) transport's pool, with the socket-caching network backend
        pool = getattr(self._transport, "_pool", None)
        if type(pool) is httpcore2.AsyncConnectionPool:
            self._transport._pool = httpcore2.AsyncConnectionPool(  # type: ignore[attr-defined]
                ssl_context=pool._ssl_context, max_connections=pool._max_connections,
                max_keepalive_connections=pool._max_keepalive_connections, keepalive_expiry=pool._keepalive_expiry,
                http1=pool._http1, http2=pool._http2, network_backend=_SocketCachingBackend())

    def build_request(  # type: ignore[override]
        self, method: str, url: httpx2.URL | str, *, content: Any = None, data: Any = None, files: Any = None,
        json: Any = None, params: Any = None, headers: Any = None, cookies: Any = None,
        timeout: Any = httpx2.USE_CLIENT_DEFAULT, extensions: Any = None,
    ) -> httpx2.Request:
        """httpx's ``build_request``, in one pass for the SDK's shape of request (a URL string,
        a bytes body, a list of header pairs, no params/cookies/files).

        The same request as httpx builds (headers in the same order: ``Host``, the client's
        headers not overridden, the given ones, ``Content-Length``); the target URL is parsed
        once per URL string. httpx's generic path re-parses the URL and re-encodes every
        header about five times: ~160 us of the ~1 ms of client CPU a call had at 64 agents
        (profiled). Any other shape goes to httpx.
        """
        if not (isinstance(url, str) and isinstance(content, bytes) and isinstance(headers, list)
                and data is None and files is None and json is None and not params and not cookies
                and not extensions and not self.cookies and not self.params):
            return super().build_request(
                method, url, content=content, data=data, files=files, json=json, params=params, headers=headers,
                cookies=cookies, timeout=timeout, extensions=extensions)
        if not all(isinstance(k, (str, bytes)) and isinstance(v, (str, bytes)) for k, v in headers):
            return super().build_request(method, url, content=content, headers=headers, timeout=timeout)
        target = self._targets.get(url)
        if target is None:
            target = self._merge_url(url)
            if len(self._targets) < 64 and "://" in url:  # absolute: independent of base_url
                self._targets[url] = target
        given = [(k if isinstance(k, bytes) else k.encode("ascii"), v if isinstance(v, bytes) else v.encode("ascii"))
                 for k, v in headers]
        given_keys = {k.lower() for k, _ in given}
        items = [(k, v) for k, v in self.headers.raw if k.lower() not in given_keys] + given
        keys = {k.lower() for k, _ in items}
        auto: list[tuple[bytes, bytes]] = []
        if b"host" not in keys and target.host:
            auto.append((b"Host", target.netloc))
        sized = b"content-length" in keys or b"transfer-encoding" in keys
        if content and not sized:
            items.append((b"Content-Length", str(len(content)).encode("ascii")))
        elif not content and not sized and method.upper() in ("POST", "PUT", "PATCH", "QUERY"):
            auto.append((b"Content-Length", b"0"))
        limits = self.timeout if isinstance(timeout, type(httpx2.USE_CLIENT_DEFAULT)) else httpx2.Timeout(timeout)
        request = httpx2.Request(method, target, headers=auto + items, stream=httpx2.ByteStream(content),
                                 extensions={"timeout": limits.as_dict()})
        request.read()
        return request

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:  # type: ignore[override]
        try:
            async with asyncio.timeout(self._total_s):
                return await super().send(request, **kwargs)
        except TimeoutError:
            raise httpx2.ReadTimeout(f"no complete answer within {self._total_s:g} s", request=request) from None


#: The SDK's telemetry headers (host OS, architecture, Python and SDK versions, retry count,
#: read timeout): not sent, so a model server learns nothing of the host, and every request
#: carries nine headers fewer through the SDK, httpx and h11.
TELEMETRY_HEADERS: tuple[str, ...] = (
    "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async",
    "X-Stainless-Retry-Count", "X-Stainless-Read-Timeout",
)


class _OpenAI(AsyncOpenAI):
    """``AsyncOpenAI`` whose request URL is merged with ``base_url`` once per path: the SDK
    parses the path and re-parses the merged URL on every request (profiled: about a tenth
    of the client's CPU per call)."""

    @property
    def user_agent(self) -> str:
        return f"AsyncOpenAI/Python {self._version}"  # the SDK's, not this subclass's name

    def _prepare_url(self, url: str) -> httpx2.URL:
        key = (url, str(self.base_url))
        memo: dict[tuple[str, str], httpx2.URL] = self.__dict__.setdefault("_mbi_urls", {})
        target = memo.get(key)
        if target is None:
            target = super()._prepare_url(url)
            if len(memo) < 64:
                memo[key] = target
        return target


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid number")


#: Per-request part of :data:`TELEMETRY_HEADERS` (the SDK adds these unless a request omits them).
_NO_TELEMETRY = {"X-Stainless-Retry-Count": openai.Omit(), "X-Stainless-Read-Timeout": openai.Omit()}

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """Parse the JSON object in a model reply.

    Accepts a bare object, one in a Markdown code fence, or the first ``{...}`` span of
    the text (prompt-only mode). ``NaN``/``Infinity`` are rejected. Raises ``ValueError``.
    """
    if len(text) > MAX_PARSE_CHARS:
        raise ValueError(f"reply too long ({len(text)} chars > {MAX_PARSE_CHARS}); answer with a short JSON object")
    candidates = [text.strip()]
    m = _FENCE.search(text)
    if m:
        candidates.append(m.group(1).strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    last: Exception | None = None
    for cand in candidates:
        if not cand:
            continue
        try:
            value = json.loads(cand, parse_constant=_reject_constant)
            return _clean_strings(value) if "\\u" in cand else value
        except (ValueError, RecursionError) as exc:
            last = exc
    raise ValueError(f"reply is not valid JSON: {last}" if last else "reply is empty")


def _format_validation_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err.get("loc", ())) or "(answer)"
            parts.append(f"{loc}: {err.get('msg')}")
        return truncate("; ".join(parts), ERROR_TEXT_LIMIT)
    return truncate(str(exc), ERROR_TEXT_LIMIT)


def _is_capability_rejection(exc: BaseException) -> bool:
    """Did the server refuse the request's ``response_format``?

    400/422 (OpenAI-style servers, FastAPI validation), or a 5xx whose body names
    ``response_format`` (llama-cpp-python 0.3.36's server wraps its 422 into a 500).
    """
    if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
        return True
    return isinstance(exc, openai.InternalServerError) and "response_format" in str(exc)


def _error_text(exc: BaseException) -> str:
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    msg = str(exc) or name
    return truncate(f"{name}{f' {status}' if status else ''}: {msg}", ERROR_TEXT_LIMIT)


@functools.lru_cache(maxsize=512)
def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The (cached) JSON schema of an answer model. Treat as read-only."""
    return model.model_json_schema()


@functools.lru_cache(maxsize=1024)
def response_format_for(mode: str, schema_model: type[BaseModel]) -> dict[str, Any] | None:
    """The (cached, read-only) ``response_format`` body for a mode (None for prompt-only)."""
    schema = json_schema(schema_model)
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": _schema_name(schema_model), "schema": schema, "strict": True},
        }
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the SDK encodes a request body: compact UTF-8 JSON, NaN/Infinity refused."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=1024)
def response_format_json(mode: str, schema_model: type[BaseModel]) -> bytes:
    """The body's tail for a mode, encoded once per answer model: ``,"response_format":{...}}``
    (``}`` alone for prompt-only), so that a body is ``head + messages + tail``."""
    rf = response_format_for(mode, schema_model)
    return b"}" if rf is None else b',"response_format":' + json_bytes(rf) + b"}"


def _schema_name(model: type[BaseModel]) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "answer"


class _Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool


class LLMClient:
    """One OpenAI-compatible endpoint, shared by all agents of a run.

    Use as ``async with LLMClient(settings) as llm: answer = await llm.ask(...)`` inside one
    event loop. ``base_url`` overrides the settings (the local backend passes the loopback
    URL of its server here).
    """

    def __init__(self, settings: LLMSettings, *, base_url: str | None = None) -> None:
        self.settings = settings
        self.model = settings.effective_model
        url = base_url or settings.base_url
        # a key goes only to a host the user chose (see mbiagents.llm_settings); never to
        # the loopback server of the local backend, which needs none
        key = settings.api_key() if base_url is None and settings.sends_key else None
        if key is None:
            if settings.backend == "openai" and url is None:
                raise LLMConfigError(
                    f"the openai backend needs an API key in ${settings.api_key_env}"
                )
            key = NO_KEY
        self.base_url = url
        self._scrub = Scrubber(settings.api_key() or key)
        self._client = _OpenAI(
            api_key=key,
            base_url=url,
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
            default_headers={name: openai.Omit() for name in TELEMETRY_HEADERS},
            http_client=_DeadlineHttpClient(settings.timeout_s, timeout=httpx2.Timeout(settings.timeout_s)),
        )
        self._sem = asyncio.Semaphore(settings.concurrency)
        self._mode: str | None = None if settings.response_format == "auto" else settings.response_format
        self._mode_lock = asyncio.Lock()
        self._detect_failed = False  # the deciding request failed in transport: others detect unlocked
        # detection requests: no SDK retries, so a 5xx capability refusal is seen at once
        self._client_once = self._client.with_options(max_retries=0)
        self.probe_records: list[CallRecord] = []
        self._call_deadline = settings.timeout_s * (settings.max_retries + 1) + 8.0 * settings.max_retries
        # the request body's constant part, read from the settings once and encoded once
        self._body_head = json_bytes(
            {"model": self.model, "temperature": settings.temperature, "max_tokens": settings.max_tokens}
        )[:-1] + b',"messages":'
        self._options = FinalRequestOptions.construct(method="post", url="/chat/completions",
                                                      security={"bearer_auth": True})
        self._price = settings.price_per_1k_tokens / 1000.0

    @property
    def mode(self) -> str | None:
        """The response_format mode in use (None until the first request decided it)."""
        return self._mode

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "LLMClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ transport
    async def _request(
        self, agent_id: str, step: str, attempt: int, mode: str, messages: list[dict[str, str]],
        schema_model: type[BaseModel], *, detecting: bool = False,
    ) -> tuple[CallRecord, str | None, BaseException | None]:
        """One chat-completions request (with the SDK's own retries). Never raises except on cancel.

        The returned text is already cleaned (storable UTF-8) and scrubbed of secrets.
        """
        started = time.time()
        t0 = time.perf_counter()
        text: str | None = None
        err: BaseException | None = None
        usage_p = usage_c = 0
        finish = None
        model = self.model
        try:
            # the SDK's request options, copied from the client's template (no per-call validation)
            options = self._options.model_copy(update={
                "content": self._body_head + json_bytes(messages) + response_format_json(mode, schema_model),
                "headers": {"x-mbi-agent": agent_id, "x-mbi-step": step, **_NO_TELEMETRY}})
            async with self._sem:
                t0 = time.perf_counter()
                async with asyncio.timeout(self._call_deadline):
                    client = self._client_once if detecting else self._client
                    resp = await client.request(httpx2.Response, options)
                    data = resp.json()  # a plain dict: no SDK model is built from what the server sent
            latency = time.perf_counter() - t0
            if not isinstance(data, dict):
                raise ValueError(f"the server answered a JSON {type(data).__name__}, not an object")
            model = data.get("model") or self.model
            usage = data.get("usage")
            if isinstance(usage, dict):
                usage_p = _count(usage.get("prompt_tokens"))
                usage_c = _count(usage.get("completion_tokens"))
            choices = data.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
            message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            finish = choice.get("finish_reason")
            text = message.get("content") or ""
            if not text and message.get("refusal"):
                text = f"[refusal] {message['refusal']}"
            if not isinstance(text, str):
                text = json.dumps(text)
        except Exception as exc:  # noqa: BLE001 - any transport/SDK failure ends this ask with the fallback
            # (asyncio.CancelledError is a BaseException and propagates)
            latency = time.perf_counter() - t0
            err = exc
            text = None
        if text:
            text = self._scrub(clean_text(text))
        raw = text or ""
        record = CallRecord(
            agent_id=agent_id,
            step=step,
            attempt=attempt,
            model=self._scrub(_short_field(model) or self.model),
            mode=mode,
            started_at=started,
            latency_s=latency,
            prompt_tokens=usage_p,
            completion_tokens=usage_c,
            cost=(usage_p + usage_c) * self._price,
            finish_reason=_short_field(finish),
            error=self._error(err) if err is not None else None,
            raw_text=truncate(raw),
            raw_chars=len(raw),
            raw_truncated=len(raw) > RAW_TEXT_LIMIT,
        )
        return record, text, err

    def _error(self, exc: BaseException) -> str:
        return self._scrub(clean_text(_error_text(exc)))

    async def _detect(
        self, agent_id: str, step: str, attempt: int, messages: list[dict[str, str]], schema_model: type[BaseModel],
        records: list[CallRecord], start: int = 0,
    ) -> tuple[str | None, BaseException | None, int]:
        """Try the modes from ``MODES[start]`` on; the first that is not refused is the client's."""
        text: str | None = None
        err: BaseException | None = None
        for i in range(start, len(MODES)):
            mode = MODES[i]
            last = i + 1 == len(MODES)
            rec, text, err = await self._request(
                agent_id, step, attempt, mode, messages, schema_model, detecting=not last)
            records.append(rec)
            if err is not None and not last:
                if _is_capability_rejection(err):
                    attempt += 1
                    continue  # server refused this response_format: demote
                # some other failure: same request again, now with the SDK's retries
                attempt += 1
                rec, text, err = await self._request(agent_id, step, attempt, mode, messages, schema_model)
                records.append(rec)
            if err is None and self._mode is None:
                self._mode = mode
            break
        return text, err, attempt

    async def _request_detecting(
        self, agent_id: str, step: str, attempt: int, messages: list[dict[str, str]], schema_model: type[BaseModel], records: list[CallRecord]
    ) -> tuple[str | None, BaseException | None, int]:
        """Request with the decided mode; the first request of the client decides it.

        Concurrent first requests wait for the deciding one (the lock is held only while
        the mode is undecided), then go out in parallel. If the deciding request fails in
        transport (a dead or trickling server), the others do not queue behind one another:
        each detects on its own, in parallel, within its own timeout.
        """
        if self._mode is None and not self._detect_failed:
            async with self._mode_lock:
                if self._mode is None and not self._detect_failed:
                    text, err, attempt = await self._detect(agent_id, step, attempt, messages, schema_model, records)
                    if self._mode is None:
                        self._detect_failed = True
                    return text, err, attempt
        if self._mode is None:
            return await self._detect(agent_id, step, attempt, messages, schema_model, records)
        rec, text, err = await self._request(agent_id, step, attempt, self._mode, messages, schema_model)
        records.append(rec)
        return text, err, attempt

    async def probe(self) -> str:
        """Decide the response_format mode now with one tiny request (idempotent).

        Without a probe the first ``ask`` decides it, and concurrent first asks wait for
        that one request (round 1 then takes about two calls' time). The probe's calls are
        kept in :attr:`probe_records` (agent id ``"_probe"``) for the ledger.
        """
        if self._mode is None:
            msgs = [{"role": "user", "content": 'Reply with this JSON object and nothing else: {"ok": true}'}]
            recs: list[CallRecord] = []
            await self._request_detecting("_probe", "probe", 1, msgs, _Probe, recs)
            self.probe_records.extend(recs)
            if self._mode is None:  # transport failure: not decided; leave it to the first ask
                return "undecided"
        return self._mode

    # ------------------------------------------------------------------ ask
    async def ask(
        self,
        *,
        agent_id: str,
        step: str,
        messages: Sequence[dict[str, str]],
        schema: type[T],
        fallback: T,
        check: Callable[[T], None] | None = None,
    ) -> Answer[T]:
        """Ask one agent one question and return a validated answer or the fallback.

        Args:
          agent_id: the agent (recorded; sent as header ``x-mbi-agent``).
          step: the step name, e.g. ``"report"``, ``"act"``, ``"deliver"``.
          messages: chat messages (system + user); the JSON schema of ``schema`` is both
            sent as ``response_format`` (where supported) and expected in the reply.
          schema: pydantic model of the answer; put the caller's bounds in it
            (``Field(ge=..., le=...)``) so that they are in the schema and validated.
          fallback: the value returned when no valid answer is obtained.
          check: optional extra validation; raise ``ValueError`` to reject a value.

        Returns:
          :class:`Answer` with ``value`` (validated or ``fallback``), ``used_fallback``,
          ``errors``, truncated ``raw`` texts and every :class:`CallRecord`.
        """
        convo: list[dict[str, str]] = [dict(m) for m in messages]
        records: list[CallRecord] = []
        errors: list[str] = []
        raws: list[str] = []
        attempt = 0
        answers = 0
        for _ in range(self.settings.validation_retries + 1):
            attempt += 1
            text, err, attempt = await self._request_detecting(agent_id, step, attempt, convo, schema, records)
            if err is not None:
                errors.append(self._error(err))
                break  # the SDK already retried; give up on this ask
            answers += 1
            text = text or ""
            raws.append(truncate(text))
            try:
                if records[-1].finish_reason == "length":
                    raise ValueError("reply was cut by max_tokens (incomplete JSON); answer with a shorter JSON object")
                value = schema.model_validate(extract_json(text))
                if check is not None:
                    check(value)
            except (ValueError, ValidationError) as exc:
                msg = self._scrub(clean_text(_format_validation_error(exc)))
                errors.append(msg)
                records[-1] = records[-1].model_copy(update={"error": f"invalid answer: {msg}"})
                convo = convo[: len(messages)] + [
                    {"role": "assistant", "content": truncate(text, 1000)},
                    {
                        "role": "user",
                        "content": (
                            f"Your answer was rejected: {msg}\n"
                            "Reply again with only one JSON object that matches the schema "
                            "and respects the bounds. No other text."
                        ),
                    },
                ]
                continue
            return Answer[T](
                agent_id=agent_id, step=step, value=value, used_fallback=False,
                attempts=answers, errors=errors, raw=raws, records=records,
            )
        return Answer[T](
            agent_id=agent_id, step=step, value=fallback, used_fallback=True,
            attempts=answers, errors=errors, raw=raws, records=records,
        )


