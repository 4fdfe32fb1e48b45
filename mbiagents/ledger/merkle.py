"""Merkle trees over a round's transfers, after RFC 6962 / RFC 9162 (certificate transparency).

Each round's transfers, in transfer-id order (the order of the round hash), are the leaves:
``leaf = SHA-256(0x00 || line)`` with ``line`` the transfer's line of the round hash
(``T\\t<id>\\t<kind>\\t<debit>\\t<credit>\\t<amount>``); inner nodes are ``SHA-256(0x01 ||
left || right)``, the tree splitting at the largest power of two below the leaf count
(RFC 6962 section 2.1); the root of no leaves is ``SHA-256("")``. The root is signed with
the round head (``mbiagents.ledger.signing``), so one agent can check its own payment
against the signed head with an inclusion proof of ``ceil(log2 n)`` hashes, without the
rest of the ledger.

Standard library only: the audit's digest helper process (``mbiagents.ledger.digests``)
builds the roots with it.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from mbiagents.ledger.hashing import transfer_lines

Transfer = tuple[str, str, str, str, int]  # id, kind, debit, credit, amount


def transfer_line(t: Transfer) -> bytes:
    """The transfer's line of the round hash (``mbiagents.ledger.store.round_hash``)."""
    i, k, d, c, m = t
    return f"T\t{i}\t{k}\t{d}\t{c}\t{m}".encode()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def transfer_leaves(transfers: Iterable[Transfer]) -> list[bytes]:
    """Leaf hashes of a round's transfers in id order (``leaf_hash(transfer_line(t))``)."""
    return line_leaves(transfer_lines(sorted(transfers)))


def line_leaves(lines: list[str], block: bytes | None = None) -> list[bytes]:
    """``leaf_hash`` of each transfer's line of the round hash (``hashing.transfer_lines``):
    the round's lines are encoded and split in one pass, then hashed one SHA-256 each.
    ``block``: the lines joined by newlines and encoded, when the caller has them already
    (the round hash read them: ``hashing.round_hash_of_block``)."""
    if not lines:
        return []
    if block is None:
        block = "\n".join(lines).encode()
    if block.count(b"\n") != len(lines) - 1:  # a line holding a newline (a malformed row): one at a time
        return [leaf_hash(line.encode()) for line in lines]
    return block_leaves(block)


def block_leaves(block: bytes) -> list[bytes]:
    """``leaf_hash`` of each line of ``block``: lines joined by newlines, none inside a line
    (one replace and one split in C, then one SHA-256 per line)."""
    parts = block.replace(b"\n", b"\n\x00").split(b"\n")
    parts[0] = b"\x00" + parts[0]  # (prefixing the first line alone: no copy of the whole block)
    return list(map(_DIGEST, map(hashlib.sha256, parts)))


def block_root(block: bytes) -> bytes:
    """``merkle_root`` of the leaves of ``block`` (``block_leaves``; an empty block has no leaves)."""
    return merkle_root(block_leaves(block) if block else [])


_DIGEST = type(hashlib.sha256()).digest


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 ``MTH`` of the leaf hashes (bottom-up: an odd last node moves up unchanged,
    which is the same tree as the recursive split at the largest power of two)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    sha = hashlib.sha256
    while len(level) > 1:
        nxt = [sha(b"\x01" + left + right).digest() for left, right in zip(level[0::2], level[1::2])]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def round_merkle_root(transfers: Iterable[Transfer]) -> str:
    """Hex Merkle root of a round's transfers (what its signed head carries)."""
    return merkle_root(transfer_leaves(transfers)).hex()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 ``PATH(index, leaves)``: the sibling hashes from the leaf up to the root."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_proof(leaves[:k], index) + [merkle_root(leaves[k:])]
    return inclusion_proof(leaves[k:], index - k) + [merkle_root(leaves[:k])]


def root_from_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2), or ``None`` when
    the proof's shape does not fit a leaf ``index`` of a tree of ``size`` leaves."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
