"""Bringing a ledger database's schema up to date with Alembic, under the ledger's own write lock."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from lexecon_core.errors import LedgerError
from lexecon_core.ledger import _schema

#: The head revision in ``migrations/versions``; a test keeps the two in step.
SCHEMA_REVISION = "0006"
MIGRATIONS = Path(__file__).with_name("migrations")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return str(value) if value is not None else None


def ensure_schema(writer: Engine, reader: Engine) -> None:
    """Upgrade to :data:`SCHEMA_REVISION` unless already there. Concurrent openers queue on the write lock."""
    if current_revision(reader) == SCHEMA_REVISION:
        return  # the common case: no Alembic import, one query
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with writer.begin() as conn:  # SQLite: BEGIN IMMEDIATE; PostgreSQL: the ledger's advisory lock
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def check_tables(reader: Engine) -> None:
    """For read-only opening: the database must already be a ledger."""
    try:
        present = set(inspect(reader).get_table_names())
    except SQLAlchemyError as exc:
        raise LedgerError(f"cannot read ledger: {exc}") from None
    core = {_schema.entries.name, _schema.meta.name, _schema.published_keys.name}  # older revisions lack the rest
    missing = core - present
    if missing:
        raise LedgerError(f"not a Lexecon ledger (missing tables {sorted(missing)})")
