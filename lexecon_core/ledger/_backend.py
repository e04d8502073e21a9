"""What differs between the databases a ledger can live in: engine set-up, the single-writer lock, errors.

Both backends give the same guarantee: one appender at a time per ledger, taken *before* the head is read, so
concurrent processes queue instead of forking the chain.

- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock; WAL journal; ``synchronous`` by durability. Appenders
  in different processes first queue on an OS file lock next to the database (see :class:`WriterQueue`); with
  ``process`` durability WAL checkpoints run on a background thread instead of inside an append
  (see :class:`WalCheckpointer`).
- PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, held until the transaction ends; commits are durable
  (``synchronous_commit`` on) unless durability is ``process``, which turns it off for the ledger's sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

from lexecon_core.errors import LedgerError

Durability = Literal["fsync", "process"]
DURABILITIES: tuple[str, ...] = ("fsync", "process")

# The advisory-lock key that serialises appenders of a PostgreSQL ledger (any fixed 64-bit value; "lexecon!" in ASCII).
_PG_LOCK_KEY = 0x6C65786563_6F6E21

# A writer connection checkpoints the WAL itself only past this many pages (~40 MB): a backstop for when the
# background checkpointer cannot keep up. SQLite's default is 1,000.
_WAL_BACKSTOP_PAGES = 10_000

logger = logging.getLogger("lexecon.ledger")


class WriterQueue:
    """Makes appenders in different processes wait their turn on a file lock beside a SQLite database.

    SQLite's own busy handler waits by sleeping (1, 2, 5, 10 ... ms) and retrying, so processes contending for the
    write lock (several server workers) lose most of their time asleep. A blocking ``flock`` is woken by the kernel
    the moment it is free. The database lock (``BEGIN IMMEDIATE``) is still taken inside, so correctness never
    depends on this queue: a process that does not use it is merely slower.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._open = threading.Lock()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        fd = self._descriptor()
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _descriptor(self) -> int | None:
        with self._open:
            if self._fd is None:
                try:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError:  # a read-only directory: fall back to SQLite's own waiting
                    return None
            return self._fd


class WalCheckpointer:
    """Runs SQLite's WAL checkpoints on a background thread, off the append path.

    Left to SQLite, the connection whose commit takes the WAL past 1,000 pages copies them into the database and
    syncs it inside that commit: one append in ~150 waits 10-20 ms for work that is not its own. Here the writing
    thread only counts the entries it commits; every ``every`` entries a daemon thread with its own connection runs
    a PASSIVE checkpoint, which never blocks appenders or readers (and releases the GIL while it copies). Durability
    is unchanged: a checkpoint moves committed pages, it does not decide what is committed.

    The thread exits after ``idle`` seconds without work (and is started again when needed), so a ledger that is
    never closed leaves nothing running; a forked child starts its own. If no thread can be started, the writers'
    backstop checkpoint (``_WAL_BACKSTOP_PAGES``) still bounds the WAL.
    """

    def __init__(self, path: str, *, synchronous: str, every: int = 128, idle: float = 5.0) -> None:
        self._path = path
        self._synchronous = synchronous
        self.every = every
        self._idle = idle
        self._pending = 0
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        # Also what a forked child runs: the parent's thread does not exist there, and its lock may be held.
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def committed(self, entries: int) -> None:
        """Called by the appending thread after a commit; asks for a checkpoint every ``every`` entries. Never
        raises: the entries are committed whatever happens here."""
        self._pending += entries
        if self._pending < self.every:
            return
        self._pending = 0
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            if self._closed:
                return
            self._wake.set()
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="lexecon-wal-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had (resource limits, interpreter shutdown)
                logger.warning("cannot start the background WAL checkpointer of the ledger: %s", exc)
                return
            self._thread = thread

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                woken = self._wake.wait(self._idle)
                with self._lock:
                    if self._closed or not (woken or self._wake.is_set()):
                        if self._thread is threading.current_thread():
                            self._thread = None
                        return
                    self._wake.clear()
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                        conn.execute(f"PRAGMA synchronous={self._synchronous}")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the writers' own backstop checkpoint still bounds the WAL
                    logger.warning("background WAL checkpoint of the ledger failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)


@dataclass(frozen=True)
class Backend:
    name: str
    lock_sql: str  # first statement of every write transaction on the append path
    errors: tuple[type[BaseException], ...]  # driver errors that mean "the write did not happen"
    data_errors: tuple[type[BaseException], ...] = ()  # the database refused a row's values (not the connection)
    queue: WriterQueue | None = field(default=None, compare=False)  # cross-process writer queue (SQLite files)

    def writer_turn(self) -> contextlib.AbstractContextManager[None]:
        return self.queue.turn() if self.queue is not None else contextlib.nullcontext()

    def wal_checkpointer(self, engine: Engine, durability: Durability) -> WalCheckpointer | None:
        """A background WAL checkpointer for a SQLite database file with ``process`` durability; None otherwise.

        With ``fsync`` durability SQLite keeps checkpointing in the committing connection: there every commit syncs
        anyway, and a checkpoint syncing the same disk from another thread slowed the appends more (p50 +10-14%,
        measured interleaved) than the occasional inline checkpoint does. ``engine`` is a reader engine: on a writer
        engine the first statement would take the write lock."""
        if self.name != "sqlite" or durability != "process":
            return None
        with engine.connect() as conn:  # the file SQLite itself opened: URI and relative paths resolved
            databases = conn.exec_driver_sql("PRAGMA database_list").all()
        path = next((str(row[2]) for row in databases if row[1] == "main"), "")
        return WalCheckpointer(path, synchronous=_sqlite_synchronous(durability)) if path else None

    def make_engine(self, url: str, *, writer: bool, readonly: bool, durability: Durability) -> Engine:
        # A database that does not answer must fail the request soon (fail closed), not after the OS's TCP timeout.
        connect_args = {"connect_timeout": 10} if self.name == "postgresql" else {}
        engine = create_engine(url, future=True, pool_pre_ping=self.name != "sqlite", connect_args=connect_args)
        if self.name == "sqlite":
            _configure_sqlite(engine, writer=writer, readonly=readonly, durability=durability)
        else:
            _configure_postgres(engine, writer=writer, readonly=readonly, durability=durability)
        return engine


def _configure_sqlite(engine: Engine, *, writer: bool, readonly: bool, durability: Durability) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let the "begin" event issue BEGIN, so we choose IMMEDIATE vs deferred (the SQLAlchemy docs recipe).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if readonly:
            cursor.execute("PRAGMA query_only=ON")
        else:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={_sqlite_synchronous(durability)}")
            if writer and durability == "process":  # WalCheckpointer does this work; this is the backstop
                cursor.execute(f"PRAGMA wal_autocheckpoint={_WAL_BACKSTOP_PAGES}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def _sqlite_synchronous(durability: Durability) -> str:
    return "FULL" if durability == "fsync" else "NORMAL"


def _configure_postgres(engine: Engine, *, writer: bool, readonly: bool, durability: Durability) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        if readonly:
            cursor.execute("SET default_transaction_read_only = on")
        if durability == "process":
            cursor.execute("SET synchronous_commit = off")
        cursor.close()
        dbapi_conn.commit()

    if writer:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")


def backend_for(url: str) -> tuple[Backend, str]:
    """The backend for a database URL, and the URL with the driver we use made explicit."""
    parsed = make_url(url)
    name = parsed.get_backend_name()
    if name == "sqlite":
        database = parsed.database
        queue = WriterQueue(f"{database}.writer-lock") if database and database != ":memory:" else None
        data_errors = (sqlite3.IntegrityError, sqlite3.DataError)
        return Backend("sqlite", "BEGIN IMMEDIATE", (sqlite3.Error,), data_errors, queue), url
    if name == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", "postgresql") and "+" in parsed.drivername:
            raise LedgerError("PostgreSQL ledgers use the psycopg driver: postgresql+psycopg://...")
        try:
            import psycopg
        except ImportError:
            raise LedgerError("a PostgreSQL ledger needs the driver: pip install 'lexecon[postgres]'") from None
        explicit = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        lock_sql = f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})"
        return Backend("postgresql", lock_sql, (psycopg.Error,), (psycopg.DataError, psycopg.IntegrityError)), explicit
    raise LedgerError(f"{name} ledgers are not supported; use SQLite or PostgreSQL")
