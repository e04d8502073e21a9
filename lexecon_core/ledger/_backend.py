"""What differs between the databases a ledger can live in: engine set-up, the single-writer lock, errors.

Both backends give the same guarantee: one appender at a time per ledger, taken *before* the head is read, so
concurrent processes queue instead of forking the chain.

- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock; WAL journal; ``synchronous`` by durability. Appenders
  in different processes first queue on an OS file lock next to the database (see :class:`WriterQueue`).
- PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, held until the transaction ends; commits are durable
  (``synchronous_commit`` on) unless durability is ``process``, which turns it off for the ledger's sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
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


@dataclass(frozen=True)
class Backend:
    name: str
    lock_sql: str  # first statement of every write transaction on the append path
    errors: tuple[type[BaseException], ...]  # driver errors that mean "the write did not happen"
    data_errors: tuple[type[BaseException], ...] = ()  # the database refused a row's values (not the connection)
    queue: WriterQueue | None = field(default=None, compare=False)  # cross-process writer queue (SQLite files)

    def writer_turn(self) -> contextlib.AbstractContextManager[None]:
        return self.queue.turn() if self.queue is not None else contextlib.nullcontext()

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
            cursor.execute(f"PRAGMA synchronous={'FULL' if durability == 'fsync' else 'NORMAL'}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


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
