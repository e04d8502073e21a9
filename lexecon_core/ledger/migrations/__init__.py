"""Alembic migrations of the ledger schema. Applied by :class:`lexecon_core.ledger.Ledger` when it opens a database."""
