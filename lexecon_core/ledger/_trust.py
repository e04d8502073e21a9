"""What one ledger handle has verified, and so may act on.

The database is not trusted; signatures are. Before a node acts on a row - appends after it, signs a checkpoint over
it, answers a retry from it, adopts the policy or API key it records, purges by the holds it names - the row must
have been checked: its hash, its signature by a trusted key (or by a key handed over in a verified ``key_rotated``
entry), and its place in the chain. :class:`Verified` is that knowledge for one handle:

- the longest verified prefix of the chain (entries ``1..size``, the last one's hash);
- the RFC 6962 tree over it (its right edge), which is what checkpoints sign;
- the hashes of its most recent entries, which place a row found by a query in the chain;
- the governance state folded from its entries (see ``_governance``).

It grows in two ways: by walking entries others appended (``continue_walk``: hashes, signatures, links), or by
the handle's own appends, whose entries it built itself on a head it had verified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lexecon_core.errors import LedgerTampered
from lexecon_core.keys import PublicKey
from lexecon_core.ledger._entry import LedgerEntry
from lexecon_core.ledger._governance import GOVERNANCE_TYPES, KEY_ROTATED, Governance, handed_over_key
from lexecon_core.ledger._merkle import CompactRange, leaf_hash
from lexecon_core.ledger._row import Row
from lexecon_core.ledger._verify import Continued, continue_walk

RECENT = 100_000  # entries whose hashes are kept to place rows found by a query (~4 MB)


@dataclass(slots=True)
class Verified:
    size: int
    head: bytes
    tree: CompactRange
    keys: dict[str, PublicKey]
    governance: Governance
    recent: list[bytes]  # hashes of entries ``size - len(recent) + 1 .. size``

    def hash_at(self, seq: int) -> bytes | None:
        """The verified hash of entry ``seq``, if it is among the recent entries."""
        index = seq - (self.size - len(self.recent)) - 1
        return self.recent[index] if 0 <= index < len(self.recent) else None

    def check_continued_by(self, other: Verified) -> None:
        """``other`` (a later walk of the same ledger) must contain this prefix unchanged, as far as it can tell."""
        if other.size < self.size:
            raise LedgerTampered(
                other.size + 1, f"ledger truncated: entries {other.size + 1}..{self.size} were verified and are gone"
            )
        if self.size and other.hash_at(self.size) not in (None, self.head):
            raise LedgerTampered(self.size, "an entry verified earlier has been replaced")

    def _remember(self, hashes: Sequence[bytes]) -> None:
        self.recent.extend(hashes)
        if len(self.recent) > 2 * RECENT:  # trimmed in steps, not per entry
            del self.recent[: len(self.recent) - RECENT]

    def absorb(self, walked: Continued) -> None:
        """Take a successful walk that continued from this state."""
        self.size, self.head, self.tree = walked.size, walked.head, walked.tree
        self.keys = dict(walked.keys)
        for seq, entry_type, ts, data in walked.governance:
            self.governance.apply(seq, entry_type, ts, data)
        self._remember(walked.hashes)

    def absorb_own(self, entries: Iterable[LedgerEntry]) -> bool:
        """Take entries this handle wrote itself (committed), in order. False if they do not continue this state -
        then the caller must drop it; never an exception, since the entries are already written."""
        added: list[bytes] = []
        for entry in entries:
            if entry.seq <= self.size and self.hash_at(entry.seq) == entry.entry_hash:
                continue  # a catch-up walk on another thread verified it first
            if entry.seq != self.size + 1 or entry.prev_hash != self.head:
                self._remember(added)
                return False
            self.tree.extend([leaf_hash(entry.entry_hash)])
            self.size, self.head = entry.seq, entry.entry_hash
            added.append(entry.entry_hash)
            if entry.entry_type in GOVERNANCE_TYPES:
                data = entry.data
                self.governance.apply(entry.seq, entry.entry_type, entry.created_at, data)
                new = handed_over_key(data) if entry.entry_type == KEY_ROTATED else None
                if new is not None:
                    self.keys[new.kid] = new
        self._remember(added)
        return True


def establish(
    pages: Iterable[Sequence[Row]],
    *,
    node_id: str,
    keys: Mapping[str, PublicKey],
    roots: Mapping[int, bytes],
    anchors: Sequence[tuple[int, bytes]] = (),
    observe: Callable[[Sequence[Row]], None] | None = None,
    macs: Mapping[str, bytes] | None = None,
) -> Verified:
    """Verify a ledger from its genesis entry: entries under a signed checkpoint by hash (and governance entries by
    signature too), the rest in full; each anchor (an entry the node recorded outside the database) must be there,
    unchanged. Raises :class:`LedgerTampered` if any entry fails."""
    walked = continue_walk(pages, node_id=node_id, keys=keys, roots=roots, anchors=anchors, observe=observe, macs=macs)
    _refuse_if_failed(walked)
    state = Verified(0, b"", CompactRange(), dict(keys), Governance(), [])
    state.absorb(walked)
    return state


def extend(
    state: Verified, pages: Iterable[Sequence[Row]], *, node_id: str, macs: Mapping[str, bytes] | None = None
) -> Verified:
    """``state`` grown by the entries in ``pages`` (those after ``state.size``), all checked in full (a row MAC
    under one of ``macs`` stands for its signature). ``state`` is changed only if every one of them verifies; else
    :class:`LedgerTampered`."""
    walked = continue_walk(
        pages, node_id=node_id, keys=state.keys, start=(state.size, state.head, state.tree), macs=macs
    )
    _refuse_if_failed(walked)
    state.absorb(walked)
    return state


def _refuse_if_failed(walked: Continued) -> None:
    if walked.failure is not None:
        seq, reason = walked.failure
        raise LedgerTampered(seq, reason)


def check_head(state: Verified, head: tuple[int, bytes]) -> None:
    """The database's head must be the verified head: a shorter ledger lost entries this handle had verified; one
    of the same length with another hash had its last entry replaced."""
    size, digest = head
    if size < state.size:
        raise LedgerTampered(size + 1, f"ledger truncated: entries {size + 1}..{state.size} were verified and are gone")
    if size == state.size and digest != state.head:
        raise LedgerTampered(size, "the head entry differs from the one verified (replaced)")
