"""The ledger invariants a round's transfers can be checked for column-wise: ``double_entry``
and ``idempotency`` (``mbiagents.ledger``'s docstring). Standard library only: the audit
runs the check in its own process or in its digest helper (``digests.DigestWorker``).
"""

from __future__ import annotations

import operator
from itertools import islice
from typing import Sequence


def transfers_clean(run_id: str, index: int, columns: Sequence[Sequence], accounts: frozenset[str]) -> bool:
    """True if every transfer of round ``index``, given column-wise ``(ids, kinds, debits,
    credits, amounts)`` (``RoundRecord.columns``; empty for none), passes ``double_entry``
    and ``idempotency``: positive integer amounts, two distinct accounts of the run, ids that
    are the deterministic ids of their fields, no id twice (C loops over the columns; a
    Python step per row only to build the expected ids)."""
    if not columns:
        return True
    ids, kinds, debits, credits, amounts = columns
    return (set(map(type, amounts)) == {int} and min(amounts) > 0
            and not any(map(operator.eq, debits, credits))
            and accounts.issuperset(debits) and accounts.issuperset(credits)
            and ids_match(run_id, index, columns)
            and (all(map(operator.lt, ids, islice(ids, 1, None))) or len(set(ids)) == len(ids)))


def ids_match(run_id: str, index: int, columns: Sequence[Sequence]) -> bool:
    """Every id is ``store.transfer_id`` of its fields: the ids joined by newlines equal the
    expected ids joined so (built by list slices and one join), and hold no newline of
    their own (then the pieces pair up)."""
    ids, kinds, debits, credits, _ = columns
    prefix = f"{run_id}:{index}:"
    n = len(ids)
    expected = [":"] * (6 * n)  # kind : debit : credit "\n<prefix>" (the last one dropped)
    expected[0::6], expected[2::6], expected[4::6] = kinds, debits, credits
    expected[5::6] = ["\n" + prefix] * n
    expected[-1] = ""
    try:
        joined = "\n".join(ids)
        return joined == prefix + "".join(expected) and joined.count("\n") == n - 1
    except TypeError:  # a field that is no text: the row by row check names it
        return False
