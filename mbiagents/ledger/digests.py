"""The audit's digest helper: round hashes, Merkle roots and the transfers' double-entry and
id checks, computed by a process of their own on another core (``DigestWorker``).

A long audit hashes each transfer three times (its round hash, its leaf, its share of the
inner nodes); ``mbiagents.verify.audit`` sends each round here, as columns or as the
number of its transfers for the helper to read from the ledger itself, and reads back its
digests (and the agents' payments) some rounds later, in order. Standard library only
(and this package's ``hashing``, ``invariants`` and ``merkle``; the database driver once
the helper reads a PostgreSQL ledger): the helper starts in ~30 ms.
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
from typing import BinaryIO, Callable, NamedTuple

from mbiagents.ledger.hashing import round_hash_of_parts, round_text_parts, transfer_block
from mbiagents.ledger.invariants import agent_payments, transfers_clean
from mbiagents.ledger.merkle import block_root

#: a round's transfers as a request carries them, column-wise: each text column joined by
#: newlines, the amounts as native int64 bytes, and their number
Columns = tuple[str, str, str, str, bytes, int]
#: what ``round_digests`` reads: a round's previous hash, index, events, array records and
#: resolutions (``RoundRecord``'s fields; a round with pending transfers is not sent); its
#: transfers, as ``Columns`` or as their number (an ``int``: the helper reads them from the
#: ledger itself, ``RowSource``); whether the Merkle root is wanted; the run's id
DigestRequest = tuple[str, int, list, list, list, "Columns | int", bool, str]
#: how the helper opens the ledger to read a round's transfers itself: the DB-API module
#: (``sqlite3`` or ``psycopg``), its ``connect`` arguments and keywords, the query of a
#: round's rows ``(id, kind, debit, credit, amount)`` by ``(run_id, round_index)`` in the
#: module's parameter style, and a query with the row it must return on the connection
#: (the same database as the caller's), or ``None`` (``store.Ledger.row_source``)
RowSource = tuple[str, list, dict, str, "tuple[str, tuple] | None"]
#: the agents' accounts in agent order and the payment kind: a reply then carries each
#: agent's payment in the round (``invariants.agent_payments``)
Payer = tuple[list[str], str]


class Digested(NamedTuple):
    """``round_digests`` of a round: its hash (hex), its transfers' Merkle root (``None``
    when not asked), whether they are clean, and the agents' payments (``None`` without a
    ``Payer``)."""

    round_hash: str
    root: bytes | None
    clean: bool
    paid: tuple[array, array] | None  # the agents' positions and what each paid (``agent_payments``)


def digest_request(prev: str, index: int, events: list, arrays: list, resolutions: list,
                   transfers: tuple[tuple, ...] | int, want_root: bool, run_id: str) -> DigestRequest:
    """The ``DigestRequest`` of a round whose transfers are given column-wise
    (``RoundRecord.columns``, integer amounts; ``OverflowError`` past int64), or of one whose
    ``transfers`` (that many) the helper reads from the ledger."""
    if isinstance(transfers, int):
        return prev, index, events, arrays, resolutions, transfers, want_root, run_id
    if not transfers:
        return prev, index, events, arrays, resolutions, ("", "", "", "", b"", 0), want_root, run_id
    ids, kinds, debits, credits, amounts = transfers
    return (prev, index, events, arrays, resolutions, ("\n".join(ids), "\n".join(kinds), "\n".join(debits),
            "\n".join(credits), array("q", amounts).tobytes(), len(ids)), want_root, run_id)


def round_digests(req: DigestRequest, accounts: frozenset[str], payer: dict[str, int] | None = None,
                  kind: str = "", read: Callable[[str, int], list] | None = None) -> Digested | None:
    """A round's hash (``hashing.round_hash``), its transfers' Merkle root if asked, whether
    they are clean (``invariants.transfers_clean`` against the run's ``accounts``) and, given
    the agents' ``payer`` positions, their payments of ``kind`` (``invariants.agent_payments``).
    ``None`` when the transfers cannot be digested as columns: a text field holds a newline,
    a field is not of its column's type (a tampered row), or the rows ``read`` from the
    ledger are not as many as the request says (the caller digests that round from its rows)."""
    prev, index, events, arrays, resolutions, transfers, want_root, run_id = req
    if isinstance(transfers, int):
        columns = _read_columns(read, run_id, index, transfers)
        if columns is None:
            return None
    else:
        ids, kinds, debits, credits, amounts, n = transfers
        columns = ()
        if n:
            columns = (*(c.split("\n") for c in (ids, kinds, debits, credits)), array("q", amounts))
            if any(len(c) != n for c in columns):
                return None
    return columns_digests(prev, index, events, arrays, resolutions, columns, want_root, run_id, accounts, payer, kind)


def columns_digests(prev: str, index: int, events: list, arrays: list, resolutions: list, columns: tuple,
                    want_root: bool, run_id: str, accounts: frozenset[str], payer: dict[str, int] | None = None,
                    kind: str = "") -> Digested | None:
    """``round_digests`` of a round whose transfers are given column-wise in id order
    (``RoundRecord.columns``, integer amounts; no pending transfers): the transfer lines
    built by list slices and one join (``hashing.transfer_block``), hashed, and split into
    the Merkle leaves. ``None`` when a text field is no text or holds a newline."""
    head, tail = round_text_parts(prev, index, events, resolutions=resolutions, arrays=arrays)
    n = len(columns[0]) if columns else 0
    try:
        block = transfer_block(columns).encode() if n else b""
        paid = None
        if payer is not None:
            by_agent = agent_payments(columns, payer, kind)
            paid = array("q", by_agent), array("q", by_agent.values())
    except (TypeError, ValueError, OverflowError):  # a field not of its column's type: row by row
        return None
    if n and block.count(b"\n") != n - 1:
        return None
    return Digested(round_hash_of_parts(head, block, tail), block_root(block) if want_root else None,
                    transfers_clean(run_id, index, columns, accounts), paid)


def _read_columns(read: Callable[[str, int], list] | None, run_id: str, index: int, count: int) -> tuple | None:
    """Round ``index``'s transfers read from the ledger, column-wise in id order, if they are
    ``count`` rows of text fields and integer amounts; else ``None``."""
    if read is None:
        return None
    try:
        rows = read(run_id, index)
        rows.sort()
    except Exception:  # noqa: BLE001 - the ledger unreadable here, or rows that do not sort: the caller reads them
        return None
    if len(rows) != count:
        return None
    columns = tuple(zip(*rows))
    if columns and set(map(type, columns[4])) != {int}:
        return None
    return columns


def row_reader(source: RowSource) -> Callable[[str, int], list]:
    """``read(run_id, index)``: the rows of a round's transfers, through a connection of
    this process's own (read-only on SQLite; autocommit on PostgreSQL: each read sees what
    is committed)."""
    module, args, kwargs, sql, identity = source
    if module == "sqlite3":
        import sqlite3

        conn = sqlite3.connect(*args, **kwargs)
    elif module == "psycopg":
        import psycopg

        conn = psycopg.connect(*args, autocommit=True, **kwargs)
    else:
        raise ValueError(f"no row reader for the DB-API module {module!r}")
    if identity is not None and tuple(conn.execute(identity[0]).fetchone()) != tuple(identity[1]):
        conn.close()
        raise ValueError(f"the ledger opened here is not the caller's ({identity[0]})")
    return lambda run_id, index: conn.execute(sql, (run_id, index)).fetchall()


# The protocol between ``DigestWorker`` and ``serve_digests``, over the helper's stdin/stdout:
# each message is a 4-byte big-endian length and a ``marshal`` form: first the run's account
# names (a frozenset), its ``Payer`` or ``None`` and its ``RowSource`` or ``None``, then
# ``DigestRequest``s. Each reply, in request order, is the round hash (64 hex digits), the
# root (32 bytes; zeros when not asked), a flag byte (1: clean, 2: digests computed, 4:
# payments follow, 8: the root was asked), then with flag 4 the number k of agents paid (4 bytes, big-endian) and
# their positions and payments (k native int64 each). The helper exits at end of input.
_HEAD = 97
_PAID = 4
_ROOT = 8


class DigestWorker:
    """``round_digests`` computed by a helper process while the caller goes on.

    ``DigestWorker(accounts, payer, source)`` starts the helper for a run's account names
    (with the run's ``Payer``, each reply carries the agents' payments; with a ``RowSource``,
    the helper reads the transfers of a request that gives only their number);
    ``submit(req)`` queues a request and returns its ticket; ``result(ticket)`` waits for
    its ``Digested``; ``backlog()`` says, without waiting, how many requests the helper has
    not answered yet (a caller may digest a round itself rather than queue it behind
    them). Tickets must be redeemed in order. Requests go to the helper without blocking
    the caller while its pipe has room (the rest waits here, up to ``MAX_QUEUED`` bytes
    before ``submit`` waits); while it waits for room it reads the helper's replies, so
    the helper never blocks on its output and neither side can deadlock. A helper that
    dies raises ``OSError`` from either call.
    """

    MAX_QUEUED = 8 << 20  # bytes of requests held here when the helper falls behind

    def __init__(self, accounts: frozenset[str], payer: Payer | None = None, source: RowSource | None = None) -> None:
        # isolated (``-I``: no environment, no user site): the helper imports this module,
        # the standard library and (reading a PostgreSQL ledger) the driver, from where this
        # process found them, and starts in ~30 ms; it runs niced, as it has slack (the
        # caller runs ahead) where the caller and a database server on the same machine have none
        root = str(Path(__file__).resolve().parents[2])
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from mbiagents.ledger.digests import serve_digests; serve_digests()")
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0)
        self.fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        self.out = self.proc.stdout.fileno()  # type: ignore[union-attr]
        _widen_pipe(self.fd)
        os.set_blocking(self.fd, False)
        self.reading = source is not None
        self.replies = bytearray()  # reply bytes read, not yet split into ``done``
        self.done: deque[Digested | None] = deque()  # replies read, not yet redeemed
        self.queue: deque[memoryview] = deque()  # the unwritten rest of the requests submitted
        self.queued = 0  # bytes in ``queue``
        self.submitted = 0  # bytes of all requests
        self.sent = self.read = 0
        self._send(marshal.dumps((frozenset(accounts), payer, source)))

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

    def result(self, ticket: int) -> Digested | None:
        if ticket != self.read:
            raise ValueError(f"digest {ticket} asked for out of order (next is {self.read})")
        self._pump(0)  # the helper must have every request asked for (and those before it)
        while not self.done:
            self._read_replies()
        self.read += 1
        return self.done.popleft()

    def backlog(self) -> int:
        """Requests submitted whose replies have not come (those that have are read, without waiting)."""
        while select.select([self.out], [], [], 0)[0] and self._read_replies():
            pass
        return self.sent - self.read - len(self.done)

    def _read_replies(self) -> bool:
        """Read the replies the helper has written (waiting for one if none has come);
        ``OSError`` if it exited."""
        data = os.read(self.out, 1 << 16)
        if not data:
            raise OSError(f"the digest helper process exited (code {self.proc.poll()})")
        self.replies += data
        while len(self.replies) >= _HEAD:
            got, size = _reply(self.replies)
            if size > len(self.replies):
                break
            self.done.append(got)
            del self.replies[:size]
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


def _encoded(got: Digested | None) -> bytes:
    """A reply (the protocol above)."""
    if got is None:
        return bytes(_HEAD)
    flags = 2 | got.clean | (_PAID if got.paid is not None else 0) | (_ROOT if got.root is not None else 0)
    head = got.round_hash.encode() + (got.root or bytes(32)) + bytes([flags])
    if got.paid is None:
        return head
    at, amounts = got.paid
    return head + len(at).to_bytes(4, "big") + at.tobytes() + amounts.tobytes()


def _reply(buf: bytearray) -> tuple[Digested | None, int]:
    """The reply at the start of ``buf`` (at least ``_HEAD`` bytes) and its size; the reply
    is not whole (``None``) while ``buf`` holds fewer bytes than that size."""
    flags = buf[96]
    if not flags & 2:
        return None, _HEAD
    paid = None
    size = _HEAD
    if flags & _PAID:
        if len(buf) < _HEAD + 4:
            return None, _HEAD + 4
        k = int.from_bytes(buf[_HEAD:_HEAD + 4], "big")
        size = _HEAD + 4 + 16 * k
        if len(buf) < size:
            return None, size
        at, amounts = array("q"), array("q")
        at.frombytes(buf[_HEAD + 4:_HEAD + 4 + 8 * k])
        amounts.frombytes(buf[_HEAD + 4 + 8 * k:size])
        paid = at, amounts
    return Digested(buf[:64].decode(), bytes(buf[64:96]) if flags & _ROOT else None, bool(flags & 1), paid), size


def available_cpus() -> int:
    """The CPUs this process may run on (a helper process is worth starting from two)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BlockRoot:
    """``merkle.block_root(block)`` computed by a helper process while the caller goes on:
    the write path of a large round inserts its rows meanwhile (at 10^6 transfers the
    2 x 10^6 SHA-256 calls of its Merkle tree take seconds). ``result()`` waits for the
    root (``OSError`` if the helper cannot start or fails: the caller computes it itself);
    ``close()`` ends a helper whose root is no longer wanted."""

    def __init__(self, block: bytes) -> None:
        root = str(Path(__file__).resolve().parents[2])
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from mbiagents.ledger.digests import serve_block_root; serve_block_root()")
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.proc.stdin.write(block)  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            self.close()
            raise

    def result(self) -> bytes:
        root = self.proc.stdout.read(33)  # type: ignore[union-attr]
        code = self.proc.wait()
        if len(root) != 32 or code != 0:
            raise OSError(f"the Merkle root helper process failed (code {code})")
        return root

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass


def serve_block_root(inp: BinaryIO | None = None, out: BinaryIO | None = None) -> None:
    """``BlockRoot``'s helper: ``block_root`` of all of its input, written as 32 bytes."""
    inp, out = inp or sys.stdin.buffer, out or sys.stdout.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out.write(block_root(inp.read()))
    out.flush()


def _widen_pipe(fd: int) -> None:
    """Let a pipe hold up to 1 MiB (Linux ``F_SETPIPE_SZ``): the caller runs further ahead
    of the helper before its requests queue up. Elsewhere, or refused: the default size."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError, AttributeError):
        pass


def serve_digests(inp: BinaryIO | None = None, out: BinaryIO | None = None) -> None:
    """The helper's loop: the run's accounts, payer and row source, then ``round_digests``
    of each request read, until end of input (or a message cut short: the caller stopped
    mid-audit). It runs niced and leaves Ctrl-C to the caller, which ends it by closing its
    input. A ledger it cannot open leaves every round it was to read to the caller."""
    inp, out = inp or sys.stdin.buffer, out or sys.stdout.buffer
    os.nice(5)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def message() -> object:
        head = inp.read(4)
        body = inp.read(int.from_bytes(head, "big")) if len(head) == 4 else b""
        if len(head) != 4 or len(body) != int.from_bytes(head, "big"):
            return None
        return marshal.loads(body)

    run = message()
    if run is None:
        return
    accounts, payer, source = run  # type: ignore[misc]
    positions, kind = ({a: i for i, a in enumerate(payer[0])}, payer[1]) if payer is not None else (None, "")
    read = None
    if source is not None:
        try:
            read = row_reader(source)
        except Exception:  # noqa: BLE001 - no driver, no connection: the caller reads those rounds
            read = None
    while (req := message()) is not None:
        out.write(_encoded(round_digests(req, accounts, positions, kind, read)))  # type: ignore[arg-type]
        out.flush()
