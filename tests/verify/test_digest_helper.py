"""The audit's digest helper (``digests.DigestWorker``) is an optimisation only: a helper that
cannot start or dies mid-audit leaves the report exactly as an audit without it, with a
warning; a ledger tampered in a round the helper digests fails as it does without it."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import text

from mbiagents.ledger.digests import DigestWorker
from mbiagents.ledger.schema import open_ledger
from mbiagents.ledger.store import ROUND_TRANSFERS_SQL, Ledger, make_engine
from mbiagents.runner import run_scenario
from mbiagents.verify import audit as audit_module

from tests.conftest import drop_append_only_triggers
from tests.verify.test_audit_grade import TAMPER
from tests.verify.test_audit_window import ROUNDS, _scenario, team_ledger  # noqa: F401 - the fixture


def _report(url: str, run_id: str) -> dict:
    ledger = open_ledger(url)
    try:
        return audit_module.audit_run(ledger, run_id).as_json()
    finally:
        ledger.dispose()


def _helper_from_the_first_round(monkeypatch, worker_class=DigestWorker) -> list:
    started: list = []

    class Counted(worker_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(audit_module, "DigestWorker", Counted)
    monkeypatch.setattr(audit_module, "DIGEST_WORKER_TRANSFERS", 0)
    monkeypatch.setattr(audit_module, "_cpus", lambda: 2)
    return started


def _tampered_copy_and_report_here(team_ledger, tmp_path, monkeypatch, case: str,  # noqa: F811
                                   tampers: dict = TAMPER) -> tuple[str, str, dict]:
    """A copy of the team ledger, tampered by ``tampers[case]`` (unless ``"clean"``): its URL,
    run id, and its audit report with every round digested in this process."""
    src, run_id = team_ledger
    dst = tmp_path / "ledger.db"
    shutil.copy(src, dst)
    url = f"sqlite:///{dst}"
    if case != "clean":
        engine = make_engine(url)
        drop_append_only_triggers(engine)
        with engine.begin() as conn:
            tampers[case][0](conn, run_id)
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

    def no_interpreter(*args, **kwargs):
        raise FileNotFoundError("no python to start")

    monkeypatch.setattr(audit_module, "DigestWorker", no_interpreter)
    monkeypatch.setattr(audit_module, "DIGEST_WORKER_TRANSFERS", 0)
    monkeypatch.setattr(audit_module, "_cpus", lambda: 2)
    with pytest.warns(RuntimeWarning, match="no python to start"):
        assert json.dumps(_report(url, run_id), sort_keys=True) == json.dumps(here, sort_keys=True)


def _rounds_read_here(monkeypatch) -> list[int]:
    """The rounds whose transfers the audit's own process reads one by one (left unread by the
    round stream: the helper was to read them)."""
    read: list[int] = []
    real = audit_module._RoundDigests._read

    def counted(self, r):
        if r.unread:
            read.append(r.index)
        real(self, r)

    monkeypatch.setattr(audit_module._RoundDigests, "_read", counted)
    return read


def _tamper_newline(conn, run_id):
    conn.execute(text("update transfers set kind = 'clarke' || char(10) || 'x' where round_index = 7"))


READ_CASES = {**{k: TAMPER[k] for k in ("changed transfer", "deleted transfer", "inserted transfer", "text amount",
                                        "deleted middle round", "changed event")},
              "newline in a field": (_tamper_newline, 7)}


@pytest.mark.parametrize("case", ["clean", *READ_CASES])
def test_the_helper_reads_the_transfers_itself_with_the_same_report(team_ledger, tmp_path, monkeypatch,  # noqa: F811
                                                                     case):
    """The team market's audit reads only each round's transfer count; the helper reads the
    rows itself and sums the payments. Clean: this process reads no round's transfers; a
    tampered round it cannot digest, or that is not clean, is read here, and the report is
    the report of an audit that reads every row in one process."""
    url, run_id, here = _tampered_copy_and_report_here(team_ledger, tmp_path, monkeypatch, case, READ_CASES)
    started = _helper_from_the_first_round(monkeypatch)
    monkeypatch.setattr(audit_module, "DIGEST_STEAL_BACKLOG", 10**9)  # none digested here however far behind
    read_here = _rounds_read_here(monkeypatch)
    helped = _report(url, run_id)
    worker = started[0]
    assert worker.reading and worker.sent == here["rounds"] and worker.read == worker.sent
    assert json.dumps(helped, sort_keys=True) == json.dumps(here, sort_keys=True)
    assert helped["ok"] == (case == "clean")
    # read here: a tampered round whose transfers cannot be digested as columns (then checked row by row);
    # a changed amount, a deleted row or one between accounts of the run leaves them clean, and only breaks the hash
    assert read_here == ([READ_CASES[case][1]] if case in ("text amount", "newline in a field") else [])


@pytest.mark.postgres
def test_the_helper_reads_a_postgresql_ledger_with_the_same_report(pg_url, monkeypatch):
    """On PostgreSQL the helper connects with the ledger URL's fields and reads each round's
    transfers itself: clean and tampered, the report of an audit that reads every row here."""
    run_id = run_scenario(_scenario("shared_capacity.toml"), ledger_url=pg_url, rounds=ROUNDS, checkpoint=False).run_id
    engine = make_engine(pg_url)
    drop_append_only_triggers(engine)
    for case in ("clean", "changed transfer", "deleted transfer"):
        if case != "clean":
            with engine.begin() as conn:
                TAMPER[case][0](conn, run_id)
        with monkeypatch.context() as m:
            m.setattr(audit_module, "_cpus", lambda: 1)
            here = _report(pg_url, run_id)
        with monkeypatch.context() as m:
            started = _helper_from_the_first_round(m)
            m.setattr(audit_module, "DIGEST_STEAL_BACKLOG", 10**9)
            read_here = _rounds_read_here(m)
            helped = _report(pg_url, run_id)
        assert started[0].reading and started[0].sent == here["rounds"] and not read_here
        assert json.dumps(helped, sort_keys=True) == json.dumps(here, sort_keys=True)
        assert helped["ok"] == (case == "clean")
    engine.dispose()


def test_a_helper_that_cannot_open_the_ledger_leaves_its_rounds_to_this_process(team_ledger, tmp_path,  # noqa: F811
                                                                               monkeypatch):
    url, run_id, here = _tampered_copy_and_report_here(team_ledger, tmp_path, monkeypatch, "changed transfer")
    gone = ("sqlite3", [f"file:{tmp_path / 'gone.db'}?mode=ro"], {"uri": True}, ROUND_TRANSFERS_SQL, None)
    monkeypatch.setattr(Ledger, "row_source", lambda self: gone)
    started = _helper_from_the_first_round(monkeypatch)
    monkeypatch.setattr(audit_module, "DIGEST_STEAL_BACKLOG", 10**9)  # every round goes there
    read_here = _rounds_read_here(monkeypatch)
    helped = _report(url, run_id)
    ledger = open_ledger(url)
    with_transfers = [r.index for r in ledger.iter_rounds(run_id, transfers=False) if r.unread]
    ledger.dispose()
    assert started[0].reading and started[0].sent == here["rounds"]
    assert read_here == with_transfers  # each answered "cannot": read here
    assert json.dumps(helped, sort_keys=True) == json.dumps(here, sort_keys=True)
