"""API keys for agents and services.

A key is ``lxk_<key_id>_<secret>``: ``key_id`` (16 hex characters) names the key in lists, logs and the ledger;
``secret`` is 256 random bits. Only ``SHA-256("lexecon:apikey:v1" 0x00 key)`` is stored. A fast hash is right here,
unlike for passwords: a 256-bit random secret cannot be guessed, so slowing each check down would buy nothing and
cost every request. Presented keys are compared with :func:`hmac.compare_digest`.

Creating and revoking a key is recorded in the ledger first, then applied. Verified keys are cached in-process for
``cache_seconds``: a revocation takes effect at once in the process that made it and within ``cache_seconds`` in
other processes sharing the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Select, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lexecon_core._glob import matches
from lexecon_core.auth.roles import Permission, Role, role_can
from lexecon_core.errors import AuthError, LedgerError
from lexecon_core.ledger import Ledger
from lexecon_core.ledger._backend import backend_for
from lexecon_core.ledger._entry import utc_timestamp
from lexecon_core.ledger._schema import api_keys

__all__ = ["ApiKey", "ApiKeyStore", "Principal"]

_TAG = b"lexecon:apikey:v1\x00"
_KEY_RE = re.compile(r"^lxk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,127}$")
_DUMMY = hashlib.sha256(b"lexecon:apikey:dummy").digest()
_KeyList = list["ApiKey"]  # named here: inside ApiKeyStore, ``list`` is the method
_KEYS = select(
    api_keys.c.key_id,
    api_keys.c.name,
    api_keys.c.role,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
    api_keys.c.actors,
)


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


class ApiKeyStore:
    """API keys in the node's database (the ``api_keys`` table, created by the ledger's migrations)."""

    def __init__(self, url: str, *, ledger: Ledger | None = None, cache_seconds: float = 5.0) -> None:
        self._ledger = ledger
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._revoked: set[str] = set()  # revoked by this process: never cached again, whatever a racing read saw
        self._lock = threading.Lock()
        try:
            backend, url = backend_for(url)
            self._engine: Engine = backend.make_engine(url, writer=True, readonly=False, durability="fsync")
            self._reader: Engine = backend.make_engine(url, writer=False, readonly=False, durability="fsync")
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the API key store: {type(exc).__name__}") from None

    def close(self) -> None:
        self._engine.dispose()
        self._reader.dispose()

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
        record = ApiKey(key_id, name, role, utc_timestamp(), actors=actors)
        facts = {"key_id": key_id, "name": name, "role": role.value, "actors": actors, "by": by}
        self._record("api_key_created", facts)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(api_keys).values(
                        key_id=key_id,
                        name=name,
                        role=role.value,
                        actors=actors,
                        key_hash=_digest(key),
                        created_at=record.created_at,
                    )
                )
        except IntegrityError:  # 64-bit id collision: astronomically unlikely; refuse rather than overwrite
            raise AuthError("key id collision; try again") from None
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot store the API key: {type(exc).__name__}") from None
        return record, key

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        query = _KEYS.order_by(api_keys.c.created_at, api_keys.c.key_id)
        return self._read(query if include_revoked else query.where(api_keys.c.revoked_at.is_(None)))

    def get(self, key_id: str) -> ApiKey | None:
        found = self._read(_KEYS.where(api_keys.c.key_id == key_id))
        return found[0] if found else None

    def _read(self, query: Select[Any]) -> _KeyList:
        try:
            with self._reader.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot read API keys: {type(exc).__name__}") from None
        return [ApiKey(r[0], r[1], Role(r[2]), r[3], r[4], r[5]) for r in rows]

    def revoke(self, key_id: str, *, by: str) -> ApiKey:
        """Revoke a key for good, then record it in the ledger. Exactly one of concurrent revocations succeeds (the
        others get :class:`AuthError`), so the ledger records each revocation once.

        Unlike creation, revocation acts before it logs: it only takes a permission away, so it must not wait on
        the ledger. If the entry then cannot be written, the key stays revoked and :class:`LedgerError` says so.
        """
        found = self.get(key_id)
        if found is None:
            raise AuthError(f"no API key {key_id!r}")
        revoked_at = utc_timestamp()
        still_active = (api_keys.c.key_id == key_id) & api_keys.c.revoked_at.is_(None)
        with self._lock:  # from now on this process refuses the key, even if a check in flight read it as active
            self._revoked.add(key_id)
            self._cache = {d: (p, t) for d, (p, t) in self._cache.items() if p.key_id != key_id}
        try:
            with self._engine.begin() as conn:
                won = conn.execute(update(api_keys).where(still_active).values(revoked_at=revoked_at)).rowcount == 1
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot revoke the API key: {type(exc).__name__}") from None
        if not won:
            raise AuthError(f"API key {key_id!r} is already revoked")
        try:
            self._record("api_key_revoked", {"key_id": key_id, "name": found.name, "role": found.role.value, "by": by})
        except LedgerError as exc:
            raise LedgerError(f"API key {key_id!r} is revoked, but the revocation was not recorded: {exc}") from None
        return ApiKey(found.key_id, found.name, found.role, found.created_at, revoked_at, found.actors)

    def _record(self, entry_type: str, data: dict[str, str]) -> None:
        if self._ledger is not None:
            self._ledger.append(entry_type, data)

    # -- authentication -------------------------------------------------------------------------------------------

    def cached(self, presented: str) -> Principal | None:
        """The principal for a key verified within ``cache_seconds``, without touching the database."""
        return self._cached(_digest(presented)) if presented.isascii() else None

    def _cached(self, digest: bytes) -> Principal | None:
        hit = self._cache.get(digest)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def authenticate(self, presented: str) -> Principal | None:
        """The principal a presented key belongs to, or None (malformed, unknown, wrong secret or revoked)."""
        match = _KEY_RE.match(presented) if presented.isascii() else None
        if match is None:
            return None
        digest = _digest(presented)
        hit = self._cached(digest)
        if hit is not None:
            return hit
        c = api_keys.c
        query = select(c.name, c.role, c.key_hash, c.revoked_at, c.actors).where(c.key_id == match.group(1))
        try:
            with self._reader.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot read API keys: {type(exc).__name__}") from None
        stored = bytes(row[2]) if row is not None else _DUMMY
        # Compare even for an unknown id, so the response time does not say which key ids exist.
        if not hmac.compare_digest(stored, digest) or row is None or row[3] is not None:
            return None
        principal = Principal(match.group(1), row[0], Role(row[1]), row[4])
        with self._lock:
            if principal.key_id in self._revoked:
                return None
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, time.monotonic() + self._cache_seconds)
        return principal
