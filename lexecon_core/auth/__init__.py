"""Who may call Lexecon: roles and permissions, and API keys for agents and services."""

from lexecon_core.auth.apikeys import ApiKey, ApiKeyStore, Principal
from lexecon_core.auth.roles import PERMISSIONS, Permission, Role, role_can

__all__ = ["PERMISSIONS", "ApiKey", "ApiKeyStore", "Permission", "Principal", "Role", "role_can"]
