"""The JSON bodies of the hosted server's HTTP API, shared by the server and :class:`~lexecon_core.RemoteGovernor`.

``POST /decide`` takes a :class:`~lexecon_core.DecisionRequest` and returns a :class:`~lexecon_core.Decision`; the
other endpoints use the models here. Every error response is an :class:`ErrorResponse`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lexecon_core.auth.roles import Role

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyInfo",
    "CheckpointInfo",
    "EntriesPage",
    "ErrorResponse",
    "FieldError",
    "Health",
    "InclusionProofInfo",
    "KeyRotationEntry",
    "KeyRotations",
    "LedgerEntryInfo",
    "LedgerVerification",
    "NodeInfo",
    "PolicyInfo",
    "PolicyLoad",
    "PolicyLoaded",
    "TokenCheck",
    "TokenCheckResult",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
KEY_ROTATIONS_PATH = "/.well-known/lexecon-key-rotations.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldError(_Model):
    loc: str = Field(description="where, e.g. body.tool_args")
    msg: str


class ErrorResponse(_Model):
    """Every 4xx/5xx body: a stable machine-readable ``error`` code and a message for people."""

    error: str = Field(description="e.g. invalid_request, unauthorized, forbidden, not_found, rate_limited")
    message: str
    fields: list[FieldError] | None = None


class TokenCheck(_Model):
    """``POST /decide/verify``: is this token a valid capability for calling ``tool`` with ``args``?"""

    token: str = Field(min_length=1, max_length=8192)
    tool: str = Field(min_length=1, max_length=256)
    args: dict[str, Any] = Field(default_factory=dict)
    consume: bool = Field(
        default=False, description="record the token as used on this server (a second consuming check fails)"
    )


class TokenCheckResult(_Model):
    valid: bool
    reason: str | None = Field(default=None, description="stable code when invalid, e.g. expired, args_mismatch")
    message: str
    decision_id: str | None = None
    ledger_entry_id: int | None = None
    claims: dict[str, Any] | None = None


class LedgerEntryInfo(_Model):
    """One entry exactly as stored: ``body`` is the canonical JSON text that was hashed and signed (UTF-8)."""

    seq: int
    entry_type: str
    created_at: str
    body: str
    prev_hash: str = Field(description="hex")
    entry_hash: str = Field(description="hex")
    kid: str
    signature: str = Field(description="hex, Ed25519 over the domain-separated entry hash")


class EntriesPage(_Model):
    entries: list[LedgerEntryInfo]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last page")


class LedgerVerification(_Model):
    valid: bool
    entries_verified: int
    chain_intact: bool
    signatures_valid: bool
    details: dict[str, Any]


class CheckpointInfo(_Model):
    tree_size: int
    root_hash: str = Field(description="hex")
    timestamp: str
    note: str = Field(description="the C2SP signed note")


class InclusionProofInfo(_Model):
    seq: int
    leaf_index: int
    tree_size: int
    entry_hash: str
    leaf_hash: str
    hashes: list[str]
    root: str
    checkpoint: str | None


class PolicyInfo(_Model):
    policy_version: str
    name: str
    mode: str
    terms: int
    relations: int
    document: dict[str, Any]


class PolicyLoad(_Model):
    """``POST /policies/load``: a policy document (the JSON form of a policy file)."""

    document: dict[str, Any]
    source: str = Field(default="api", min_length=1, max_length=128, description="recorded in the ledger")


class PolicyLoaded(_Model):
    policy_version: str
    ledger_entry_id: int


class Health(_Model):
    status: str = Field(description="ok, or unavailable when a readiness check fails")
    node_id: str
    version: str
    checks: dict[str, str]


class NodeInfo(_Model):
    """``GET /.well-known/lexecon.json``: what a client needs to check this node's tokens."""

    node_id: str
    version: str
    jwks_uri: str
    token_audience: str | None
    token_ttl_seconds: int
    token_leeway_seconds: int


class KeyRotationEntry(_Model):
    """One ``key_rotated`` ledger entry exactly as stored, signed by the key it retires. A client that trusts that key
    checks ``entry_hash`` over ``prev_hash`` and ``body``, the signature over the entry hash, then trusts the new key
    named in the body; the server's word is not needed."""

    seq: int
    prev_hash: str = Field(description="hex")
    entry_hash: str = Field(description="hex, SHA-256 over the entry tag, prev_hash and body")
    kid: str = Field(description="the key that signed the entry: the old key, body.data.old_kid")
    signature: str = Field(description="base64, Ed25519 over the domain-separated entry hash")
    body: str = Field(
        description="base64 of the exact stored canonical JSON: "
        '{"v", "seq", "type": "key_rotated", "ts", "node", "data": {"old_kid", "new_kid", "new_public_key"}}'
    )


class KeyRotations(_Model):
    """``GET /.well-known/lexecon-key-rotations.json``: every key hand-over of this node, oldest first."""

    node_id: str
    entries: list[KeyRotationEntry]


class ApiKeyCreate(_Model):
    name: str = Field(min_length=1, max_length=128)
    role: Role
    actors: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="required for agent keys: the actors the key may decide for, a wildcard pattern ('*': any)",
    )


class ApiKeyInfo(_Model):
    key_id: str
    name: str
    role: Role
    actors: str
    created_at: str
    revoked_at: str | None


class ApiKeyCreated(ApiKeyInfo):
    api_key: str = Field(description="shown once; only a hash is stored")
