"""The ledger invariants a round's transfers can be checked for column-wise: ``double_entry``
and ``idempotency`` (``mbiagents.ledger``'s docstring); and the per-agent payments the
audit compares with its recomputation (``agent_payments``). Standard library only: the
audit computes both in its own process or in its digest helper (``digests.DigestWorker``).
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


def agent_payments(columns: Sequence[Sequence], positions: dict[str, int], kind: str) -> dict[int, int]:
    """What each agent paid in a round's transfers of ``kind``, given column-wise ``(ids,
    kinds, debits, credits, amounts)`` (``RoundRecord.columns``; empty for none): ``{position:
    sum of amounts debited to it - sum credited}`` over the agents' accounts ``positions``,
    agents with no such transfer left out (``payments.payment_transfers`` read back)."""
    if not columns:
        return {}
    _, kinds, debits, credits, amounts = columns
    if set(map(type, amounts)) != {int}:  # a tampered amount (text, say) pays nothing: ``double_entry`` names it
        amounts = [a if type(a) is int else 0 for a in amounts]
    if kinds.count(kind) != len(kinds):  # other kinds too: keep this kind's rows
        rows = [(d, c, a) for k, d, c, a in zip(kinds, debits, credits, amounts) if k == kind]
        if not rows:
            return {}
        debits, credits, amounts = zip(*rows)
    paid: dict[int, int] = {}
    for accounts, sign in ((debits, 1), (credits, -1)):
        if accounts[0] not in positions and accounts.count(accounts[0]) == len(accounts):
            continue  # one account that is no agent's (the counterparty): nobody's payment
        at = list(map(positions.get, accounts))
        if not paid and None not in at and len(set(at)) == len(at):  # each agent once: no sums
            paid = dict(zip(at, amounts if sign > 0 else map(operator.neg, amounts)))
            continue
        for i, amount in zip(at, amounts):
            if i is not None:
                paid[i] = paid.get(i, 0) + sign * amount
    return paid
