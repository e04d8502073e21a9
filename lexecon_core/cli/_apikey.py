"""``lexecon apikey create|list|revoke``: credentials for agents and services calling the server."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from lexecon_core.auth import ApiKeyStore, Role
from lexecon_core.cli._common import HomeOption, JsonFlag, out, print_json, print_table
from lexecon_core.errors import AuthError
from lexecon_core.node import Node, open_node

apikey_app = typer.Typer(help="Create, list and revoke API keys for the server.", no_args_is_help=True)


def _store(node: Node) -> ApiKeyStore:
    return ApiKeyStore(node.ledger)


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


@apikey_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key, e.g. support-bot.")],
    role: Annotated[Role, typer.Option("--role", help="agent, auditor, operator or admin.")],
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            help="Agent keys: the actors the key may decide for, a wildcard pattern (e.g. 'ai_agent:support_*', "
            "'*' for any). Required for --role agent.",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it once. Only a hash is stored: keep the key now, it cannot be shown again."""
    if role is Role.AGENT and actor is None:
        raise AuthError("an agent key must name the actors it may decide for: --actor 'ai_agent:NAME' ('*' for any)")
    node = open_node(home)
    store = _store(node)
    try:
        record, key = store.create(name, role, by=_operator(), actors=actor or "*")
    finally:
        store.close()
        node.close()
    if as_json:
        print_json({**record.to_dict(), "api_key": key})
        return
    scope = f", actors {record.actors!r}" if record.role is Role.AGENT else ""
    out.print(f"created API key {record.key_id} ({record.role.value}{scope}) for {record.name!r}; not shown again:")
    out.print(key, markup=False)


@apikey_app.command("list")
def list_keys(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """List keys (never their secrets)."""
    node = open_node(home, signer=False)
    store = _store(node)
    try:
        keys = store.list()
    finally:
        store.close()
        node.close()
    if as_json:
        print_json([k.to_dict() for k in keys])
        return
    rows = [(k.key_id, k.name, k.role.value, k.actors, k.created_at, k.revoked_at or "") for k in keys]
    print_table(("key id", "name", "role", "actors", "created", "revoked"), rows, title="API keys")


@apikey_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id from `lexecon apikey list`.")], home: HomeOption = None
) -> None:
    """Revoke a key for good (a signed ledger entry). Servers refuse it within LEXECON_API_KEY_CACHE_SECONDS."""
    node = open_node(home)
    store = _store(node)
    try:
        revoked = store.revoke(key_id, by=_operator())
    finally:
        store.close()
        node.close()
    out.print(f"revoked API key {revoked.key_id} ({revoked.name!r}) at {revoked.revoked_at}")
