"""Where a command may write its output files (``mbi export --out``, ``mbi report --out``).

Rules (README, "Security model"):

- an existing file is never written over unless the user passes ``--force``;
- a file of a database the command has open (the SQLite ledger, its ``-wal``/``-shm``/
  ``-journal`` files, the run's checkpoint file beside it) is never written, ``--force``
  or not: export used to truncate the ledger it was reading to 0 bytes;
- a file is written to a temporary name in its folder and renamed into place when it is
  complete, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from mbiagents.errors import MbiError

#: files SQLite keeps beside a database file
SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")
#: the run checkpoints' SQLite file beside an SQLite ledger (``mbiagents.checkpoint``)
CHECKPOINT_FILE_SUFFIX = "-checkpoints"


def database_files(engine) -> set[Path]:
    """The files an SQLAlchemy engine's SQLite database (and its checkpoints) live in; empty otherwise."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return set()
    base = Path(url.database)
    return {_resolved(Path(f"{base}{suffix}{side}")) for suffix in ("", CHECKPOINT_FILE_SUFFIX) for side in SQLITE_SIDE_FILES}


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_outputs(paths: Iterable[Path], *, force: bool, protected: set[Path], flag: str = "--out") -> None:
    """Refuse (``MbiError``, one line) to write ``paths`` over existing files without ``force``,
    or over a protected database file at all."""
    for path in paths:
        real = _resolved(path)
        if real in protected:
            raise MbiError(f"{flag} {path}: that is a database file this command has open; choose another path")
        if path.is_dir():
            raise MbiError(f"{flag} {path}: exists and is a folder")
        if path.exists() and not force:
            raise MbiError(f"{flag} {path}: file exists; pass --force to write over it")


@contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success only."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    except OSError as exc:
        raise MbiError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that opens files itself (Parquet, PNG)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
