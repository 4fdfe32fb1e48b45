"""The built-in LLM agent: bids and works through the ``openai`` SDK, with tools.

``LLMAgent(id, settings=LLMSettings(...), tools=[Tool(fn, price=...)])`` is an agent
(``bid``/``work``) whose model settings are its own (endpoint, model, ``max_tokens``,
``price_per_1k_tokens``). Any OpenAI-compatible server works (OpenAI, vLLM, Ollama,
llama.cpp's server, the embedded local model).

- ``bid(task)``: one chat completion asking for ``{"cost": number | null}``; an answer
  that is not valid JSON, has other fields or a number out of range is re-asked with the
  error (``validation_retries`` times), then the bid raises, which the market logs as a
  rejected bid (the agent abstains; nothing is dropped silently).
- ``work(task)``: a function-calling loop (``tools=`` in the request, ``tool`` role
  replies) of at most ``max_steps`` model calls; the final assistant text is the
  deliverable. A call to an unknown tool, arguments that are not JSON or fail the tool's
  signature, or a tool that raises, are answered to the model as an error message (the
  loop goes on); no final answer within ``max_steps`` fails the work (rejected, unpaid).

Budget: each model call reserves ``(prompt estimate + max_tokens) x price`` before it is
sent and is charged its reported usage (``prompt + completion tokens``) after; each tool
call reserves and is charged the tool's ``price``. With policy ``warn`` a model call that
does not fit gets fewer ``max_tokens``. Every call (tokens, model, tool name) is in the
round's ``usage`` event.

Connections: an agent keeps one ``AsyncOpenAI`` client (one connection pool) per event
loop for all its calls there, so its bids, work steps and tool rounds reuse their
connections (no new TCP or TLS handshake per call); the market closes it at the end of a
run (``aclose``), or, when another run on the same loop is still inside a bid or a work
with it, as soon as that one leaves.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from mbiagents.ledger.money import MINOR_UNITS
from mbiagents.llm_settings import LLMSettings
from mbiagents.team.agent import WorkContext
from mbiagents.team.budget import BudgetExceeded, minor
from mbiagents.team.types import Budget, Task

TOOL_OUTPUT_CHARS = 4000


def _args_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation if p.annotation is not p.empty else Any
        fields[p.name] = (ann, ... if p.default is p.empty else p.default)
    return create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)


@dataclass
class Tool:
    """A function the model may call. ``parameters`` (JSON schema) and validation come from
    the function's signature; ``price`` (units per call) is charged to the agent's budget."""

    fn: Callable[..., Any]
    name: str = ""
    description: str = ""
    price: float = 0.0
    args: type[BaseModel] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.fn.__name__
        self.description = self.description or (inspect.getdoc(self.fn) or "").split("\n")[0]
        self.args = _args_model(self.fn, self.name)

    def spec(self) -> dict[str, Any]:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": schema}}

    def parse(self, arguments: str) -> dict[str, Any] | str:
        """The model's raw ``arguments`` text as validated keyword arguments, or the error text."""
        try:
            values = self.args.model_validate(json.loads(arguments or "{}"))
        except (ValueError, ValidationError) as exc:
            return f"error: invalid arguments for {self.name}: {str(exc)[:500]}"
        return {k: getattr(values, k) for k in type(values).model_fields}

    async def call(self, kwargs: dict[str, Any]) -> str:
        """Run the tool on validated arguments; its failure comes back as text."""
        try:
            out = self.fn(**kwargs) if not inspect.iscoroutinefunction(self.fn) else await self.fn(**kwargs)
            if inspect.isawaitable(out):
                out = await out
        except Exception as exc:  # noqa: BLE001 - the model sees the tool's failure
            return f"error: {self.name} raised {type(exc).__name__}: {str(exc)[:500]}"
        text = out if isinstance(out, str) else json.dumps(out, default=str)
        return text if len(text) <= TOOL_OUTPUT_CHARS else text[:TOOL_OUTPUT_CHARS] + "...[truncated]"


class _Bid(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    cost: float | None = Field(description="your cost estimate for the task, or null to abstain")


def _task_text(task: Task) -> str:
    lines = [f"Task {task.id}: {task.description}", f"Value to the team: {task.value:g}"]
    if task.acceptance:
        lines.append("Acceptance criteria:\n" + "\n".join(f"- {c}" for c in task.acceptance))
    if task.data:
        lines.append("Inputs: " + json.dumps(task.data, sort_keys=True))
    return "\n".join(lines)


@dataclass
class LLMAgent:
    """An agent backed by a chat model with tools (see the module docstring)."""

    id: str
    settings: LLMSettings = field(default_factory=lambda: LLMSettings(backend="custom", base_url="http://127.0.0.1:8080/v1"))
    tools: list[Tool | Callable[..., Any]] = field(default_factory=list)
    persona: str = ""
    budget: Budget | None = None
    capacity: int = 1
    max_steps: int = 6

    _clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False)
    # id(client) -> its bids and works in progress; the clients to close once unused
    _users: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _closing: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.tools = [t if isinstance(t, Tool) else Tool(t) for t in self.tools]
        self._tools = {t.name: t for t in self.tools}

    def client(self):
        """This agent's ``AsyncOpenAI`` client on the running event loop: made on first use,
        then every call of the agent there shares its connection pool (a pool belongs to
        the loop that opened its connections, so another loop gets its own client)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed():
            from openai import AsyncOpenAI

            from mbiagents.agents.llm import NO_KEY

            s = self.settings
            client = self._clients[loop] = AsyncOpenAI(api_key=s.api_key() or NO_KEY, base_url=s.base_url,
                                                       timeout=s.timeout_s, max_retries=s.max_retries)
        return client

    async def aclose(self) -> None:
        """Close this agent's client on the running loop (its connections); the next call
        opens a new one. ``TaskMarket`` calls it when a run ends or pauses; a bid or work
        of another run still using the client keeps it open until it returns."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is None:
            return
        if self._users.get(id(client)):
            self._closing[id(client)] = client
        else:
            await client.close()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        """The client for one bid or one work (all its model calls), counted as in use."""
        client = self.client()
        key = id(client)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield client
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                if (closing := self._closing.pop(key, None)) is not None:
                    await closing.close()

    def _system(self) -> str:
        return (f"You are agent {self.id} of a team. {self.persona}".strip() +
                " Tasks are awarded by a VCG auction: bidding your true cost is your best strategy; "
                "you are paid only if your deliverable passes the acceptance criteria.")

    async def _complete(self, client, ctx: WorkContext, messages: list[dict[str, Any]], step: str,
                        **kw: Any):
        """One chat completion with a budget reservation, charged its reported usage."""
        s = self.settings
        per_token = s.price_per_1k_tokens / 1000.0
        prompt_est = sum(len(json.dumps(m)) for m in messages) // 2 + 16
        want = (prompt_est + s.max_tokens) * per_token
        with ctx.charge(reserve=want, what="model", shrinkable=True) as c:
            c.actual = 0.0  # a failed request is charged nothing
            max_tokens = s.max_tokens
            if per_token > 0 and c.reserved < minor(want):
                max_tokens = int(c.reserved / MINOR_UNITS / per_token) - prompt_est
                if max_tokens < 1:
                    raise BudgetExceeded(self.id, minor(want), c.reserved)
            resp = await client.chat.completions.create(
                model=s.effective_model, messages=messages, temperature=s.temperature, max_tokens=max_tokens,
                extra_headers={"x-mbi-agent": self.id, "x-mbi-step": step}, **kw)
            pt = int(resp.usage.prompt_tokens or 0) if resp.usage else 0
            ct = int(resp.usage.completion_tokens or 0) if resp.usage else 0
            c.actual = (pt + ct) * per_token
            c.info = {"model": resp.model or s.effective_model, "prompt_tokens": pt, "completion_tokens": ct,
                      "max_tokens": max_tokens}
        return resp

    async def bid(self, task: Task, ctx: WorkContext) -> float | None:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system()},
            {"role": "user", "content": _task_text(task) + '\n\nAnswer with only the JSON object '
             '{"cost": <your cost estimate in payment units, a number>} or {"cost": null} to abstain.'}]
        async with self._session() as client:
            return await self._bid_with(client, ctx, messages)

    async def _bid_with(self, client: Any, ctx: WorkContext, messages: list[dict[str, Any]]) -> float | None:
        from mbiagents.agents.llm import extract_json

        errors: list[str] = []
        for _ in range(self.settings.validation_retries + 1):
            resp = await self._complete(client, ctx, messages, "bid")
            text = (resp.choices[0].message.content or "") if resp.choices else ""
            try:
                return _Bid.model_validate(extract_json(text)).cost
            except (ValueError, ValidationError) as exc:
                errors.append(str(exc).splitlines()[0][:200])
                messages = messages[:2] + [{"role": "assistant", "content": text[:1000]},
                                           {"role": "user", "content": f"Rejected: {errors[-1]}. Reply with "
                                            "only the JSON object."}]
        raise ValueError(f"no valid bid after {len(errors)} answers: {errors[-1]}")

    async def work(self, task: Task, ctx: WorkContext) -> str:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self._system()},
                                          {"role": "user", "content": _task_text(task) +
                                           "\n\nUse the tools if they help; then answer with the deliverable."}]
        async with self._session() as client:
            return await self._work_with(client, ctx, messages)

    async def _work_with(self, client: Any, ctx: WorkContext, messages: list[dict[str, Any]]) -> str:
        specs = [t.spec() for t in self.tools]
        for _ in range(self.max_steps):
            resp = await self._complete(client, ctx, messages, "work", **({"tools": specs} if specs else {}))
            if not resp.choices:
                raise RuntimeError("the model returned no choices")
            msg = resp.choices[0].message
            calls = msg.tool_calls or []
            if not calls:
                return msg.content or ""
            messages.append({"role": "assistant", "content": msg.content,
                             "tool_calls": [{"id": c.id, "type": "function",
                                             "function": {"name": c.function.name,
                                                          "arguments": c.function.arguments}} for c in calls]})
            results = await asyncio.gather(*(self._run_tool(ctx, c.function.name, c.function.arguments)
                                             for c in calls))
            messages += [{"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results)]
        raise RuntimeError(f"no final answer within {self.max_steps} model calls")

    async def _run_tool(self, ctx: WorkContext, name: str, arguments: str) -> str:
        tool = self._tools.get(name)
        if tool is None:
            return f"error: unknown tool {name!r} (tools: {', '.join(self._tools) or 'none'})"
        kwargs = tool.parse(arguments)
        if isinstance(kwargs, str):
            return kwargs  # not run, not charged
        with ctx.charge(reserve=tool.price, what=f"tool:{name}") as c:
            c.actual = tool.price
            return await tool.call(kwargs)
