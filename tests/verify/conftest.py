"""Fixtures of the audit tests."""

from __future__ import annotations

import pytest

from mbiagents.ledger.digests import DigestWorker
from mbiagents.verify import audit as audit_module


@pytest.fixture(params=["here", "helper"])
def digests_where(request, monkeypatch):
    """Audits in the test digest their rounds in the audit's process, or every round in the
    helper process (``DigestWorker``) from the first: a tampered ledger must fail the
    same checks with the same first failure either way (and the helper must have run)."""
    started: list[DigestWorker] = []

    class Counted(DigestWorker):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(audit_module, "DigestWorker", Counted)
    if request.param == "helper":
        monkeypatch.setattr(audit_module, "DIGEST_WORKER_TRANSFERS", 0)
        monkeypatch.setattr(audit_module, "DIGEST_STEAL_BACKLOG", 10**9)  # none digested here however far behind
        monkeypatch.setattr(audit_module, "_cpus", lambda: 2)
    else:
        monkeypatch.setattr(audit_module, "_cpus", lambda: 1)
    yield request.param
    assert bool(started) == (request.param == "helper")
    assert all(w.sent and w.read == w.sent for w in started)  # every round went there and came back
