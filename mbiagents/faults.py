"""Fault injection for crash tests: ``MBI_FAULT=POINT:ROUND`` kills the process there.

The one place that reads ``MBI_FAULT``. When set to e.g. ``settle:3``, the process exits
immediately (``os._exit(70)``: no cleanup, no commit, no checkpoint flush) the first time
code reaches ``fault_point("settle", 3)``. Points:

- ``mechanism:N``: after round N's mechanism node, before its settlement;
- ``settle:N``: inside round N's ledger transaction, after its events and before its
  transfers and the commit.

Unset (the default), ``fault_point`` costs one dictionary lookup.
"""

from __future__ import annotations

import os

FAULT_ENV = "MBI_FAULT"
FAULT_EXIT_CODE = 70


def fault_point(point: str, round_index: int) -> None:
    """Exit the process with code 70 if ``MBI_FAULT`` names this point and round."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{point}:{round_index}":
        os._exit(FAULT_EXIT_CODE)
