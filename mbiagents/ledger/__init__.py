"""The audit ledger: every report, signal, action and transfer of a run, hash-chained.

Invariants (each is a test and an ``mbi audit`` check of the same name):

- ``double_entry``: every transfer moves a positive integer amount from one account
  (debit) to another (credit) of the same run; balances are derived, and sum to zero.
- ``immutability``: rounds, events, array records and transfers are append-only: there is
  no update or delete path in the code, and database triggers (migrations 0002 and
  0005_compact) refuse both.
- ``idempotency``: transfer ids are deterministic (run, round, kind, debit, credit);
  writing a round again is reported as a duplicate and changes nothing.
- ``atomic_rounds``: a round's events, transfers and hash are one transaction; a killed
  process leaves whole rounds only (``MBI_FAULT``, ``mbiagents.faults``).
- ``hash_chain``: each round's SHA-256 (``store.round_hash``) covers its rows, its array
  records and the previous round's hash; a finished run records its round count and
  last hash.
- ``payments_recompute``: every payment recomputes from the logged reports and actions.
"""

from typing import Any

__all__ = ["MINOR_UNITS", "to_minor_units"]


def __getattr__(name: str) -> Any:
    """``MINOR_UNITS`` and ``to_minor_units`` on first use: importing a ledger module that
    needs neither (``hashing``, ``merkle``: the audit's helper process) loads no NumPy."""
    if name in __all__:
        from mbiagents.ledger import money

        return getattr(money, name)
    raise AttributeError(f"module 'mbiagents.ledger' has no attribute {name!r}")
