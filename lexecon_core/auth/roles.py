"""Roles and what each may do. The one permission matrix: the server checks it, docs/security.md prints it."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PERMISSIONS", "Permission", "Role", "role_can"]


class Role(StrEnum):
    AGENT = "agent"
    AUDITOR = "auditor"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    DECIDE = "decide"  # POST /decide
    VERIFY_TOKEN = "verify_token"  # noqa: S105 - a permission name. POST /decide/verify
    READ_LEDGER = "read_ledger"  # GET /ledger/entries[/{seq}[/proof]], /ledger/checkpoints
    VERIFY_LEDGER = "verify_ledger"  # GET /ledger/verify
    EXPORT_LEDGER = "export_ledger"  # GET /ledger/export
    READ_POLICY = "read_policy"  # GET /policies
    READ_METRICS = "read_metrics"  # GET /metrics when LEXECON_METRICS_PUBLIC is false
    LOAD_POLICY = "load_policy"  # POST /policies/load
    RESOLVE_ESCALATION = "resolve_escalation"  # reserved for the escalation workflow
    MANAGE_KEYS = "manage_keys"  # GET/POST /apikeys, DELETE /apikeys/{key_id}
    MANAGE_USERS = "manage_users"  # reserved for people's accounts


_AGENT = frozenset({Permission.DECIDE, Permission.VERIFY_TOKEN})
_AUDITOR = frozenset(
    {
        Permission.VERIFY_TOKEN,
        Permission.READ_LEDGER,
        Permission.VERIFY_LEDGER,
        Permission.EXPORT_LEDGER,
        Permission.READ_POLICY,
        Permission.READ_METRICS,
    }
)
_OPERATOR = _AUDITOR | {Permission.LOAD_POLICY, Permission.RESOLVE_ESCALATION}
_ADMIN = _OPERATOR | {Permission.MANAGE_KEYS, Permission.MANAGE_USERS}

#: Least privilege: an agent decides and checks tokens, nothing else; only agents decide. Auditors read and verify;
#: operators also change policy; admins also manage credentials.
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.AGENT: _AGENT,
    Role.AUDITOR: _AUDITOR,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _ADMIN,
}


def role_can(role: Role, permission: Permission) -> bool:
    return permission in PERMISSIONS[role]
