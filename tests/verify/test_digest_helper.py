"""The audit's digest helper (``digests.DigestWorker``) is an optimisation only: a helper that
cannot start or dies mid-audit leaves the report exactly as an audit without it, with a
warning; a ledger tampered in a round the helper digests fails as it does without it."""

from __future__ import annotations

import json
import shutil

import pytest

from mbiagents.ledger.digests import DigestWorker
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import make_engine
from mbiagents.verify import audit as audit_module

from tests.conftest import drop_append_only_triggers
from tests.verify.test_audit_grade import TAMPER
from tests.verify.test_audit_window import team_ledger  # noqa: F401 - the fixture


def _report(url: str, run_id: str) -> dict:
    ledger = open_ledger(url)
    try:
        return audit_module.audit_run(ledger, run_id).as_json()
    finally:
        ledger.dispose()


def _helper_from_the_first_round(monkeypatch, worker_class=DigestWorker) -> list:
    started: list = []

    class Counted(worker_class):
        def __init__(self, accounts):
            super().__init__(accounts)
            started.append(self)

    monkeypatch.setattr(audit_module, "DigestWorker", Counted)
    monkeypatch.setattr(audit_module, "DIGEST_WORKER_TRANSFERS", 0)
    monkeypatch.setattr(audit_module, "_cpus", lambda: 2)
    return started


def _tampered_copy_and_report_here(team_ledger, tmp_path, monkeypatch, case: str) -> tuple[str, str, dict]:  # noqa: F811
    """A copy of the team ledger, tampered by ``TAMPER[case]`` (unless ``"clean"``): its URL,
    run id, and its audit report with every round digested in this process."""
    src, run_id = team_ledger
    dst = tmp_path / "ledger.db"
    shutil.copy(src, dst)
    url = f"sqlite:///{dst}"
    if case != "clean":
        engine = make_engine(url)
        drop_append_only_triggers(engine)
        with engine.begin() as conn:
            TAMPER[case][0](conn, run_id)
        engine.dispose()
    with monkeypatch.context() as m:
        m.setattr(audit_module, "_cpus", lambda: 1)
        return url, run_id, _report(url, run_id)


class DiesAfterThree(DigestWorker):
    """A helper killed (out of memory, say) once it has taken three rounds."""

    def submit(self, req):
        if self.sent == 3:
            self.proc.kill()
            self.proc.wait()
        return super().submit(req)


@pytest.mark.parametrize("case", ["clean", "changed transfer", "deleted event"])
def test_a_helper_that_dies_mid_audit_changes_nothing_but_a_warning(team_ledger, tmp_path, monkeypatch, case):  # noqa: F811
    url, run_id, here = _tampered_copy_and_report_here(team_ledger, tmp_path, monkeypatch, case)
    started = _helper_from_the_first_round(monkeypatch, DiesAfterThree)
    with pytest.warns(RuntimeWarning, match="digest helper process failed"):
        helped = _report(url, run_id)
    assert started and started[0].proc.returncode is not None  # it ran, and died
    assert json.dumps(helped, sort_keys=True) == json.dumps(here, sort_keys=True)
    assert helped["ok"] == (case == "clean")


class FallsBehindEveryOtherRound(DigestWorker):
    """A helper that reports itself behind at every other round read: the audit digests
    those rounds itself."""

    def backlog(self) -> int:
        self.asked = getattr(self, "asked", 0) + 1
        return super().backlog() + (10**6 if self.asked % 2 else 0)


@pytest.mark.parametrize("case", ["clean", "changed transfer", "deleted transfer", "changed event"])
def test_rounds_shared_between_the_helper_and_this_process_give_the_same_report(team_ledger, tmp_path,  # noqa: F811
                                                                                monkeypatch, case):
    url, run_id, here = _tampered_copy_and_report_here(team_ledger, tmp_path, monkeypatch, case)
    started = _helper_from_the_first_round(monkeypatch, FallsBehindEveryOtherRound)
    shared = _report(url, run_id)
    worker = started[0]
    assert 0 < worker.sent < here["rounds"] and worker.read == worker.sent  # both digested rounds
    assert json.dumps(shared, sort_keys=True) == json.dumps(here, sort_keys=True)
    assert shared["ok"] == (case == "clean")


def test_a_helper_that_cannot_start_leaves_the_audit_to_this_process(team_ledger, monkeypatch):  # noqa: F811
    src, run_id = team_ledger
    url = f"sqlite:///{src}"
    here = _report(url, run_id)

    def no_interpreter(accounts):
        raise FileNotFoundError("no python to start")

    monkeypatch.setattr(audit_module, "DigestWorker", no_interpreter)
    monkeypatch.setattr(audit_module, "DIGEST_WORKER_TRANSFERS", 0)
    monkeypatch.setattr(audit_module, "_cpus", lambda: 2)
    with pytest.warns(RuntimeWarning, match="no python to start"):
        assert json.dumps(_report(url, run_id), sort_keys=True) == json.dumps(here, sort_keys=True)
