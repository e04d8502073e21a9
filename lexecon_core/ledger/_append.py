"""The append path: a process's appends, queued and written together (group commit) on one pooled connection.

An append is the cost of every decision, so this path keeps one connection and runs statements compiled once (see
``_sql``) on the driver directly, and appends that arrive while another thread writes go out together in the next
transaction, under one lock acquisition and one commit. Each batch takes the write lock before it reads the head and
appends after nothing the ledger handle has not verified (see ``_trust``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from lexecon_core.errors import InvalidRequest, LedgerError, LedgerTampered, LexeconError
from lexecon_core.keys import Signer
from lexecon_core.ledger import _tree
from lexecon_core.ledger._entry import (
    LedgerEntry,
    entry_hash,
    genesis_hash,
    make_body,
    row_mac,
    signing_message,
    utc_timestamp,
)
from lexecon_core.ledger._governance import GOVERNANCE_TYPES, Governance
from lexecon_core.ledger._merkle import leaf_hash, verify_inclusion
from lexecon_core.ledger._sql import (
    COLUMN_NAMES,
    FIND,
    HEAD,
    INSERT,
    TAIL,
    Statement,
    short_error,
    to_entry,
)
from lexecon_core.ledger._trust import Verified
from lexecon_core.ledger._verify import trusted_roots

if TYPE_CHECKING:
    from lexecon_core.ledger._store import Ledger

_TAIL_ROWS = 1024  # more rows than this after the verified head: read them in pages instead


@dataclass(slots=True)
class AppendRequest:
    """One pending append, filled in by whichever thread writes its batch."""

    entry_type: str
    data: Mapping[str, Any]
    signer: Signer
    only_if_empty: bool
    once: str | None = None  # a decision id: write nothing if an entry with it exists, answer with that entry
    # Checked under the write lock against the verified governance state (with this batch's earlier entries):
    # raises a LexeconError to refuse the append, e.g. revoking a key that is already revoked.
    guard: Callable[[Governance], None] | None = None
    existed: bool = False
    entry: LedgerEntry | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class Appender:
    """The append path of one :class:`~lexecon_core.ledger.Ledger` handle: its writer queue, its connection and the
    statements it runs. The ledger keeps what it has verified; a batch grows that under the write lock."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._backend = ledger._backend
        self.node_id = ledger.node_id
        self._mac_key = ledger._mac_key
        # One writing thread per process (see append); the database lock covers other processes.
        self._queue_lock = threading.Lock()
        self._queue: list[AppendRequest] = []
        self._writing = False
        self._conn: PoolProxiedConnection | None = None
        # Statements run directly on the driver (see _sql): compiled once from the Table, not hand-written.
        dialect = ledger._writer.dialect
        self._head_sql = str(HEAD.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        compiled = INSERT.compile(dialect=dialect)
        self._positional = compiled.positiontup is not None
        if self._positional and list(compiled.positiontup or ()) != list(COLUMN_NAMES):
            raise LedgerError("unexpected parameter order in the compiled ledger insert")
        self._insert_sql = str(compiled)
        self._find_sql = Statement(FIND.compile(dialect=dialect))
        self._tail_sql = Statement(TAIL.compile(dialect=dialect))

    def _append_dbapi(self) -> Any:
        # The append path is the hot path (one per decision): it keeps one pooled connection and drives the driver
        # directly with statements SQLAlchemy compiled from the Table. A checkout and a SQLAlchemy execution context
        # per append cost more than the insert itself.
        if self._conn is None:
            self._conn = self._ledger._writer.raw_connection()
        return self._conn.driver_connection

    def _abort_append(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.dbapi_connection.rollback()  # type: ignore[union-attr]
        except self._backend.errors:
            self._conn.invalidate()
            self._conn = None

    def close(self) -> None:
        with self._queue_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def append(self, request: AppendRequest) -> LedgerEntry | None:
        """Group commit: appends that arrive while another thread is writing queue up and go out together in the
        next transaction, under one lock acquisition and one commit. Each caller returns only once its entry is
        durable. A writer hands the pen to the oldest waiting request, so every thread is woken exactly once."""
        with self._queue_lock:
            self._queue.append(request)
            lead = not self._writing
            self._writing = True
        if not lead:
            try:
                request.wake.wait()
            except BaseException:  # interrupted while queued: leave no orphan behind to stall the queue
                self._abandon(request)
                raise
            lead = not request.done  # woken to write, not because its entry was written
        if lead:
            with self._queue_lock:
                batch, self._queue = self._queue, []
            try:
                self._write_batch(batch)
            finally:
                for item in batch:
                    if item.entry is None and item.error is None and not item.only_if_empty:
                        item.error = LedgerError("ledger write did not complete")  # never a silent non-answer
                    item.done = True
                    if item is not request:
                        item.wake.set()
                self._hand_over()
        if request.error is not None:
            raise request.error
        return request.entry

    def _hand_over(self) -> None:
        with self._queue_lock:
            if self._queue:
                self._queue[0].wake.set()  # the next writer; it takes everything queued by then
            else:
                self._writing = False

    def _abandon(self, request: AppendRequest) -> None:
        with self._queue_lock:
            if request in self._queue:
                self._queue.remove(request)
                return
        if request.wake.is_set() and not request.done:  # it had just been made the writer: pass that on
            self._hand_over()

    def _write_batch(self, batch: list[AppendRequest]) -> None:
        # The first walk from the genesis entry runs before the write lock: it may take a while. After that, what
        # other processes appended is verified under the lock, read with the head in one statement: it became
        # visible only when they committed, just before this process got the lock, so there is nothing to read
        # earlier (measured: catching up before the lock as well only added reads). Their row MACs make it cheap.
        ledger = self._ledger
        if ledger._verified is None:
            try:
                ledger.trusted_state()
            except LedgerError as exc:
                for item in batch:
                    item.error = exc
                return
        with self._backend.writer_turn():
            self._write_batch_now(batch)
        wal = ledger._wal
        if wal is not None:  # after the commit and outside it: nothing here can fail a written entry
            wal.committed(sum(1 for item in batch if item.entry is not None and not item.existed))

    def _write_batch_now(self, batch: list[AppendRequest]) -> None:
        cursor = None
        try:
            db = self._append_dbapi()
            cursor = db.cursor()
            cursor.execute(self._backend.lock_sql)  # the write lock before reading the head: no fork, no gap
            # Nothing is appended after a head this handle has not verified: a planted row would otherwise be
            # vouched for by every later entry's link and by the next checkpoint.
            verified, seq, prev = self._verified_head(cursor)
            rows: list[Any] = []
            new: list[LedgerEntry] = []
            written: dict[str, LedgerEntry] = {}  # decision ids appended once, in this batch
            governance: Governance | None = None  # the state with this batch's entries, once one needs it
            for item in batch:
                if item.only_if_empty and seq != 1:  # another writer got there first
                    continue
                if item.once is not None:
                    try:
                        found = written.get(item.once) or self._find(cursor, item.once, verified)
                    except LedgerTampered as exc:  # a planted or altered row answers nobody
                        item.error = exc
                        continue
                    if found is not None:
                        item.entry, item.existed = found, True
                        continue
                if governance is None and (item.guard is not None or item.entry_type in GOVERNANCE_TYPES):
                    governance = verified.governance.copy()
                try:
                    if item.guard is not None and governance is not None:
                        item.guard(governance)
                    item.entry, row = self.build(item, seq, prev)
                except LexeconError as exc:  # this request's own data is bad: it alone fails, nothing written
                    item.error = exc
                    continue
                except (TypeError, AttributeError, ValueError) as exc:
                    item.error = InvalidRequest(f"ledger entry data is malformed: {exc}")
                    continue
                rows.append(row if self._positional else dict(zip(COLUMN_NAMES, row, strict=True)))
                new.append(item.entry)
                if item.once is not None:
                    written[item.once] = item.entry
                if governance is not None and item.entry_type in GOVERNANCE_TYPES:
                    governance.apply(seq, item.entry_type, item.entry.created_at, item.entry.data)
                seq, prev = seq + 1, item.entry.entry_hash
            if rows:
                cursor.executemany(self._insert_sql, rows)
            db.commit()  # durable (to the chosen level) when this returns
            self._ledger._absorb_own(verified, new)
        except BaseException as exc:
            self._abort_append()
            database_error = isinstance(exc, (*self._backend.errors, SQLAlchemyError))
            pending = [item for item in batch if item.error is None]
            if isinstance(exc, self._backend.data_errors) and len(pending) > 1:
                # The database refused a row's values (before any commit): write each request on its own, so one
                # bad row fails only its own caller. Costs a commit each, only on this rare path; a connection or
                # commit failure is not retried here (a commit in doubt must not be written twice).
                for item in pending:
                    item.entry, item.existed = None, False
                if cursor is not None:
                    cursor.close()
                    cursor = None
                for item in pending:
                    self._write_batch_now([item])  # still our turn in the writer queue
                return
            error = exc if isinstance(exc, LedgerError) else LedgerError(f"ledger write failed: {short_error(exc)}")
            for item in batch:  # the transaction is gone: no entry of this batch exists
                item.entry = None
                item.error = item.error or error
            if not database_error and not isinstance(exc, LedgerError):
                raise  # an interrupt or a bug: the writing thread sees the original, the others a LedgerError
        finally:
            if cursor is not None:
                cursor.close()

    def _verified_head(self, cursor: Any) -> tuple[Verified, int, bytes]:
        """Under the write lock: the verified state grown to the database's head, and the next (seq, prev)."""
        ledger = self._ledger
        known = ledger._verified
        if known is not None and known.size > 0:
            # One statement on the writer's connection: the verified head row, then anything appended since.
            size, digest = known.size, known.head
            tail = self._tail_sql
            rows = cursor.execute(tail.sql, tail.params({"s": size, "n": _TAIL_ROWS + 1})).fetchall()
            if rows and len(rows) <= _TAIL_ROWS and rows[0][0] == size and bytes(rows[0][4]) == digest:
                with ledger._trust_lock:
                    if (known.size, known.head) == (size, digest):  # no other thread grew it meanwhile
                        last = rows[-1]
                        verified = ledger.trusted_state((int(last[0]), bytes(last[4])), pages=[rows[1:]])
                        return verified, verified.size + 1, verified.head
            # Many new rows, the verified head gone or changed, or grown meanwhile: the general path decides.
        head = cursor.execute(self._head_sql).fetchone()
        seq, prev = (head[0] + 1, bytes(head[1])) if head else (1, genesis_hash(self.node_id))
        return ledger.trusted_state((seq - 1, prev)), seq, prev

    def _find(self, cursor: Any, decision_id: str, verified: Verified) -> LedgerEntry | None:
        """The entry already recorded for ``decision_id``, once it checks out: a retry is answered from it, and an
        approval's token signed again, so it must be the node's own entry at its place in the verified chain."""
        find = self._find_sql
        row = cursor.execute(find.sql, find.params({"d": decision_id})).fetchone()
        if row is None:
            return None
        found = _retry_entry(to_entry(row), decision_id, self.node_id)
        if isinstance(found, LedgerEntry):
            if verified.hash_at(found.seq) == found.entry_hash or self._proven(found, verified):
                return found
            found = "not at its place in the verified chain"
        refusal = LedgerTampered(int(row[0]), f"the entry recorded for {decision_id} is {found}")
        self._ledger._refused(refusal)
        raise refusal

    def _proven(self, entry: LedgerEntry, verified: Verified) -> bool:
        """Whether ``entry`` is in the tree of a trusted checkpoint that this handle's verified prefix reaches: its
        place for an entry older than the recent hashes kept."""
        ledger = self._ledger
        roots = trusted_roots(ledger._stored_notes(), self.node_id, verified.keys)
        sizes = sorted(size for size in roots if entry.seq <= size <= verified.size)
        if not sizes:
            return False
        try:
            with ledger._reader.connect() as conn:
                proof = _tree.prove_inclusion(conn, entry.seq, sizes[0], {})
        except (LedgerError, LookupError, SQLAlchemyError):
            return False
        return verify_inclusion(leaf_hash(entry.entry_hash), entry.seq - 1, sizes[0], proof.hashes, roots[sizes[0]])

    def build(self, item: AppendRequest, seq: int, prev: bytes) -> tuple[LedgerEntry, tuple[Any, ...]]:
        """The entry ``item`` makes at ``seq`` after ``prev``, and its row to insert (``COLUMN_NAMES`` order)."""
        data, signer = item.data, item.signer
        timestamp = utc_timestamp()
        body = make_body(seq=seq, entry_type=item.entry_type, timestamp=timestamp, node_id=self.node_id, data=data)
        digest = entry_hash(prev, body)
        entry = LedgerEntry(
            seq, item.entry_type, timestamp, body, prev, digest, signer.kid, signer.sign(signing_message(digest))
        )
        request = data.get("request") or {}
        row = (
            seq,
            item.entry_type,
            timestamp,
            body,
            prev,
            digest,
            entry.kid,
            entry.signature,
            data.get("decision_id"),
            request.get("actor"),
            request.get("tool"),
            data.get("outcome"),
            False,
            row_mac(self._mac_key(signer), digest),
        )
        return entry, row


def _retry_entry(row: LedgerEntry, decision_id: str, node_id: str) -> LedgerEntry | str:
    """The decision entry in ``row``, built from its hashed body alone (type and time included), or what is wrong
    with it. Its place in the chain is the caller's to check."""
    if entry_hash(row.prev_hash, row.body) != row.entry_hash:
        return "altered (its hash does not match its body)"
    try:
        body = json.loads(row.body)
        data, ts = body["data"], str(body["ts"])
        if not isinstance(data, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):  # a JSON array or string is hashable too: it must not crash the writer
        return "unreadable"
    facts = (body.get("seq"), body.get("type"), body.get("node"), data.get("decision_id"))
    if facts != (row.seq, "decision", node_id, decision_id):
        return "not the decision it claims to be"
    return LedgerEntry(row.seq, "decision", ts, row.body, row.prev_hash, row.entry_hash, row.kid, row.signature)
