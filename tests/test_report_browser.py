"""End to end: a report opened in headless Chromium loads every image and touches no network."""

from __future__ import annotations

import struct
from urllib.parse import urlparse

import pytest

from mbiagents.ledger.schema import open_ledger
from mbiagents.report import build_report
from mbiagents.runner import run_scenario
from mbiagents.scenario import load_scenario

from tests.cdp_browser import chromium_path, open_page
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="chromium is not installed (CI installs it: apt-get install chromium)")


def test_report_opens_in_chromium_with_every_image_and_no_network(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    res = run_scenario(load_scenario(EXAMPLES / "shared_capacity.toml"), ledger_url=url, rounds=8)
    ledger = open_ledger(url)
    report = build_report(ledger, res.run_id, tmp_path / "report")
    ledger.dispose()
    page = open_page(report.index.as_uri())
    assert page.title.startswith("mbi report: shared-capacity")
    assert len(page.images) == 4
    for img in page.images:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
    schemes = {urlparse(u).scheme for u in page.requests}
    assert page.requests and schemes <= {"file", "data"}, sorted(u[:80] for u in page.requests)
    shot = tmp_path / "screenshot.png"
    shot.write_bytes(page.screenshot)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", page.screenshot[16:24])
    assert width > 0 and height > 0
