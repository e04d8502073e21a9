"""The ledger store: a signed hash chain in a SQL database (SQLite by default) through SQLAlchemy.

One writer at a time per ledger: every write transaction first takes the ledger's write lock (SQLite ``BEGIN
IMMEDIATE``; PostgreSQL an advisory lock), before the head is read, so two processes appending at once queue rather
than fork the chain.
With ``durability="fsync"`` (the default) an entry is on disk when :meth:`Ledger.append` returns and survives power
loss. ``durability="process"`` skips the per-commit flush: a returned entry survives the process being killed but not
the machine losing power. Both keep the chain consistent. Database specifics live in ``_backend``; the append path
(the writer queue and group commit) in ``_append``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from lexecon_core.errors import LedgerError, LedgerTampered
from lexecon_core.keys import PublicKey, Signer, b64url, jwks_of
from lexecon_core.ledger import _retention, _schema, _tree
from lexecon_core.ledger._anchor import read_anchor, write_anchor
from lexecon_core.ledger._append import Appender, AppendRequest
from lexecon_core.ledger._backend import DURABILITIES, Durability, WalCheckpointer, backend_for
from lexecon_core.ledger._bundle import write_bundle
from lexecon_core.ledger._checkpoint import Checkpoint, origin_for
from lexecon_core.ledger._entry import (
    GENESIS_TYPE,
    ROW_MAC_PURPOSE,
    TOMBSTONE_TYPE,
    LedgerEntry,
    genesis_hash,
    utc_timestamp,
)
from lexecon_core.ledger._governance import GOVERNANCE_TYPES, Governance, KeyRecord, body_ts, body_type
from lexecon_core.ledger._migrate import check_tables, ensure_schema
from lexecon_core.ledger._retention import DEFAULT_RETENTION_DAYS
from lexecon_core.ledger._row import StoredRow, blob, stored_row
from lexecon_core.ledger._sql import COLUMN_NAMES, ENTRY_COLUMNS, HEAD, PAGE, Statement, short_error, to_entry
from lexecon_core.ledger._tree import InclusionProof
from lexecon_core.ledger._trust import Verified, check_head, establish, extend
from lexecon_core.ledger._verify import VerificationReport, trusted_roots, verify_pages

_t = _schema.entries
logger = logging.getLogger("lexecon.ledger")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


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
        self._anchor_file = anchor_file  # see _anchor
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
            self._page_sql = Statement(PAGE.compile(dialect=self._reader.dialect))  # see _pages
            self.node_id, created = self._bind_node(node_id)
            self._appender = Appender(self)  # the append path: its queue, its connection, its statements
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open ledger: {short_error(exc)}") from None
        if created and signer is not None:
            self._write_genesis(signer)

    def _write_genesis(self, signer: Signer) -> None:
        """A new ledger starts with an entry naming its node and first key. Only a ledger this handle created gets
        one: an existing ledger that was emptied stays empty, and verification reports it."""
        if self.head()[0] == 0:
            self.publish_key(signer.public)
            genesis = {"node_id": self.node_id, "kid": signer.kid, "public_key": b64url(signer.public.raw)}
            self._appender.append(AppendRequest(GENESIS_TYPE, genesis, signer, True))

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

    def close(self) -> None:
        if self._verified is not None and self._signer is not None:
            with self._trust_lock:
                write_anchor(self._anchor_file, self._verified.size, self._verified.head)
        if self._wal is not None:
            self._wal.close()
        self._appender.close()
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
        entry = self._appender.append(AppendRequest(entry_type, data, signer, False, guard=guard))
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
        request = AppendRequest(entry_type, data, signer, False, once=str(data["decision_id"]))
        entry = self._appender.append(request)
        assert entry is not None
        return entry, not request.existed

    def publish_key(self, key: PublicKey) -> None:
        """Record a public key in the ledger database so an exported file carries the keys that signed it."""
        table = _schema.published_keys
        try:
            with self._writer.begin() as conn:
                exists = conn.execute(select(table.c.kid).where(table.c.kid == key.kid)).first()
                if exists is None:
                    conn.execute(insert(table).values(kid=key.kid, public_key=key.raw, created_at=utc_timestamp()))
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot publish key: {short_error(exc)}") from None

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
                raise LedgerError(f"cannot read ledger: {short_error(exc)}") from None
            self._synced_at = time.monotonic()
            return state

    def _walk_from_genesis(self, observe: Callable[[Any], None] | None = None) -> Verified:
        """Everything verified from the genesis entry, trusting the signed checkpoints stored and the home's anchor
        (see _trust.establish); ``observe`` sees each page of rows that passed. Raises LedgerTampered."""
        roots = trusted_roots(self._stored_notes(), self.node_id, self._trusted_keys)
        anchors = read_anchor(self._anchor_file)
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
                write_anchor(self._anchor_file, verified.size, verified.head)

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
            row = conn.execute(HEAD).first()
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
            row = conn.execute(select(*ENTRY_COLUMNS).where(_t.c.seq == seq)).first()
        return to_entry(row) if row else None

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
        query = select(*ENTRY_COLUMNS).where(_t.c.seq > after)
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
            return [to_entry(r) for r in conn.execute(query)]

    def _pages(self, size: int = 1024, *, after: int = 0) -> Iterator[list[Any]]:
        """Every row, ``ROW_COLUMNS`` (see _sql) as the driver returns them, a page at a time in ``seq`` order."""
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
            raise LedgerError(f"cannot read ledger: {short_error(exc)}") from None
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
                request = AppendRequest(TOMBSTONE_TYPE, data, signer, False)
                entry, row = self._appender.build(request, verified.size + 1, verified.head)
                conn.execute(insert(_t).values(dict(zip(COLUMN_NAMES, row, strict=True))))
            self._absorb_own(verified, [entry])
            return entry
        except SQLAlchemyError as exc:
            raise LedgerError(f"purge failed, nothing changed: {short_error(exc)}") from None

    def _locked_head(self, conn: Any) -> tuple[int, bytes]:
        head = conn.execute(HEAD).first()
        return (int(head[0]), bytes(head[1])) if head else (0, genesis_hash(self.node_id))

    def _purge_candidates(self, up_to: int, verified: Verified) -> list[tuple[int, str | None]]:
        """``(seq, ts)`` of the decision entries 2..``up_to`` not yet purged, read from bodies a walk from the genesis
        entry authenticated (the copied columns say nothing), and only if that walk ends at the verified head."""
        found: list[tuple[int, str | None]] = []

        def observe(rows: Any) -> None:
            for row in rows:
                seq, body, gone = row[0], blob(row[2]), row[12]
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
            raise LedgerError(f"cannot make a checkpoint: {short_error(exc)}") from None

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
