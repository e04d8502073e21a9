"""API keys for agents and services.

A key is ``lxk_<key_id>_<secret>``: ``key_id`` (16 hex characters) names the key in lists, logs and the ledger;
``secret`` is 256 random bits. Only ``SHA-256("lexecon:apikey:v1" 0x00 key)`` is kept. A fast hash is right here,
unlike for passwords: a 256-bit random secret cannot be guessed, so slowing each check down would buy nothing and
cost every request. Presented keys are compared with :func:`hmac.compare_digest`.

The keys that exist are what the signed ledger says: a key is created by an ``api_key_created`` entry (which
carries its hash) and revoked by an ``api_key_revoked`` entry, and a server knows them only from entries it verified
(``Ledger.governance``). No table is consulted, so a row written into the database by someone without the node's
signing key creates no key and un-revokes none. A revocation takes effect at once in the process that made it and,
elsewhere, once that process next catches up with the ledger: within ``cache_seconds``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass

from lexecon_core._glob import matches
from lexecon_core.auth.roles import Permission, Role, role_can
from lexecon_core.errors import AuthError
from lexecon_core.ledger import Ledger
from lexecon_core.ledger._governance import Governance, KeyRecord

__all__ = ["ApiKey", "ApiKeyStore", "Principal"]

logger = logging.getLogger("lexecon.auth")

_TAG = b"lexecon:apikey:v1\x00"
_KEY_RE = re.compile(r"^lxk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,127}$")
_DUMMY = hashlib.sha256(b"lexecon:apikey:dummy").digest()
_UNKNOWN_SYNC_SECONDS = 0.25  # an unknown key id makes a process catch up with the ledger at most this often


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key's public facts (never its secret)."""

    key_id: str
    name: str
    role: Role
    created_at: str
    revoked_at: str | None = None
    actors: str = "*"

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role.value,
            "actors": self.actors,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from, once its key checked out."""

    key_id: str
    name: str
    role: Role
    actors: str = "*"

    def can(self, permission: Permission) -> bool:
        return role_can(self.role, permission)

    def may_act_as(self, actor: str) -> bool:
        """Whether this key may ask for decisions on behalf of ``actor`` (its ``actors`` pattern matches)."""
        return matches(self.actors, actor)

    @property
    def label(self) -> str:
        return f"apikey:{self.key_id}"


def _digest(key: str) -> bytes:
    return hashlib.sha256(_TAG + key.encode("ascii")).digest()


def _key_id(presented: str) -> str | None:
    """The key id of a well-formed key; None for anything else."""
    match = _KEY_RE.match(presented) if presented.isascii() else None
    return match.group(1) if match is not None else None


def _key_of(record: KeyRecord) -> ApiKey | None:
    try:
        role = Role(record.role)
    except ValueError:
        return None
    return ApiKey(record.key_id, record.name, role, record.created_at, record.revoked_at, record.actors)


class ApiKeyStore:
    """The API keys a node's ledger records. Creating or revoking one appends a signed entry; reading them reads
    what this process verified of the ledger."""

    def __init__(self, ledger: Ledger, *, cache_seconds: float = 5.0) -> None:
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._unknown_sync = 0.0  # when an unknown key id last made this process catch up
        self._warned: set[str] = set()

    def close(self) -> None:
        """Nothing to release: the store reads and writes through the node's ledger, which its owner closes."""

    # -- management -----------------------------------------------------------------------------------------------

    def create(self, name: str, role: Role | str, *, by: str, actors: str = "*") -> tuple[ApiKey, str]:
        """Make a key. Returns its record and the key itself, which is shown once and never stored.

        ``actors`` (a wildcard pattern, e.g. ``ai_agent:support_*``) names whom an agent key may decide for; a
        request for any other actor is refused.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise AuthError("an API key name is 1-128 letters, digits, spaces or ._:@/- and starts alphanumeric")
        if not isinstance(actors, str) or not 1 <= len(actors) <= 256 or "\x00" in actors:
            raise AuthError("an API key's actors pattern is 1-256 characters, e.g. 'ai_agent:support_bot'")
        try:
            role = Role(role)
        except ValueError:
            raise AuthError(f"unknown role {role!r}; expected one of {', '.join(r.value for r in Role)}") from None
        key_id = secrets.token_hex(8)
        key = f"lxk_{key_id}_{secrets.token_urlsafe(32)}"
        facts = {
            "key_id": key_id,
            "name": name,
            "role": role.value,
            "actors": actors,
            # The hash is what authenticates the key, so it is signed with the rest (it reveals nothing of a
            # 256-bit secret).
            "key_sha256": _digest(key).hex(),
            "by": by,
        }

        def unused(governance: Governance) -> None:
            if key_id in governance.api_keys:  # 64-bit id collision: astronomically unlikely; never overwrite
                raise AuthError("key id collision; try again")

        entry = self._ledger.append("api_key_created", facts, guard=unused)
        return ApiKey(key_id, name, role, entry.created_at, actors=actors), key

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        records = sorted(self._ledger.governance().api_keys.values(), key=lambda r: r.created_seq)
        keys = [k for r in records if (k := _key_of(r)) is not None]
        return keys if include_revoked else [k for k in keys if k.active]

    def get(self, key_id: str) -> ApiKey | None:
        record = self._ledger.governance().api_keys.get(key_id)
        return _key_of(record) if record is not None else None

    def revoke(self, key_id: str, *, by: str) -> ApiKey:
        """Revoke a key for good: a signed ``api_key_revoked`` entry, appended only if the key exists and is active
        as of its place in the chain (checked under the write lock), so concurrent revocations record it once and
        the others get :class:`AuthError`."""

        def active(governance: Governance) -> None:
            current = governance.api_keys.get(key_id)
            if current is None:
                raise AuthError(f"no API key {key_id!r}")
            if current.revoked_at is not None:
                raise AuthError(f"API key {key_id!r} is already revoked")

        record = self._ledger.governance().api_keys.get(key_id)  # a key's name and role never change
        if record is None:
            raise AuthError(f"no API key {key_id!r}")
        data = {"key_id": key_id, "name": record.name, "role": record.role, "by": by}
        entry = self._ledger.append("api_key_revoked", data, guard=active)
        return ApiKey(record.key_id, record.name, Role(record.role), record.created_at, entry.created_at, record.actors)

    # -- authentication -------------------------------------------------------------------------------------------

    def cached(self, presented: str) -> Principal | None:
        """The principal for a key, from what this process verified within ``cache_seconds`` - no I/O. None: not
        known that recently (call :meth:`authenticate`)."""
        key_id = _key_id(presented)
        if key_id is None or not self._ledger.synced_within(self._cache_seconds):
            return None
        return self._lookup(presented, key_id)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal a presented key belongs to, or None (malformed, unknown, wrong secret or revoked)."""
        key_id = _key_id(presented)
        if key_id is None:
            return None
        if not self._ledger.synced_within(self._cache_seconds):
            self._ledger.trusted_state()  # catch up: keys created or revoked by other processes
        elif self._ledger.api_key(key_id) is None:
            with self._lock:  # a key created a moment ago elsewhere; a flood of made-up ids costs one read per window
                due = time.monotonic() >= self._unknown_sync
                if due:
                    self._unknown_sync = time.monotonic() + _UNKNOWN_SYNC_SECONDS
            if due:
                self._ledger.trusted_state()
        return self._lookup(presented, key_id)

    def _lookup(self, presented: str, key_id: str) -> Principal | None:
        record = self._ledger.api_key(key_id)
        stored = _DUMMY
        if record is not None and record.key_sha256 is not None:
            stored = record.key_sha256
        elif record is not None and key_id not in self._warned:
            self._warned.add(key_id)
            logger.warning(
                "API key %s was created before keys' hashes were signed into the ledger; create a new one", key_id
            )
        # Compare even for an unknown id, so the response time does not say which key ids exist.
        if not hmac.compare_digest(stored, _digest(presented)) or record is None or record.revoked_at is not None:
            return None
        current = self._ledger.api_key(key_id)  # a revocation that landed during the check wins
        if current is None or current.revoked_at is not None:
            return None
        key = _key_of(record)
        return None if key is None else Principal(key.key_id, key.name, key.role, key.actors)
