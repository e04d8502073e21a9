"""What differs between the databases a ledger can live in: engine set-up, the single-writer lock, errors.

Both backends give the same guarantee: one appender at a time per ledger, taken *before* the head is read, so
concurrent processes queue instead of forking the chain.

- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock; WAL journal; ``synchronous`` by durability.
- PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, held until the transaction ends; commits are durable
  (``synchronous_commit`` on) unless durability is ``process``, which turns it off for the ledger's sessions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

from lexecon_core.errors import LedgerError

Durability = Literal["fsync", "process"]
DURABILITIES: tuple[str, ...] = ("fsync", "process")

# The advisory-lock key that serialises appenders of a PostgreSQL ledger (any fixed 64-bit value; "lexecon!" in ASCII).
_PG_LOCK_KEY = 0x6C65786563_6F6E21


@dataclass(frozen=True)
class Backend:
    name: str
    lock_sql: str  # first statement of every write transaction on the append path
    errors: tuple[type[BaseException], ...]  # driver errors that mean "the write did not happen"
    data_errors: tuple[type[BaseException], ...] = ()  # the database refused a row's values (not the connection)

    def make_engine(self, url: str, *, writer: bool, readonly: bool, durability: Durability) -> Engine:
        engine = create_engine(url, future=True, pool_pre_ping=self.name != "sqlite")
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
        return Backend("sqlite", "BEGIN IMMEDIATE", (sqlite3.Error,), (sqlite3.IntegrityError, sqlite3.DataError)), url
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
