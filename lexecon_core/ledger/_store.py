"""The ledger store: a signed hash chain in a SQL database (SQLite by default) through SQLAlchemy.

One writer at a time per ledger: every write transaction first takes the ledger's write lock (SQLite ``BEGIN
IMMEDIATE``; PostgreSQL an advisory lock), before the head is read, so two processes appending at once queue rather
than fork the chain.
With ``durability="fsync"`` (the default) an entry is on disk when :meth:`Ledger.append` returns and survives power
loss. ``durability="process"`` skips the per-commit flush: a returned entry survives the process being killed but not
the machine losing power. Both keep the chain consistent. Database specifics live in ``_backend``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import Compiled

from lexecon_core.errors import InvalidRequest, LedgerError, LedgerTampered, LexeconError
from lexecon_core.keys import PublicKey, Signer, b64url, jwks_of
from lexecon_core.ledger import _retention, _schema, _tree
from lexecon_core.ledger._backend import DURABILITIES, Durability, WalCheckpointer, backend_for
from lexecon_core.ledger._bundle import write_bundle
from lexecon_core.ledger._checkpoint import Checkpoint, origin_for
from lexecon_core.ledger._entry import (
    GENESIS_TYPE,
    ROW_MAC_PURPOSE,
    TOMBSTONE_TYPE,
    LedgerEntry,
    entry_hash,
    genesis_hash,
    make_body,
    row_mac,
    signing_message,
    utc_timestamp,
)
from lexecon_core.ledger._governance import GOVERNANCE_TYPES, Governance, KeyRecord, body_ts, body_type
from lexecon_core.ledger._merkle import leaf_hash, verify_inclusion
from lexecon_core.ledger._migrate import check_tables, ensure_schema
from lexecon_core.ledger._retention import DEFAULT_RETENTION_DAYS
from lexecon_core.ledger._tree import InclusionProof
from lexecon_core.ledger._trust import Verified, check_head, establish, extend
from lexecon_core.ledger._verify import (
    StoredRow,
    VerificationReport,
    _blob,
    stored_row,
    trusted_roots,
    verify_pages,
)

_t = _schema.entries
logger = logging.getLogger("lexecon.ledger")

_INSERT = insert(_t)
_COLUMN_NAMES = tuple(c.name for c in _t.c)  # the order of the positional insert parameters
_TAIL_ROWS = 1024  # more rows than this after the verified head: read them in pages instead
_HEAD = select(_t.c.seq, _t.c.entry_hash).order_by(_t.c.seq.desc()).limit(1)
_ROW_COLUMNS = (
    _t.c.seq,
    _t.c.entry_type,
    _t.c.body,
    _t.c.prev_hash,
    _t.c.entry_hash,
    _t.c.kid,
    _t.c.signature,
    _t.c.created_at,
    _t.c.decision_id,
    _t.c.actor,
    _t.c.tool,
    _t.c.outcome,
    _t.c.purged,
    _t.c.mac,  # used only by this node's own walks (continue_walk's ``macs``); verifiers ignore it
)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@dataclass(slots=True)
class _Request:
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


class Ledger:
    """Append-only, signed, hash-chained ledger of one node.

    ``readonly=True`` opens an existing ledger for reading and verification without changing the file.
    ``trusted_keys`` are the keys whose signatures this handle accepts on rows it acts on (default: the signer's);
    keys handed over by verified ``key_rotated`` entries join them.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        signer: Signer | None = None,
        readonly: bool = False,
        durability: Durability = "fsync",
        checkpoint_interval: int = 0,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        trusted_keys: Mapping[str, PublicKey] | None = None,
        anchor_file: Path | None = None,
    ) -> None:
        self.url = url
        # (seq, hash) of an entry this node wrote, kept beside its keys: a database writer can delete the tail of
        # the chain and the checkpoints over it, but not this file, so a revocation or hold cannot be cut off.
        self._anchor_file = anchor_file
        self._signer = signer
        self._mac_keys: dict[str, bytes] = {}  # kid -> row MAC key, for each signer this handle has held
        if signer is not None:
            self._mac_key(signer)
        own = {signer.kid: signer.public} if signer is not None else {}
        self._trusted_keys = trusted_keys if trusted_keys is not None else own
        self._verified: Verified | None = None  # see _trust; grown under _trust_lock
        self._trust_lock = threading.RLock()
        self._synced_at = 0.0
        self.refusals = 0  # rows refused because they did not verify (the server's metrics count them)
        self._last_refusal: str | None = None
        self._failed: tuple[tuple[int, bytes], LedgerTampered, float] | None = None  # head, error, retry after
        # One writing thread per process (see _append); the database lock covers other processes.
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []
        self._writing = False
        self._conn: PoolProxiedConnection | None = None
        self._wal: WalCheckpointer | None = None
        self.checkpoint_interval = checkpoint_interval  # sign a checkpoint every N entries (0: only on demand)
        self.retention_days = retention_days  # until a retention_policy entry says otherwise
        if durability not in DURABILITIES:
            raise LedgerError(f"unknown ledger durability {durability!r}; expected 'fsync' or 'process'")
        try:
            self._backend, url = backend_for(url)
            self._writer = self._backend.make_engine(url, writer=True, readonly=readonly, durability=durability)
            self._reader = self._backend.make_engine(url, writer=False, readonly=readonly, durability=durability)
            if readonly:
                check_tables(self._reader)
            else:
                ensure_schema(self._writer, self._reader)
                self._wal = self._backend.wal_checkpointer(self._reader, durability)
            # The append path runs these pre-compiled statements directly: SQL compiled once from the Table, not
            # hand-written, in the driver's own parameter style (positional for sqlite3, named for psycopg).
            self._head_sql = str(_HEAD.compile(dialect=self._writer.dialect, compile_kwargs={"literal_binds": True}))
            compiled = _INSERT.compile(dialect=self._writer.dialect)
            self._positional = compiled.positiontup is not None
            if self._positional and list(compiled.positiontup or ()) != list(_COLUMN_NAMES):
                raise LedgerError("unexpected parameter order in the compiled ledger insert")
            self._insert_sql = str(compiled)
            find = select(*_FULL).where(_t.c.decision_id == bindparam("d")).order_by(_t.c.seq)
            self._find_sql = str(find.compile(dialect=self._writer.dialect))
            # The rows from a seq on (the verified head and what follows): read under the write lock on the
            # writer's own connection, they give the head and what to verify in one statement.
            tail = select(*_ROW_COLUMNS).where(_t.c.seq >= bindparam("s")).order_by(_t.c.seq).limit(bindparam("n"))
            self._tail_sql = _Statement(tail.compile(dialect=self._writer.dialect))
            page = select(*_ROW_COLUMNS).where(_t.c.seq > bindparam("after")).order_by(_t.c.seq).limit(bindparam("n"))
            self._page_sql = _Statement(page.compile(dialect=self._reader.dialect))
            self.node_id, created = self._bind_node(node_id)
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open ledger: {_short(exc)}") from None
        if created and signer is not None:
            self._write_genesis(signer)

    def _write_genesis(self, signer: Signer) -> None:
        """A new ledger starts with an entry naming its node and first key. Only a ledger this handle created gets
        one: an existing ledger that was emptied stays empty, and verification reports it."""
        if self.head()[0] == 0:
            self.publish_key(signer.public)
            genesis = {"node_id": self.node_id, "kid": signer.kid, "public_key": b64url(signer.public.raw)}
            self._append(GENESIS_TYPE, genesis, signer, only_if_empty=True)

    def _bind_node(self, node_id: str | None) -> tuple[str, bool]:
        """The node id recorded in the ledger, and whether this call created the ledger (recorded ``node_id``)."""
        query = select(_schema.meta.c.value).where(_schema.meta.c.key == "node_id")
        with self._reader.begin() as conn:
            stored = conn.execute(query).scalar()
        created = False
        if stored is None and node_id is not None:
            with self._writer.begin() as conn:  # under the write lock (see _backend): re-read, then record
                stored = conn.execute(query).scalar()
                if stored is None:
                    conn.execute(insert(_schema.meta).values(key="node_id", value=node_id))
                    stored, created = node_id, True
        if stored is None:
            raise LedgerError("this ledger has no node id; it was never initialised")
        if node_id is not None and stored != node_id:
            raise LedgerError(f"ledger belongs to node {stored!r}, not {node_id!r}")
        return str(stored), created

    def _append_dbapi(self) -> Any:
        # The append path is the hot path (one per decision): it keeps one pooled connection and drives the driver
        # directly with statements SQLAlchemy compiled from the Table. A checkout and a SQLAlchemy execution context
        # per append cost more than the insert itself.
        if self._conn is None:
            self._conn = self._writer.raw_connection()
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
        if self._verified is not None and self._signer is not None:
            with self._trust_lock:
                self._write_anchor(self._verified.size, self._verified.head)
        if self._wal is not None:
            self._wal.close()
        with self._queue_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._writer.dispose()
        self._reader.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------------

    def set_signer(self, signer: Signer) -> None:
        self._mac_key(signer)
        self._signer = signer

    def _mac_key(self, signer: Signer) -> bytes:
        key = self._mac_keys.get(signer.kid)
        if key is None:
            key = self._mac_keys[signer.kid] = signer.derive_key(ROW_MAC_PURPOSE)
        return key

    def append(
        self,
        entry_type: str,
        data: Mapping[str, Any],
        *,
        signer: Signer | None = None,
        guard: Callable[[Governance], None] | None = None,
    ) -> LedgerEntry:
        """Append one entry and return it once it is durable. Raises :class:`LedgerError` if it is not written.

        ``guard`` is called under the write lock with the verified governance state as of the new entry's place; it
        raises a LexeconError to refuse the append (so a check and its entry cannot be split by another writer)."""
        signer = signer or self._signer
        if signer is None:
            raise LedgerError("this ledger handle is read-only (no signing key)")
        request = _Request(entry_type, data, signer, False, guard=guard)
        entry = self._append(entry_type, data, signer, request=request)
        assert entry is not None
        if self.checkpoint_interval and entry.seq % self.checkpoint_interval == 0:
            try:
                self.checkpoint(signer=signer)
            except LedgerError as exc:  # the entry is durable; a missed periodic checkpoint is made up next time
                logger.warning("periodic checkpoint at entry %d failed: %s", entry.seq, exc)
        return entry

    def append_once(self, entry_type: str, data: Mapping[str, Any]) -> tuple[LedgerEntry, bool]:
        """Append unless an entry with ``data["decision_id"]`` exists; return the entry and whether it is new.

        The check runs under the write lock, so concurrent appends of one decision id - retries of one request
        reaching different processes - leave exactly one entry."""
        signer = self._signer
        if signer is None:
            raise LedgerError("this ledger handle is read-only (no signing key)")
        request = _Request(entry_type, data, signer, False, once=str(data["decision_id"]))
        entry = self._append(entry_type, data, signer, request=request)
        assert entry is not None
        return entry, not request.existed

    def _append(
        self,
        entry_type: str,
        data: Mapping[str, Any],
        signer: Signer,
        *,
        only_if_empty: bool = False,
        request: _Request | None = None,
    ) -> LedgerEntry | None:
        """Group commit: appends that arrive while another thread is writing queue up and go out together in the
        next transaction, under one lock acquisition and one commit. Each caller returns only once its entry is
        durable. A writer hands the pen to the oldest waiting request, so every thread is woken exactly once."""
        request = request or _Request(entry_type, data, signer, only_if_empty)
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

    def _abandon(self, request: _Request) -> None:
        with self._queue_lock:
            if request in self._queue:
                self._queue.remove(request)
                return
        if request.wake.is_set() and not request.done:  # it had just been made the writer: pass that on
            self._hand_over()

    def _write_batch(self, batch: list[_Request]) -> None:
        # The first walk from the genesis entry runs before the write lock: it may take a while. After that, what
        # other processes appended is verified under the lock, read with the head in one statement: it became
        # visible only when they committed, just before this process got the lock, so there is nothing to read
        # earlier (measured: catching up before the lock as well only added reads). Their row MACs make it cheap.
        if self._verified is None:
            try:
                self.trusted_state()
            except LedgerError as exc:
                for item in batch:
                    item.error = exc
                return
        with self._backend.writer_turn():
            self._write_batch_now(batch)
        if self._wal is not None:  # after the commit and outside it: nothing here can fail a written entry
            self._wal.committed(sum(1 for item in batch if item.entry is not None and not item.existed))

    def _write_batch_now(self, batch: list[_Request]) -> None:
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
                    item.entry, row = self._build(item, seq, prev)
                except LexeconError as exc:  # this request's own data is bad: it alone fails, nothing written
                    item.error = exc
                    continue
                except (TypeError, AttributeError, ValueError) as exc:
                    item.error = InvalidRequest(f"ledger entry data is malformed: {exc}")
                    continue
                rows.append(row if self._positional else dict(zip(_COLUMN_NAMES, row, strict=True)))
                new.append(item.entry)
                if item.once is not None:
                    written[item.once] = item.entry
                if governance is not None and item.entry_type in GOVERNANCE_TYPES:
                    governance.apply(seq, item.entry_type, item.entry.created_at, item.entry.data)
                seq, prev = seq + 1, item.entry.entry_hash
            if rows:
                cursor.executemany(self._insert_sql, rows)
            db.commit()  # durable (to the chosen level) when this returns
            self._absorb_own(verified, new)
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
            error = exc if isinstance(exc, LedgerError) else LedgerError(f"ledger write failed: {_short(exc)}")
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
        known = self._verified
        if known is not None and known.size > 0:
            # One statement on the writer's connection: the verified head row, then anything appended since.
            size, digest = known.size, known.head
            tail = self._tail_sql
            rows = cursor.execute(tail.sql, tail.params({"s": size, "n": _TAIL_ROWS + 1})).fetchall()
            if rows and len(rows) <= _TAIL_ROWS and rows[0][0] == size and bytes(rows[0][4]) == digest:
                with self._trust_lock:
                    if (known.size, known.head) == (size, digest):  # no other thread grew it meanwhile
                        last = rows[-1]
                        verified = self.trusted_state((int(last[0]), bytes(last[4])), pages=[rows[1:]])
                        return verified, verified.size + 1, verified.head
            # Many new rows, the verified head gone or changed, or grown meanwhile: the general path decides.
        head = cursor.execute(self._head_sql).fetchone()
        seq, prev = (head[0] + 1, bytes(head[1])) if head else (1, genesis_hash(self.node_id))
        return self.trusted_state((seq - 1, prev)), seq, prev

    def _find(self, cursor: Any, decision_id: str, verified: Verified) -> LedgerEntry | None:
        """The entry already recorded for ``decision_id``, once it checks out: a retry is answered from it, and an
        approval's token signed again, so it must be the node's own entry at its place in the verified chain."""
        row = cursor.execute(self._find_sql, (decision_id,) if self._positional else {"d": decision_id}).fetchone()
        if row is None:
            return None
        found = _retry_entry(_to_entry(row), decision_id, self.node_id)
        if isinstance(found, LedgerEntry):
            if verified.hash_at(found.seq) == found.entry_hash or self._proven(found, verified):
                return found
            found = "not at its place in the verified chain"
        refusal = LedgerTampered(int(row[0]), f"the entry recorded for {decision_id} is {found}")
        self._refused(refusal)
        raise refusal

    def _proven(self, entry: LedgerEntry, verified: Verified) -> bool:
        """Whether ``entry`` is in the tree of a trusted checkpoint that this handle's verified prefix reaches: its
        place for an entry older than the recent hashes kept."""
        roots = trusted_roots(self._stored_notes(), self.node_id, verified.keys)
        sizes = sorted(size for size in roots if entry.seq <= size <= verified.size)
        if not sizes:
            return False
        try:
            with self._reader.connect() as conn:
                proof = _tree.prove_inclusion(conn, entry.seq, sizes[0], {})
        except (LedgerError, LookupError, SQLAlchemyError):
            return False
        return verify_inclusion(leaf_hash(entry.entry_hash), entry.seq - 1, sizes[0], proof.hashes, roots[sizes[0]])

    def _build(self, item: _Request, seq: int, prev: bytes) -> tuple[LedgerEntry, tuple[Any, ...]]:
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

    def publish_key(self, key: PublicKey) -> None:
        """Record a public key in the ledger database so an exported file carries the keys that signed it."""
        table = _schema.published_keys
        try:
            with self._writer.begin() as conn:
                exists = conn.execute(select(table.c.kid).where(table.c.kid == key.kid)).first()
                if exists is None:
                    conn.execute(insert(table).values(kid=key.kid, public_key=key.raw, created_at=utc_timestamp()))
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot publish key: {_short(exc)}") from None

    # -- what this handle has verified (see _trust) ---------------------------------------------------------------

    def trusted_state(
        self, head: tuple[int, bytes] | None = None, *, pages: Iterable[Sequence[Any]] | None = None
    ) -> Verified:
        """The verified prefix of the chain, grown to ``head`` (default: the database's head now). Raises
        :class:`LedgerTampered` - logged and counted in ``refusals`` - if a row on the way does not verify or the
        database no longer continues what was verified. ``pages``: the rows after the verified head, already read
        (by the writer, under the lock); used only if that head is still the one verified. Callers read its
        fields under ``_trust_lock``."""
        with self._trust_lock:
            current = head
            try:
                failed = self._failed
                if failed is not None and failed[0] == (head or self.head()) and time.monotonic() < failed[2]:
                    raise failed[1]  # nothing changed since that walk failed: do not walk it again yet
                state = self._verified
                if state is not None and (state.size, state.head) != head:
                    try:
                        rows = self._pages(after=state.size) if pages is None else pages
                        extend(state, rows, node_id=self.node_id, macs=self._mac_keys)
                    except LedgerTampered:  # e.g. a purge it cannot judge from where it stands: walk it all
                        state = None
                if state is None:
                    state = self._walk_from_genesis()
                    if self._verified is not None:  # what was verified must still be there, unchanged
                        self._verified.check_continued_by(state)
                    self._verified = state
                # The writer's head was read under the write lock: the walk must end exactly there. Anyone else's
                # is read after the walk: appends since are fine, fewer entries than verified are not.
                current = head or self.head()
                check_head(state, current)
            except LedgerTampered as exc:
                self._failed = (current or self.head(), exc, time.monotonic() + 1.0)
                self._synced_at = 0.0  # nothing is answered from the earlier state once the ledger failed to verify
                self._refused(exc)
                raise
            except SQLAlchemyError as exc:
                raise LedgerError(f"cannot read ledger: {_short(exc)}") from None
            self._synced_at = time.monotonic()
            return state

    def _walk_from_genesis(self, observe: Callable[[Any], None] | None = None) -> Verified:
        """Everything verified from the genesis entry, trusting the signed checkpoints stored and the home's anchor
        (see _trust.establish); ``observe`` sees each page of rows that passed. Raises LedgerTampered."""
        roots = trusted_roots(self._stored_notes(), self.node_id, self._trusted_keys)
        anchors = _read_anchor(self._anchor_file)
        return establish(
            self._pages(),
            node_id=self.node_id,
            keys=self._trusted_keys,
            roots=roots,
            anchors=anchors,
            observe=observe,
            macs=self._mac_keys,
        )

    def _absorb_own(self, verified: Verified, entries: list[LedgerEntry]) -> None:
        with self._trust_lock:
            if not verified.absorb_own(entries) and self._verified is verified:
                self._verified = None  # cannot happen while appends queue on the write lock; if it does, walk again
            elif any(e.entry_type in GOVERNANCE_TYPES for e in entries):
                self._write_anchor(verified.size, verified.head)

    def _write_anchor(self, seq: int, digest: bytes) -> None:
        """Record ``(seq, hash)`` outside the database. Never fails the entry it follows: that is written already."""
        if self._anchor_file is None or seq == 0:
            return
        tmp = self._anchor_file.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{seq}:{digest.hex()}\n")
            os.replace(tmp, self._anchor_file)
        except OSError as exc:
            logger.warning("cannot record the ledger anchor in %s: %s", self._anchor_file, exc.strerror)

    def _refused(self, exc: LedgerTampered) -> None:
        self.refusals += 1
        if str(exc) != self._last_refusal:  # once per finding, not once per request it refuses
            self._last_refusal = str(exc)
            logger.error("%s", exc)

    def synced_within(self, seconds: float) -> bool:
        """Whether this handle caught up with the database within ``seconds``."""
        return self._verified is not None and time.monotonic() - self._synced_at <= seconds

    def trusted_keys(self) -> dict[str, PublicKey]:
        """The keys this node accepts on the ledger: its own and those verified hand-overs introduced (never the
        ``ledger_keys`` table, which anyone with database access can write)."""
        state = self.trusted_state()
        with self._trust_lock:
            return dict(state.keys)

    def api_key(self, key_id: str) -> KeyRecord | None:
        """The API key ``key_id`` as verified entries record it, as of the last catch-up (no I/O)."""
        with self._trust_lock:
            return self._verified.governance.api_keys.get(key_id) if self._verified is not None else None

    def governance(self, *, max_age: float = 0.0) -> Governance:
        """A snapshot of the governance state folded from verified entries - the policy in force, retention, holds,
        API keys - caught up with the database first unless that was done within ``max_age`` seconds."""
        if not self.synced_within(max_age):
            self.trusted_state()
        with self._trust_lock:
            assert self._verified is not None
            return self._verified.governance.copy()

    # -- reading --------------------------------------------------------------------------------------------------

    def published_keys(self) -> dict[str, PublicKey]:
        """Keys recorded in the database itself.

        Not an independent trust anchor: whoever can edit rows can edit these.
        """
        table = _schema.published_keys
        with self._reader.connect() as conn:
            rows = conn.execute(select(table.c.public_key)).all()
        keys = [PublicKey.from_raw(bytes(r[0])) for r in rows]
        return {k.kid: k for k in keys}

    def head(self) -> tuple[int, bytes]:
        """``(size, hash of the last entry)``; ``(0, genesis hash)`` for an empty ledger."""
        with self._reader.connect() as conn:
            row = conn.execute(_HEAD).first()
        return (int(row[0]), bytes(row[1])) if row else (0, genesis_hash(self.node_id))

    def count(self, *, entry_type: str | None = None, outcome: str | None = None) -> int:
        query = select(func.count()).select_from(_t)
        if entry_type is not None:
            query = query.where(_t.c.entry_type == entry_type)
        if outcome is not None:
            query = query.where(_t.c.outcome == outcome)
        with self._reader.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def get(self, seq: int) -> LedgerEntry | None:
        with self._reader.connect() as conn:
            row = conn.execute(select(*_FULL).where(_t.c.seq == seq)).first()
        return _to_entry(row) if row else None

    def entries(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        entry_type: str | None = None,
        actor: str | None = None,
        tool: str | None = None,
        outcome: str | None = None,
        decision_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        newest_first: bool = False,
    ) -> list[LedgerEntry]:
        """Entries with ``seq > after`` matching every given filter, oldest first unless ``newest_first``."""
        query = select(*_FULL).where(_t.c.seq > after)
        filters = {"entry_type": entry_type, "actor": actor, "tool": tool, "outcome": outcome}
        for column, value in (*filters.items(), ("decision_id", decision_id)):
            if value is not None:
                query = query.where(_t.c[column] == value)
        if since is not None:  # timestamps are RFC 3339 UTC with microseconds: they sort as strings
            query = query.where(_t.c.created_at >= since)
        if until is not None:
            query = query.where(_t.c.created_at < until)
        query = query.order_by(_t.c.seq.desc() if newest_first else _t.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._reader.connect() as conn:
            return [_to_entry(r) for r in conn.execute(query)]

    def _pages(self, size: int = 1024, *, after: int = 0) -> Iterator[list[Any]]:
        """Every row, ``_ROW_COLUMNS`` as the driver returns them, a page at a time in ``seq`` order."""
        # Keyset pagination keeps memory flat and never holds a read transaction open for the whole verify. Like
        # the append path, verification drives the driver directly with SQL compiled from the Table: at hundreds
        # of thousands of rows a second, building any object per entry would be much of the cost. Pages of ~1,000
        # rows read faster than larger ones (they stay in the CPU cache until checked).
        statement = self._page_sql
        last = after
        while True:
            params = statement.params({"after": last, "n": size})
            raw = self._reader.raw_connection()
            try:
                cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
                page = cursor.execute(statement.sql, params).fetchall()
                cursor.close()
                raw.rollback()
            finally:
                raw.close()
            if page:
                yield page
            if len(page) < size:
                return
            last = page[-1][0]

    def _rows(self) -> Iterator[StoredRow]:
        return (stored_row(values) for page in self._pages() for values in page)

    def verify(
        self,
        keys: Mapping[str, PublicKey] | None = None,
        *,
        anchors: Sequence[tuple[int, bytes]] = (),
        checkpoints: Sequence[str] = (),
        key_source: str | None = None,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
        trust_checkpoints: bool = False,
    ) -> VerificationReport:
        """Verify every entry (chain, hashes, signatures) and every signed checkpoint - those stored in the ledger
        and the ``checkpoints`` notes given (kept elsewhere, so deleting rows cannot hide a truncation).

        ``keys`` are the trusted public keys. Without them, the keys published inside the database are used, and the
        report says so: that proves internal consistency, not authenticity.
        """
        source = key_source or "trusted keys"
        pinned = keys is not None
        if keys is None:
            keys, source = self.published_keys(), "keys embedded in the ledger (not independently pinned)"
        try:
            notes = [*self._stored_notes(), *checkpoints]  # raw: a damaged note is a finding, not a crash
            report = verify_pages(
                self._pages(),
                node_id=self.node_id,
                keys=keys,
                anchors=anchors,
                checkpoints=notes,
                key_source=source,
                progress=progress,
                workers=workers,
                trust_checkpoints=trust_checkpoints,
            )
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot read ledger: {_short(exc)}") from None
        report.keys_pinned = pinned
        return report

    def export(self, path: Path, *, signer: Signer | None = None) -> dict[str, Any]:
        """Write a signed, self-contained bundle of the whole ledger (a fresh checkpoint covers its tail)."""
        signer = signer or self._signer
        if signer is None:
            raise LedgerError("exporting signs the bundle: this ledger handle has no signing key")
        self.checkpoint(signer=signer)
        keys = {**self.trusted_keys(), signer.kid: signer.public}
        jwks = jwks_of(keys.values())
        try:
            return write_bundle(
                path,
                node_id=self.node_id,
                rows=self._rows(),
                checkpoints=self._stored_notes(),
                jwks=jwks,
                signer=signer,
            )
        except OSError as exc:
            raise LedgerError(f"cannot write {path}: {exc.strerror}") from None

    # -- retention and legal holds (see _retention) ------------------------------------------------------------------

    def set_retention(self, days: int, *, reason: str) -> LedgerEntry:
        return self.append("retention_policy", _retention.policy(days, reason))

    def place_hold(self, from_seq: int, to_seq: int, *, reason: str) -> str:
        hold = _retention.new_hold(from_seq, to_seq, reason)
        self.append("legal_hold", hold)
        return str(hold["hold_id"])

    def release_hold(self, hold_id: str, *, reason: str) -> LedgerEntry:
        return self.append(
            "legal_hold_released",
            {"hold_id": hold_id, "reason": reason},
            guard=lambda governance: _retention.require_active(hold_id, governance),
        )

    def purge(self, up_to: int, *, reason: str, now: datetime | None = None) -> LedgerEntry | None:
        """Remove the bodies of decision entries 2..``up_to`` that are past retention and under no hold, and record
        the purge as a signed tombstone in the same transaction. Refuses (LedgerError) if any of them may not go."""
        signer = self._signer
        if signer is None:
            raise LedgerError("a purge is signed: this ledger handle has no signing key")
        try:
            with self._writer.begin() as conn:  # the write lock: no append interleaves
                verified = self.trusted_state(self._locked_head(conn))
                candidates = self._purge_candidates(up_to, verified)
                with self._trust_lock:
                    governance = verified.governance.copy()
                now = now or datetime.now(UTC)
                planned = _retention.plan_purge(
                    candidates, governance, reason=reason, now=now, default_days=self.retention_days
                )
                if planned is None:
                    return None
                seqs, data = planned
                _retention.erase(conn, seqs)
                request = _Request(TOMBSTONE_TYPE, data, signer, False)
                entry, row = self._build(request, verified.size + 1, verified.head)
                conn.execute(insert(_t).values(dict(zip(_COLUMN_NAMES, row, strict=True))))
            self._absorb_own(verified, [entry])
            return entry
        except SQLAlchemyError as exc:
            raise LedgerError(f"purge failed, nothing changed: {_short(exc)}") from None

    def _locked_head(self, conn: Any) -> tuple[int, bytes]:
        head = conn.execute(_HEAD).first()
        return (int(head[0]), bytes(head[1])) if head else (0, genesis_hash(self.node_id))

    def _purge_candidates(self, up_to: int, verified: Verified) -> list[tuple[int, str | None]]:
        """``(seq, ts)`` of the decision entries 2..``up_to`` not yet purged, read from bodies a walk from the genesis
        entry authenticated (the copied columns say nothing), and only if that walk ends at the verified head."""
        found: list[tuple[int, str | None]] = []

        def observe(rows: Any) -> None:
            for row in rows:
                seq, body, gone = row[0], _blob(row[2]), row[12]
                if 2 <= seq <= up_to and not gone and body_type(body) in _retention.PURGEABLE_TYPES:
                    found.append((seq, body_ts(body)))

        with self._trust_lock:
            reached = (verified.size, verified.head)
        try:
            walked = self._walk_from_genesis(observe)
            if (walked.size, walked.head) != reached:
                raise LedgerTampered(walked.size, "the ledger changed while the purge walked it")
        except LedgerTampered as exc:
            self._refused(exc)
            raise
        return found

    # -- Merkle tree, checkpoints, proofs (see _tree) ------------------------------------------------------------------

    def checkpoint(self, *, signer: Signer | None = None) -> Checkpoint:
        """Grow the Merkle tree to the current head and sign a checkpoint of it (or return the one at that size)."""
        signer = signer or self._signer
        if signer is None:
            raise LedgerError("this ledger handle is read-only (no signing key)")
        try:
            with self._writer.begin() as conn:  # the write lock: the tree and the checkpoint describe one prefix
                verified = self.trusted_state(self._locked_head(conn))
                with self._trust_lock:
                    expected = (verified.size, verified.tree.root())
                # Signed over the tree of the verified prefix only: stored rows and tree nodes must agree with it.
                return _tree.checkpoint(conn, signer, origin_for(self.node_id), expected, verified.keys)
        except LedgerTampered as exc:
            self._refused(exc)
            raise
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot make a checkpoint: {_short(exc)}") from None

    def checkpoints(self) -> list[Checkpoint]:
        """Stored checkpoints, oldest first (unverified; :meth:`verify` checks them)."""
        return _tree.parse_notes(self._stored_notes())

    def _stored_notes(self) -> list[str]:
        with self._reader.connect() as conn:
            return _tree.stored_notes(conn)

    def inclusion_proof(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        """Proof that entry ``seq`` is in the tree of ``tree_size`` entries (default: the latest checkpoint)."""
        made = {c.size: c for c in self.checkpoints()}
        with self._reader.connect() as conn:
            return _tree.prove_inclusion(conn, seq, tree_size, made)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Proof that the tree of ``old_size`` entries is a prefix of the tree of ``new_size`` entries."""
        with self._reader.connect() as conn:
            return _tree.prove_consistency(conn, old_size, new_size)


_FULL = (
    _t.c.seq,
    _t.c.entry_type,
    _t.c.created_at,
    _t.c.body,
    _t.c.prev_hash,
    _t.c.entry_hash,
    _t.c.kid,
    _t.c.signature,
)


class _Statement:
    """SQL compiled once from the Table, run on the driver directly in its own parameter style."""

    __slots__ = ("_compiled", "_defaults", "_names", "sql")

    def __init__(self, compiled: Compiled) -> None:
        self._compiled, self.sql = compiled, str(compiled)
        self._names = list(compiled.positiontup or ())  # type: ignore[attr-defined]
        self._defaults: dict[str, Any] | None = None  # values SQLAlchemy adds itself (e.g. SQLite's OFFSET 0)

    def params(self, values: Mapping[str, Any]) -> Any:
        if self._defaults is None:  # construct_params costs ~20 µs a call: once is enough
            self._defaults = dict(self._compiled.construct_params(dict(values)) or {})
        full = {**self._defaults, **values}
        return tuple(full[n] for n in self._names) if self._names else full


def _to_entry(row: Any) -> LedgerEntry:
    return LedgerEntry(int(row[0]), row[1], row[2], _blob(row[3]), _blob(row[4]), _blob(row[5]), row[6], _blob(row[7]))


def _short(exc: BaseException) -> str:
    """First line of a database error, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


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


def _read_anchor(path: Path | None) -> list[tuple[int, bytes]]:
    """The anchor recorded beside the node's keys, if any; one that cannot be read anchors nothing (and says so)."""
    if path is None or not path.is_file():
        return []
    try:
        seq, _, digest = path.read_text().strip().partition(":")
        return [(int(seq), bytes.fromhex(digest))]
    except (OSError, ValueError):
        logger.warning("ignoring the unreadable ledger anchor %s", path)
        return []
