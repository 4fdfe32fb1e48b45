"""Signed round heads: an Ed25519 key outside the database signs each run's header, each
round head and the run's end, so that a history cannot be forged from inside the database.

After certificate transparency / Trillian: the hash chain makes a run's rounds depend on
each other, but everything needed to recompute it lives in the database; a signature by
a key that lives elsewhere does not. The key comes from (first that is set):

- ``MBI_SIGNING_KEY``: the key itself, PEM (PKCS#8) or 64 hex digits (the raw Ed25519 seed);
- the file ``MBI_KEY_FILE``, default ``~/.config/mbi/signing-key.pem``, created by
  ``mbi keys init`` (mode 0600; a key file readable by group or others is refused).

With no key a run is written unsigned (the audit says so). Signed statements (Ed25519 over
the bytes below; hex signatures):

- run start: ``b"mbi-run-start/1\\n" + canonical_json([run_id, header_hash, accounts_hash, public_key])``
  (``accounts_hash`` covers the run's account rows: name, kind, position);
- round head: ``b"mbi-round-head/1\\n" + canonical_json([run_id, index, hash, merkle_root])``
  (``hash`` is the round's chain hash, ``merkle_root`` the root over its transfers,
  ``mbiagents.ledger.merkle``);
- run end: ``b"mbi-run-end/1\\n" + canonical_json([run_id, status, rounds, last_hash])``.

A witness file (``mbi run --witness FILE``) gets every signed statement appended as one
JSON line as soon as it is committed: kept outside the database (another disk, another
machine, an append-only store), it lets ``mbi audit --witness FILE`` catch a truncated,
replaced or deleted run, which no check inside the database can.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert

from mbiagents.errors import MbiError
from mbiagents.ledger.merkle import line_leaves, merkle_root, round_merkle_root
from mbiagents.ledger.store import canonical_json

KEY_ENV = "MBI_SIGNING_KEY"
KEY_FILE_ENV = "MBI_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/mbi/signing-key.pem")
WITNESS_FORMAT = "mbi-witness/1"


class SigningKeyError(MbiError):
    """The signing key is missing where required, unreadable, or not an Ed25519 key."""


# ---- keys --------------------------------------------------------------------------------
def key_file() -> Path:
    """Where the signing key file lives: ``$MBI_KEY_FILE`` or ``~/.config/mbi/signing-key.pem``."""
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()


def _parse_key(text: str, where: str) -> Ed25519PrivateKey:
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not an Ed25519 private key (PEM or 64 hex digits): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: the key is not an Ed25519 key")
    return key


def load_signing_key() -> tuple[Ed25519PrivateKey, str] | None:
    """The configured signing key and where it came from, or ``None`` when none is set up."""
    if os.environ.get(KEY_ENV):
        return _parse_key(os.environ[KEY_ENV], f"${KEY_ENV}"), f"${KEY_ENV}"
    path = key_file()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SigningKeyError(f"key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"key file {path}: cannot read it: {exc}") from None
    return _parse_key(text, f"key file {path}"), str(path)


def init_key(path: Path | None = None, *, force: bool = False) -> tuple[Path, str]:
    """Create a new Ed25519 key file (mode 0600); refuse to overwrite one unless ``force``.

    Returns the path and the hex public key.
    """
    path = (path or key_file()).expanduser()
    if path.exists() and not force:
        raise SigningKeyError(f"key file {path} exists: runs signed by it could no longer be told apart from "
                        f"forgeries if it were replaced (use --force to replace it anyway)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SigningKeyError(f"cannot create folder {path.parent}: {exc.strerror}") from None
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise SigningKeyError(f"cannot write key file {path}: {exc.strerror}") from None
    return path, public_hex(key)


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def verify(public_key: str | None, signature: str | None, message: bytes) -> bool:
    """True when ``signature`` (hex) is ``public_key``'s (hex) Ed25519 signature of ``message``."""
    if not public_key or not signature:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# ---- what is signed ----------------------------------------------------------------------
def accounts_hash(accounts: Iterable[tuple[str, str, int]]) -> str:
    """SHA-256 over a run's account rows ``(name, kind, position)`` in position order."""
    rows = sorted(([n, k, int(p)] for n, k, p in accounts), key=lambda r: r[2])
    return hashlib.sha256(canonical_json(rows).encode()).hexdigest()


def start_statement(run_id: str, header_hash: str, accts_hash: str, public_key: str) -> bytes:
    return b"mbi-run-start/1\n" + canonical_json([run_id, header_hash, accts_hash, public_key]).encode()


def head_statement(run_id: str, index: int, round_hash: str, merkle_root: str) -> bytes:
    return b"mbi-round-head/1\n" + canonical_json([run_id, int(index), round_hash, merkle_root]).encode()


def end_statement(run_id: str, status: str, rounds: int, last_hash: str) -> bytes:
    return b"mbi-run-end/1\n" + canonical_json([run_id, status, int(rounds), last_hash]).encode()


# ---- the write-path hook -----------------------------------------------------------------
@dataclass
class RunSigner:
    """Signs what the ledger writes (``Ledger.signer``) and appends it to a witness file.

    ``key`` ``None`` writes unsigned heads (Merkle roots still recorded).
    """

    key: Ed25519PrivateKey | None = None
    witness: Path | None = None
    pending: list[dict[str, Any]] = field(default_factory=list, repr=False)  # witness lines awaiting commit

    @classmethod
    def from_environment(cls, witness: str | Path | None = None) -> "RunSigner":
        loaded = load_signing_key()
        if witness and loaded is None:
            raise SigningKeyError(f"--witness {witness}: a witness holds signed statements, and no signing key "
                                  f"is set up (mbi keys init, or ${KEY_ENV})")
        return cls(loaded[0] if loaded else None, Path(witness) if witness else None)

    @property
    def public_key(self) -> str | None:
        return public_hex(self.key) if self.key is not None else None

    def _sign(self, message: bytes) -> str | None:
        return self.key.sign(message).hex() if self.key is not None else None

    def start_fields(self, row: dict[str, Any], accounts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Columns of the run row: its public key and signed start (``None`` unsigned)."""
        if self.key is None:
            return {}
        ah = accounts_hash((a["name"], a["kind"], a["position"]) for a in accounts)
        sig = self._sign(start_statement(row["id"], row["header_hash"], ah, self.public_key))
        self._witness({"kind": "start", "run": row["id"], "public_key": self.public_key,
                       "header_hash": row["header_hash"], "accounts_hash": ah, "sig": sig})
        return {"public_key": self.public_key, "start_sig": sig}

    def write_head(self, conn: Connection, run_id: str, index: int, round_hash: str,
                   transfers: Sequence[tuple[str, str, str, str, int]],
                   lines: list[str] | None = None, block: bytes | None = None,
                   root: str | None = None) -> dict[str, Any]:
        """Record the round's Merkle root and signed head inside the round's transaction;
        ``lines``: the transfers' ``store.transfer_lines`` in id order, when the caller has
        them already (the leaves hash the same lines), and ``block``: those lines joined
        by newlines and encoded, as the round hash read them (``round_hash_of_block``);
        ``root``: the root (hex) when the caller computed it already (``digests.BlockRoot``)."""
        from mbiagents.ledger.models import RoundHead

        if root is None:
            root = round_merkle_root(transfers) if lines is None else merkle_root(line_leaves(lines, block)).hex()
        sig = self._sign(head_statement(run_id, index, round_hash, root))
        conn.execute(insert(RoundHead), [dict(run_id=run_id, round_index=index, merkle_root=root, signature=sig)])
        head = {"kind": "head", "run": run_id, "index": index, "hash": round_hash, "merkle_root": root, "sig": sig}
        self._witness(head)
        return head

    def end_fields(self, run_id: str, status: str, rounds: int, last_hash: str) -> dict[str, Any]:
        if self.key is None:
            return {}
        sig = self._sign(end_statement(run_id, status, rounds, last_hash))
        self._witness({"kind": "end", "run": run_id, "status": status, "rounds": rounds, "hash": last_hash,
                       "sig": sig})
        return {"end_sig": sig}

    def _witness(self, line: dict[str, Any]) -> None:
        """Queue a witness line; it is written once its transaction commits (``committed``)."""
        if self.witness is not None and self.key is not None:
            self.pending.append(line)

    def committed(self) -> None:
        """Append the statements of the transaction that just committed to the witness file."""
        lines, self.pending = self.pending, []
        if not lines or self.witness is None:
            return
        try:
            with open(self.witness, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"witness": WITNESS_FORMAT, **ln}, sort_keys=True) + "\n" for ln in lines))
        except OSError as exc:
            raise MbiError(f"witness file {self.witness}: cannot append: {exc.strerror}") from None

    def rolled_back(self) -> None:
        self.pending = []


def read_witness(path: str | Path) -> list[dict[str, Any]]:
    """The statements of a witness file (one JSON object a line); ``MbiError`` if unreadable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MbiError(f"{p}: no such witness file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MbiError(f"{p}: cannot read witness file: {exc}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MbiError(f"{p}:{n}: not a witness line: {exc}") from None
        if not isinstance(obj, dict) or obj.get("witness") != WITNESS_FORMAT:
            raise MbiError(f"{p}:{n}: not a {WITNESS_FORMAT} line")
        out.append(obj)
    return out


# ---- readers -----------------------------------------------------------------------------
def read_round_heads(ledger: Any, run_id: str) -> dict[int, tuple[str, str | None]]:
    """``{round index: (merkle_root, signature)}`` of a run's recorded round heads."""
    from sqlalchemy import select

    from mbiagents.ledger.models import RoundHead

    with ledger.engine.connect() as conn:
        rows = conn.execute(select(RoundHead.round_index, RoundHead.merkle_root, RoundHead.signature)
                            .where(RoundHead.run_id == run_id))
        return {int(i): (root, sig) for i, root, sig in rows}


def read_account_rows(ledger: Any, run_id: str) -> list[tuple[str, str, int]]:
    """A run's account rows ``(name, kind, position)`` in position order (what the start signs)."""
    from sqlalchemy import select

    from mbiagents.ledger.models import Account

    with ledger.engine.connect() as conn:
        rows = conn.execute(select(Account.name, Account.kind, Account.position)
                            .where(Account.run_id == run_id).order_by(Account.position))
        return [(n, k, int(p)) for n, k, p in rows]
