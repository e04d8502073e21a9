"""The tamper-evident ledger: a signed hash chain of every decision, verifiable offline."""

from lexecon_core.ledger._entry import LedgerEntry, entry_hash, genesis_hash, signing_message
from lexecon_core.ledger._row import StoredRow
from lexecon_core.ledger._store import Ledger, sqlite_url
from lexecon_core.ledger._verify import VerificationReport, verify_rows

__all__ = [
    "Ledger",
    "LedgerEntry",
    "StoredRow",
    "VerificationReport",
    "entry_hash",
    "genesis_hash",
    "signing_message",
    "sqlite_url",
    "verify_rows",
]
