"""``lexecon ledger list``."""

from __future__ import annotations

from typing import Annotated

import typer

from lexecon_core.cli._common import HomeOption, JsonFlag, print_json, print_table
from lexecon_core.node import open_node

ledger_app = typer.Typer(help="Read the ledger.", no_args_is_help=True)


@ledger_app.command("list")
def list_entries(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many entries, newest first.")] = 20,
    entry_type: Annotated[str | None, typer.Option("--type", help="Only this entry type, e.g. decision.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only decisions by this actor.")] = None,
    tool: Annotated[str | None, typer.Option(help="Only decisions on this tool.")] = None,
    outcome: Annotated[str | None, typer.Option(help="Only this outcome: approved|denied|escalated.")] = None,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List recent ledger entries."""
    node = open_node(home, signer=False)
    try:
        entries = node.ledger.entries(
            limit=limit, entry_type=entry_type, actor=actor, tool=tool, outcome=outcome, newest_first=True
        )
    finally:
        node.close()
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    rows = []
    for entry in entries:
        data = entry.data
        request = data.get("request") or {}
        rows.append(
            (
                str(entry.seq),
                entry.created_at,
                entry.entry_type,
                request.get("actor") or "",
                request.get("tool") or "",
                data.get("outcome") or "",
                entry.entry_hash.hex()[:16],
            )
        )
    print_table(("seq", "time", "type", "actor", "tool", "outcome", "hash"), rows)
