"""Running a coroutine from synchronous code without breaking the caller's event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` to completion and return its result.

    Outside an event loop this is ``asyncio.run``. Inside a running loop (Jupyter, an
    async web server, an async LangGraph node) ``asyncio.run`` would fail, so the
    coroutine runs on a worker thread with a loop of its own while the caller waits;
    its exception, if any, is re-raised in the caller's thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = exc

    worker = threading.Thread(target=target, name="mbi-run-sync")
    worker.start()
    worker.join()
    if "err" in box:
        raise box["err"]
    return box["out"]
