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


def test_mbi_run_of_a_team_file_says_to_use_python(sqlite_url):
    from typer.testing import CliRunner

    from mbiagents.cli import app

    res = CliRunner().invoke(app, ["run", str(EXAMPLES / "team_tasks.toml"), "--ledger", sqlite_url])
    assert res.exit_code == 2 and "runs from Python" in res.output
    assert "Traceback" not in res.output
