"""A round's hash: the one canonical line encoding of its rows (``round_hash``).

Standard library only: the audit's helper process (``mbiagents.ledger.merkle``) imports it
without the database stack.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence


def round_hash(
    prev_hash: str,
    round_index: int,
    events: Iterable[tuple[int, str, str | None, str]],
    transfers: Iterable[tuple[str, str, str, str, int]],
    *,
    pending: Iterable[tuple[str, str, str, str, int]] = (),
    resolutions: Iterable[tuple[str, str, int]] = (),
    arrays: Iterable[tuple[str, str, str, bytes]] = (),
) -> str:
    """SHA-256 over the previous hash and the round's rows in a canonical line encoding.

    This is the one definition of a round's hash (the write path, the duplicate check and
    the audit all call it). Lines: ``R\\t<index>\\t<prev>``, then
    ``E\\t<seq>\\t<kind>\\t<agent>\\t<payload>`` per event in seq order,
    ``A\\t<name>\\t<dtype>\\t<shape>\\t<sha256 of data>`` per array record in name order,
    ``T\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>`` per transfer in id order, then
    pending transfers (``P\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>``) and resolutions
    (``S\\t<pending id>\\t<state>\\t<amount>``) in id order. Ids, kinds, names and account
    names cannot hold tabs or newlines; payloads are compact JSON, which escapes them. A
    round without arrays, pending transfers or resolutions hashes as before migrations
    ``0003_escrow`` and ``0005_compact``.
    """
    return round_hash_of_lines(prev_hash, round_index, events, transfer_lines(sorted(transfers)), pending=pending,
                               resolutions=resolutions, arrays=arrays)


def transfer_lines(transfers: Iterable[tuple[str, str, str, str, int]]) -> list[str]:
    """The ``T`` lines of the round hash (``T\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>``),
    one per transfer in the order given (``round_hash`` sorts them by id first). The
    Merkle leaves hash the same lines (``mbiagents.ledger.merkle.line_leaves``)."""
    return [f"T\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in transfers]


def transfer_block(columns: Sequence[Sequence]) -> str:
    """``transfer_lines`` joined by newlines, of transfers given column-wise ``(ids, kinds,
    debits, credits, amounts)`` (at least one; the text fields ``str``): the pieces
    interleaved by list slices and joined once, no Python step per row."""
    ids, kinds, debits, credits, amounts = columns
    n = len(ids)
    parts = ["\t"] * (10 * n)  # id \t kind \t debit \t credit \t amount "\nT\t" (the last one dropped)
    parts[0::10], parts[2::10], parts[4::10], parts[6::10] = ids, kinds, debits, credits
    parts[8::10] = map(str, amounts)
    parts[9::10] = ["\nT\t"] * n
    parts[-1] = ""
    return "T\t" + "".join(parts)


def round_hash_of_lines(
    prev_hash: str,
    round_index: int,
    events: Iterable[tuple[int, str, str | None, str]],
    t_lines: list[str],
    *,
    pending: Iterable[tuple[str, str, str, str, int]] = (),
    resolutions: Iterable[tuple[str, str, int]] = (),
    arrays: Iterable[tuple[str, str, str, bytes]] = (),
) -> str:
    """``round_hash`` with the transfers given as their ``transfer_lines`` in id order, so a
    reader that also builds the round's Merkle tree encodes each transfer once."""
    return round_hash_of_block(prev_hash, round_index, events, "\n".join(t_lines).encode(), pending=pending,
                               resolutions=resolutions, arrays=arrays)


def round_hash_of_block(
    prev_hash: str,
    round_index: int,
    events: Iterable[tuple[int, str, str | None, str]],
    t_block: bytes,
    *,
    pending: Iterable[tuple[str, str, str, str, int]] = (),
    resolutions: Iterable[tuple[str, str, int]] = (),
    arrays: Iterable[tuple[str, str, str, bytes]] = (),
) -> str:
    """``round_hash`` with the transfers' ``transfer_lines`` given joined by newlines and
    encoded (``t_block``, ``b""`` for none): the bytes a Merkle tree of the round also reads
    (``merkle.block_root``), hashed in place rather than copied into the round's text."""
    head, tail = round_text_parts(prev_hash, round_index, events, pending=pending, resolutions=resolutions,
                                  arrays=arrays)
    return round_hash_of_parts(head, t_block, tail)


def round_text_parts(
    prev_hash: str,
    round_index: int,
    events: Iterable[tuple[int, str, str | None, str]],
    *,
    pending: Iterable[tuple[str, str, str, str, int]] = (),
    resolutions: Iterable[tuple[str, str, int]] = (),
    arrays: Iterable[tuple[str, str, str, bytes]] = (),
) -> tuple[bytes, bytes]:
    """The round's text before its transfer lines (the ``R``, ``E`` and ``A`` lines) and
    after them (the ``P`` and ``S`` lines, each after a newline), encoded."""
    head = [f"R\t{round_index}\t{prev_hash}"]
    head += [f"E\t{s}\t{k}\t{a or ''}\t{p}" for s, k, a, p in sorted(events)]
    head += [f"A\t{n}\t{d}\t{sh}\t{hashlib.sha256(b).hexdigest()}" for n, d, sh, b in sorted(arrays)]
    tail = [f"P\t{i}\t{k}\t{d}\t{c}\t{m}" for i, k, d, c, m in sorted(pending)]
    tail += [f"S\t{i}\t{st}\t{m}" for i, st, m in sorted(resolutions)]
    return "\n".join(head).encode(), ("\n" + "\n".join(tail)).encode() if tail else b""


def round_hash_of_parts(head: bytes, t_block: bytes, tail: bytes) -> str:
    """SHA-256 (hex) of ``head``, the transfer lines ``t_block`` after a newline (if any),
    and ``tail`` (``round_text_parts``): the round's text, never copied whole."""
    h = hashlib.sha256(head)
    if t_block:
        h.update(b"\n")
        h.update(t_block)
    h.update(tail)
    return h.hexdigest()
