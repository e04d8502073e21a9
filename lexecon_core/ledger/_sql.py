"""The ledger's SQL: the columns it reads, and statements compiled once from the Table.

The hot paths - an append per decision, verification at hundreds of thousands of rows a second - drive the database
driver directly with these statements, in its own parameter style (positional for sqlite3, named for psycopg): a
connection checkout and a SQLAlchemy execution context per statement would cost more than the statement itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.sql.compiler import Compiled

from lexecon_core.ledger import _schema
from lexecon_core.ledger._entry import LedgerEntry
from lexecon_core.ledger._row import blob

_t = _schema.entries

INSERT = insert(_t)
COLUMN_NAMES = tuple(c.name for c in _t.c)  # the order of the positional insert parameters
HEAD = select(_t.c.seq, _t.c.entry_hash).order_by(_t.c.seq.desc()).limit(1)
ROW_COLUMNS = (  # StoredRow's fields, as verification reads them
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
ENTRY_COLUMNS = (  # LedgerEntry's fields
    _t.c.seq,
    _t.c.entry_type,
    _t.c.created_at,
    _t.c.body,
    _t.c.prev_hash,
    _t.c.entry_hash,
    _t.c.kid,
    _t.c.signature,
)
FIND = select(*ENTRY_COLUMNS).where(_t.c.decision_id == bindparam("d")).order_by(_t.c.seq)
# The rows from a seq on (the verified head and what follows): read under the write lock on the writer's own
# connection, they give the head and what to verify in one statement.
TAIL = select(*ROW_COLUMNS).where(_t.c.seq >= bindparam("s")).order_by(_t.c.seq).limit(bindparam("n"))
PAGE = select(*ROW_COLUMNS).where(_t.c.seq > bindparam("after")).order_by(_t.c.seq).limit(bindparam("n"))


class Statement:
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


def to_entry(row: Any) -> LedgerEntry:
    return LedgerEntry(int(row[0]), row[1], row[2], blob(row[3]), blob(row[4]), blob(row[5]), row[6], blob(row[7]))


def short_error(exc: BaseException) -> str:
    """First line of a database error, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
