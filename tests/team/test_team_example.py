"""examples/team_python.py runs offline (loopback scripted model) and its run audits."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import EXAMPLES, ROOT


def test_team_python_example(sqlite_url):
    out = subprocess.run([sys.executable, str(EXAMPLES / "team_python.py"), "--ledger", sqlite_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fizzbuzz   by coder      accepted" in out.stdout
    assert "audit: pass" in out.stdout
