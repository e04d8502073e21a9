"""The ledger store: a signed hash chain in a SQL database (SQLite by default) through SQLAlchemy.

One writer at a time per ledger: every write transaction first takes the ledger's write lock (SQLite ``BEGIN
IMMEDIATE``; PostgreSQL an advisory lock), before the head is read, so two processes appending at once queue rather
than fork the chain.
With ``durability="fsync"`` (the default) an entry is on disk when :meth:`Ledger.append` returns and survives power
loss. ``durability="process"`` skips the per-commit flush: a returned entry survives the process being killed but not
the machine losing power. Both keep the chain consistent. Database specifics live in ``_backend``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from lexecon_core.errors import InvalidRequest, LedgerError, LexeconError
from lexecon_core.keys import PublicKey, Signer, b64url, jwks_of
from lexecon_core.ledger import _retention, _schema, _tree
from lexecon_core.ledger._backend import DURABILITIES, Durability, WalCheckpointer, backend_for
from lexecon_core.ledger._bundle import write_bundle
from lexecon_core.ledger._checkpoint import Checkpoint, origin_for
from lexecon_core.ledger._entry import (
    GENESIS_TYPE,
    TOMBSTONE_TYPE,
    LedgerEntry,
    entry_hash,
    genesis_hash,
    make_body,
    signing_message,
    utc_timestamp,
)
from lexecon_core.ledger._migrate import check_tables, ensure_schema
from lexecon_core.ledger._retention import DEFAULT_RETENTION_DAYS
from lexecon_core.ledger._tree import InclusionProof
from lexecon_core.ledger._verify import StoredRow, VerificationReport, _blob, stored_row, verify_pages

_t = _schema.entries
logger = logging.getLogger("lexecon.ledger")

_INSERT = insert(_t)
_COLUMN_NAMES = tuple(c.name for c in _t.c)  # the order of the positional insert parameters
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
    existed: bool = False
    entry: LedgerEntry | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class Ledger:
    """Append-only, signed, hash-chained ledger of one node.

    ``readonly=True`` opens an existing ledger for reading and verification without changing the file.
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
    ) -> None:
        self.url = url
        self._signer = signer
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
        self._signer = signer

    def append(self, entry_type: str, data: Mapping[str, Any], *, signer: Signer | None = None) -> LedgerEntry:
        """Append one entry and return it once it is durable. Raises :class:`LedgerError` if it is not written."""
        signer = signer or self._signer
        if signer is None:
            raise LedgerError("this ledger handle is read-only (no signing key)")
        entry = self._append(entry_type, data, signer)
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
            head = cursor.execute(self._head_sql).fetchone()
            seq, prev = (head[0] + 1, bytes(head[1])) if head else (1, genesis_hash(self.node_id))
            rows: list[Any] = []
            written: dict[str, LedgerEntry] = {}  # decision ids appended once, in this batch
            for item in batch:
                if item.only_if_empty and seq != 1:  # another writer got there first
                    continue
                if item.once is not None:
                    found = written.get(item.once) or self._find(cursor, item.once)
                    if found is not None:
                        item.entry, item.existed = found, True
                        continue
                try:
                    item.entry, row = self._build(item, seq, prev)
                except LexeconError as exc:  # this request's own data is bad: it alone fails, nothing written
                    item.error = exc
                    continue
                except (TypeError, AttributeError, ValueError) as exc:
                    item.error = InvalidRequest(f"ledger entry data is malformed: {exc}")
                    continue
                rows.append(row if self._positional else dict(zip(_COLUMN_NAMES, row, strict=True)))
                if item.once is not None:
                    written[item.once] = item.entry
                seq, prev = seq + 1, item.entry.entry_hash
            if rows:
                cursor.executemany(self._insert_sql, rows)
            db.commit()  # durable (to the chosen level) when this returns
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
            error = LedgerError(f"ledger write failed: {_short(exc)}")
            for item in batch:  # the transaction is gone: no entry of this batch exists
                item.entry = None
                item.error = item.error or error
            if not database_error:
                raise  # an interrupt or a bug: the writing thread sees the original, the others a LedgerError
        finally:
            if cursor is not None:
                cursor.close()

    def _find(self, cursor: Any, decision_id: str) -> LedgerEntry | None:
        row = cursor.execute(self._find_sql, (decision_id,) if self._positional else {"d": decision_id}).fetchone()
        return _to_entry(row) if row else None

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

    def _pages(self, size: int = 1024) -> Iterator[list[Any]]:
        """Every row, ``_ROW_COLUMNS`` as the driver returns them, a page at a time in ``seq`` order."""
        # Keyset pagination keeps memory flat and never holds a read transaction open for the whole verify. Like
        # the append path, verification drives the driver directly with SQL compiled from the Table: at hundreds
        # of thousands of rows a second, building any object per entry would be much of the cost. Pages of ~1,000
        # rows read faster than larger ones (they stay in the CPU cache until checked).
        compiled = (select(*_ROW_COLUMNS).where(_t.c.seq > bindparam("after")).order_by(_t.c.seq).limit(size)).compile(
            dialect=self._reader.dialect
        )
        sql, names = str(compiled), list(compiled.positiontup or ())
        last = 0
        while True:
            values = compiled.construct_params({"after": last})
            params = tuple(values[n] for n in names) if names else values
            raw = self._reader.raw_connection()
            try:
                cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
                page = cursor.execute(sql, params).fetchall()
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
        if keys is None:
            keys, source = self.published_keys(), "keys embedded in the ledger (not independently pinned)"
        try:
            notes = [*self._stored_notes(), *checkpoints]  # raw: a damaged note is a finding, not a crash
            return verify_pages(
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

    def export(self, path: Path, *, signer: Signer | None = None) -> dict[str, Any]:
        """Write a signed, self-contained bundle of the whole ledger (a fresh checkpoint covers its tail)."""
        signer = signer or self._signer
        if signer is None:
            raise LedgerError("exporting signs the bundle: this ledger handle has no signing key")
        self.checkpoint(signer=signer)
        keys = {**self.published_keys(), signer.kid: signer.public}
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
        with self._reader.connect() as conn:
            _retention.check_active(conn, hold_id, self.retention_days)
        return self.append("legal_hold_released", {"hold_id": hold_id, "reason": reason})

    def purge(self, up_to: int, *, reason: str, now: datetime | None = None) -> LedgerEntry | None:
        """Remove the bodies of decision entries 2..``up_to`` that are past retention and under no hold, and record
        the purge as a signed tombstone in the same transaction. Refuses (LedgerError) if any of them may not go."""
        signer = self._signer
        if signer is None:
            raise LedgerError("a purge is signed: this ledger handle has no signing key")
        try:
            with self._writer.begin() as conn:  # the write lock: no append interleaves
                now = now or datetime.now(UTC)
                data = _retention.purge(conn, up_to, reason=reason, now=now, default_days=self.retention_days)
                if data is None:
                    return None
                head = conn.execute(_HEAD).first()
                assert head is not None
                request = _Request(TOMBSTONE_TYPE, data, signer, False)
                entry, row = self._build(request, int(head[0]) + 1, bytes(head[1]))
                conn.execute(insert(_t).values(dict(zip(_COLUMN_NAMES, row, strict=True))))
                return entry
        except SQLAlchemyError as exc:
            raise LedgerError(f"purge failed, nothing changed: {_short(exc)}") from None
        except (ValueError, KeyError, TypeError) as exc:  # a damaged retention or hold entry: refuse, change nothing
            raise LedgerError(f"purge refused, the ledger's retention records are unreadable: {exc}") from None

    # -- Merkle tree, checkpoints, proofs (see _tree) ------------------------------------------------------------------

    def checkpoint(self, *, signer: Signer | None = None) -> Checkpoint:
        """Grow the Merkle tree to the current head and sign a checkpoint of it (or return the one at that size)."""
        signer = signer or self._signer
        if signer is None:
            raise LedgerError("this ledger handle is read-only (no signing key)")
        try:
            with self._writer.begin() as conn:  # the write lock: the tree and the checkpoint describe one prefix
                return _tree.checkpoint(conn, signer, origin_for(self.node_id))
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


def _to_entry(row: Any) -> LedgerEntry:
    return LedgerEntry(int(row[0]), row[1], row[2], _blob(row[3]), _blob(row[4]), _blob(row[5]), row[6], _blob(row[7]))


def _short(exc: BaseException) -> str:
    """First line of a database error, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
