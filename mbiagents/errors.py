"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class MbiError(Exception):
    """Base class: bad input or an unusable environment (exit code 2)."""

    exit_code = 2


class ScenarioError(MbiError):
    """A scenario file is missing, unreadable or invalid (names the file and field)."""


class LedgerError(MbiError):
    """The ledger cannot be reached, is at an old schema, or has no such run."""
