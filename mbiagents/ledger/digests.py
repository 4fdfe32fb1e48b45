"""The audit's digest helper: round hashes, Merkle roots and the transfers' double-entry and
id checks, computed by a process of their own on another core (``DigestWorker``).

A long audit hashes each transfer three times (its round hash, its leaf, its share of the
inner nodes); ``mbiagents.verify.audit`` sends each round here as columns and reads back
its digests some rounds later, in order. Standard library only (and this package's
``hashing``, ``invariants`` and ``merkle``): the helper starts in ~30 ms.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import subprocess
import sys
from array import array
from collections import deque
from pathlib import Path
from typing import BinaryIO

from mbiagents.ledger.hashing import round_hash_of_parts, round_text_parts, transfer_block
from mbiagents.ledger.invariants import transfers_clean
from mbiagents.ledger.merkle import block_root

#: what ``round_digests`` reads: a round's previous hash, index, events, array records and
#: resolutions (``RoundRecord``'s fields; a round with pending transfers is not sent); its
#: transfers column-wise, each text column joined by newlines and the amounts as native
#: int64 bytes, and their number; whether the Merkle root is wanted; the run's id
DigestRequest = tuple[str, int, list, list, list, str, str, str, str, bytes, int, bool, str]


def digest_request(prev: str, index: int, events: list, arrays: list, resolutions: list,
                   columns: tuple[tuple, ...], want_root: bool, run_id: str) -> DigestRequest:
    """The ``DigestRequest`` of a round whose transfers are given column-wise
    (``RoundRecord.columns``) with integer amounts (``OverflowError`` past int64)."""
    if not columns:
        return prev, index, events, arrays, resolutions, "", "", "", "", b"", 0, want_root, run_id
    ids, kinds, debits, credits, amounts = columns
    return (prev, index, events, arrays, resolutions, "\n".join(ids), "\n".join(kinds), "\n".join(debits),
            "\n".join(credits), array("q", amounts).tobytes(), len(ids), want_root, run_id)


def round_digests(req: DigestRequest, accounts: frozenset[str]) -> tuple[str, bytes | None, bool] | None:
    """A round's hash (``hashing.round_hash``), its transfers' Merkle root if asked, and
    whether they are clean (``invariants.transfers_clean`` against the run's ``accounts``);
    ``None`` when a text field holds a newline, so that the columns do not split back into
    the rows (the caller digests that round from its rows)."""
    prev, index, events, arrays, resolutions, ids, kinds, debits, credits, amounts, n, want_root, run_id = req
    columns: tuple = ()
    if n:
        columns = (*(c.split("\n") for c in (ids, kinds, debits, credits)), array("q", amounts))
        if any(len(c) != n for c in columns):
            return None
    head, tail = round_text_parts(prev, index, events, resolutions=resolutions, arrays=arrays)
    block = transfer_block(columns).encode() if n else b""
    return (round_hash_of_parts(head, block, tail), block_root(block) if want_root else None,
            transfers_clean(run_id, index, columns, accounts))


# The protocol between ``DigestWorker`` and ``serve_digests``, over the helper's stdin/stdout:
# each message is a 4-byte big-endian length and a ``marshal`` form: first the run's account
# names (a frozenset), then ``DigestRequest``s; each reply is the round hash (64 hex digits),
# the root (32 bytes; zeros when not asked) and a flag byte (1: clean, 2: digests computed),
# in request order; the helper exits at end of input.
_REPLY = 97


class DigestWorker:
    """``round_digests`` computed by a helper process while the caller goes on.

    ``DigestWorker(accounts)`` starts the helper for a run's account names; ``submit(req)``
    queues a request and returns its ticket; ``result(ticket)`` waits for its
    ``round_digests``; ``backlog()`` says, without waiting, how many requests the helper has
    not answered yet (a caller may digest a round itself rather than queue it behind
    them). Tickets must be redeemed in order. Requests go to the helper without blocking
    the caller while its pipe has room (the rest waits here, up to ``MAX_QUEUED`` bytes
    before ``submit`` waits); while it waits for room it reads the helper's replies, so
    the helper never blocks on its output and neither side can deadlock. A helper that
    dies raises ``OSError`` from either call.
    """

    MAX_QUEUED = 8 << 20  # bytes of requests held here when the helper falls behind

    def __init__(self, accounts: frozenset[str]) -> None:
        # isolated (``-I``: no site, no environment): the helper imports this module and the
        # standard library only, from where this process found it, and starts in ~30 ms; it
        # runs niced, as it has slack (the caller runs ahead) where the caller and a
        # database server on the same machine have none
        root = str(Path(__file__).resolve().parents[2])
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from mbiagents.ledger.digests import serve_digests; serve_digests()")
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0)
        self.fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        self.out = self.proc.stdout.fileno()  # type: ignore[union-attr]
        _widen_pipe(self.fd)
        os.set_blocking(self.fd, False)
        self.replies = bytearray()  # replies read, not yet redeemed
        self.queue: deque[memoryview] = deque()  # the unwritten rest of the requests submitted
        self.queued = 0  # bytes in ``queue``
        self.submitted = 0  # bytes of all requests
        self.sent = self.read = 0
        self._send(marshal.dumps(frozenset(accounts)))

    def submit(self, req: DigestRequest) -> int:
        """Queue ``req`` (``ValueError``: a field of a type ``marshal`` has no form for)."""
        self._send(marshal.dumps(req))
        self.sent += 1
        return self.sent - 1

    def _send(self, data: bytes) -> None:
        self.queue.append(memoryview(len(data).to_bytes(4, "big") + data))
        self.queued += len(self.queue[-1])
        self.submitted += len(self.queue[-1])
        self._pump(self.MAX_QUEUED)

    def result(self, ticket: int) -> tuple[str, bytes | None, bool] | None:
        if ticket != self.read:
            raise ValueError(f"digest {ticket} asked for out of order (next is {self.read})")
        self._pump(0)  # the helper must have every request asked for (and those before it)
        while len(self.replies) < _REPLY:
            self._read_replies()
        reply = bytes(self.replies[:_REPLY])
        del self.replies[:_REPLY]
        self.read += 1
        if not reply[96] & 2:
            return None
        return reply[:64].decode(), reply[64:96], bool(reply[96] & 1)

    def backlog(self) -> int:
        """Requests submitted whose replies have not come (those that have are read, without waiting)."""
        while select.select([self.out], [], [], 0)[0] and self._read_replies():
            pass
        return self.sent - self.read - len(self.replies) // _REPLY

    def _read_replies(self) -> bool:
        """Read the replies the helper has written (waiting for one if none has come);
        ``OSError`` if it exited."""
        data = os.read(self.out, 1 << 16)
        if not data:
            raise OSError(f"the digest helper process exited (code {self.proc.poll()})")
        self.replies += data
        return True

    def _pump(self, keep: int) -> None:
        """Write queued bytes while the pipe takes them; wait for room while more than
        ``keep`` bytes remain queued, reading the helper's replies meanwhile."""
        while self.queue:
            head = self.queue[0]
            try:
                n = os.write(self.fd, head)
            except BlockingIOError:
                if self.queued <= keep:
                    return
                if self.out in select.select([self.out], [self.fd], [])[0]:
                    self._read_replies()
                continue
            self.queued -= n
            if n == len(head):
                self.queue.popleft()
            else:
                self.queue[0] = head[n:]

    def close(self) -> None:
        """End the helper's input and wait for it (killed if it does not exit)."""
        self.queue.clear()
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


def _widen_pipe(fd: int) -> None:
    """Let a pipe hold up to 1 MiB (Linux ``F_SETPIPE_SZ``): the caller runs further ahead
    of the helper before its requests queue up. Elsewhere, or refused: the default size."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError, AttributeError):
        pass


def serve_digests(inp: BinaryIO | None = None, out: BinaryIO | None = None) -> None:
    """The helper's loop: the run's accounts, then ``round_digests`` of each request read,
    until end of input (or a message cut short: the caller stopped mid-audit). It runs
    niced and leaves Ctrl-C to the caller, which ends it by closing its input."""
    inp, out = inp or sys.stdin.buffer, out or sys.stdout.buffer
    os.nice(5)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def message() -> object:
        head = inp.read(4)
        body = inp.read(int.from_bytes(head, "big")) if len(head) == 4 else b""
        if len(head) != 4 or len(body) != int.from_bytes(head, "big"):
            return None
        return marshal.loads(body)

    accounts = message()
    while accounts is not None and (req := message()) is not None:
        got = round_digests(req, accounts)  # type: ignore[arg-type]
        if got is None:
            out.write(bytes(_REPLY))
        else:
            h, root, clean = got
            out.write(h.encode() + (root or bytes(32)) + bytes([2 | clean]))
        out.flush()
