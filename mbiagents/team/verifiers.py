"""Verifiers: who decides that a deliverable is accepted (and its escrow posted).

A verifier is any callable ``(task, deliverable) -> bool | Verdict | (bool, reason)``,
sync or async. Two are built in:

- :func:`command`: a test command; the deliverable is written to a file whose path is
  in ``$MBI_DELIVERABLE`` (and substituted for ``{deliverable}`` in the arguments); exit
  status 0 accepts;
- :func:`human`: human approval through LangGraph ``interrupt()``: the graph stops with
  ``{"verify": {task, agent, deliverable}}``; resume with ``Command(resume=True)``,
  ``False`` or ``{"accepted": bool, "reason": str}``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from mbiagents.team.types import Task, Verdict


def as_verdict(result: Any) -> Verdict:
    """Read a verifier's answer: ``Verdict``, bool, ``(bool, reason)`` or a mapping."""
    if isinstance(result, Verdict):
        return result
    if isinstance(result, bool):
        return Verdict(accepted=result)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        return Verdict(accepted=result[0], reason=str(result[1]))
    if isinstance(result, dict) and isinstance(result.get("accepted"), bool):
        return Verdict(accepted=result["accepted"], reason=str(result.get("reason", "")))
    raise TypeError(f"a verifier returned {result!r}: expected a bool, a Verdict, (bool, reason) "
                    "or {'accepted': bool, 'reason': str}")


async def run_verifier(verifier: Callable[..., Any], task: Task, deliverable: Any, agent: str) -> Verdict:
    fn = getattr(verifier, "averify", None)
    if fn is not None:
        return as_verdict(await fn(task, deliverable, agent))
    if inspect.iscoroutinefunction(verifier) or inspect.iscoroutinefunction(getattr(verifier, "__call__", None)):
        return as_verdict(await verifier(task, deliverable))
    return as_verdict(verifier(task, deliverable))


def _text(deliverable: Any) -> str:
    return deliverable if isinstance(deliverable, str) else json.dumps(deliverable, sort_keys=True, default=str)


class command:
    """Accept when ``args`` exits 0 (timeout ``timeout_s``: reject). ``{deliverable}`` in an
    argument becomes the path of the deliverable's file (also ``$MBI_DELIVERABLE``)."""

    def __init__(self, args: Sequence[str], *, cwd: str | os.PathLike | None = None, timeout_s: float = 120.0):
        self.args, self.cwd, self.timeout_s = list(args), cwd, timeout_s

    async def averify(self, task: Task, deliverable: Any, agent: str) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="mbi-verify-") as tmp:
            path = Path(tmp) / f"{task.id}.txt"
            path.write_text(_text(deliverable), encoding="utf-8")
            args = [a.replace("{deliverable}", str(path)) for a in self.args]
            env = {**os.environ, "MBI_DELIVERABLE": str(path), "MBI_TASK_ID": task.id, "MBI_AGENT": agent}
            proc = await asyncio.create_subprocess_exec(*args, cwd=self.cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return Verdict(accepted=False, reason=f"{args[0]}: timed out after {self.timeout_s:g} s")
        tail = out.decode(errors="replace").strip().splitlines()[-1:] if out else []
        return Verdict(accepted=proc.returncode == 0,
                       reason=f"{args[0]} exited {proc.returncode}" + (f": {tail[0][:200]}" if tail else ""))


class human:
    """Human approval: ``interrupt({"verify": ...})``; the resume value is the verdict."""

    async def averify(self, task: Task, deliverable: Any, agent: str) -> Verdict:
        from langgraph.types import interrupt

        answer = interrupt({"verify": {"task": task.model_dump(mode="json"), "agent": agent,
                                       "deliverable": deliverable}})
        return as_verdict(answer)


def accept_all(task: Task, deliverable: Any) -> Verdict:
    """Accept every deliverable that is not empty (the default verifier)."""
    empty = deliverable is None or (isinstance(deliverable, (str, list, dict)) and not deliverable)
    return Verdict(accepted=not empty, reason="empty deliverable" if empty else "")
