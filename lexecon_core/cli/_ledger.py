"""``lexecon ledger list``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lexecon_core.cli._common import HomeOption, JsonFlag, out, print_json, print_table
from lexecon_core.node import open_node

ledger_app = typer.Typer(help="Read the ledger; checkpoints and proofs.", no_args_is_help=True)


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


@ledger_app.command("checkpoint")
def checkpoint(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Grow the Merkle tree to the head and print a signed checkpoint (C2SP signed note)."""
    node = open_node(home)
    try:
        made = node.ledger.checkpoint()
    finally:
        node.close()
    if as_json:
        print_json({"tree_size": made.size, "root": made.root.hex(), "timestamp": made.timestamp, "note": made.note})
        return
    sys.stdout.write(made.note)


@ledger_app.command("checkpoints")
def list_checkpoints(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """List the signed checkpoints stored in the ledger."""
    node = open_node(home, signer=False)
    try:
        made = node.ledger.checkpoints()
    finally:
        node.close()
    if as_json:
        print_json(
            [{"tree_size": c.size, "root": c.root.hex(), "timestamp": c.timestamp, "note": c.note} for c in made]
        )
        return
    print_table(("tree_size", "root", "timestamp"), [(str(c.size), c.root.hex(), c.timestamp) for c in made])


@ledger_app.command("prove")
def prove(
    entry: Annotated[int, typer.Option("--entry", min=1, help="Sequence number of the entry.")],
    size: Annotated[int | None, typer.Option("--size", min=1, help="Tree size (default: latest checkpoint).")] = None,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print an inclusion proof of an entry against a checkpoint (verifiable with RFC 9162 tooling)."""
    node = open_node(home, signer=False)
    try:
        proof = node.ledger.inclusion_proof(entry, size)
    finally:
        node.close()
    if as_json:
        print_json(proof.to_dict())
        return
    out.print(f"entry {proof.seq} (leaf {proof.leaf_index}) in the tree of {proof.tree_size} entries")
    out.print(f"  entry hash  {proof.entry_hash.hex()}")
    out.print(f"  root        {proof.root.hex()}")
    for index, value in enumerate(proof.hashes):
        out.print(f"  path[{index}]    {value.hex()}")


@ledger_app.command("export")
def export(
    out_file: Annotated[Path, typer.Option("--out", help="Bundle file to write (a zip).")],
    home: HomeOption = None,
) -> None:
    """Write a signed, self-contained bundle of the ledger; verify it anywhere with `verify-ledger --ledger-file`."""
    node = open_node(home)
    try:
        manifest = node.ledger.export(out_file)
    finally:
        node.close()
    out.print(f"exported {manifest['entries']} entries of node {manifest['node_id']} to {out_file}")
    out.print(f"  head  {manifest['head_hash']}")


ReasonOption = Annotated[str, typer.Option("--reason", min=1, help="Why; recorded in the signed ledger entry.")]


@ledger_app.command("retention")
def retention(
    days: Annotated[int, typer.Option("--days", min=1, max=36_500, help="Keep decision entries this many days.")],
    reason: ReasonOption,
    home: HomeOption = None,
) -> None:
    """Record the retention period in force from now on (a signed ledger entry)."""
    node = open_node(home)
    try:
        entry = node.ledger.set_retention(days, reason=reason)
    finally:
        node.close()
    out.print(f"retention set to {days} days (ledger entry {entry.seq})")


@ledger_app.command("hold")
def hold(
    from_seq: Annotated[int, typer.Option("--from", min=1, help="First entry under the hold.")],
    to_seq: Annotated[int, typer.Option("--to", min=1, help="Last entry under the hold.")],
    reason: ReasonOption,
    home: HomeOption = None,
) -> None:
    """Place a legal hold: no entry in the range can be purged until it is released."""
    node = open_node(home)
    try:
        hold_id = node.ledger.place_hold(from_seq, to_seq, reason=reason)
    finally:
        node.close()
    out.print(f"legal hold {hold_id} on entries {from_seq}..{to_seq}")


@ledger_app.command("release")
def release(
    hold_id: Annotated[str, typer.Option("--hold-id", help="The hold to release.")],
    reason: ReasonOption,
    home: HomeOption = None,
) -> None:
    """Release a legal hold (a signed ledger entry)."""
    node = open_node(home)
    try:
        entry = node.ledger.release_hold(hold_id, reason=reason)
    finally:
        node.close()
    out.print(f"released {hold_id} (ledger entry {entry.seq})")


@ledger_app.command("purge")
def purge(
    up_to: Annotated[int, typer.Option("--up-to", min=2, help="Purge decision entries 2..N.")],
    reason: ReasonOption,
    home: HomeOption = None,
) -> None:
    """Remove the bodies of decision entries past retention and under no hold; leaves a signed tombstone.

    Refuses, changing nothing, if any entry in the range is held or still inside retention.
    """
    node = open_node(home)
    try:
        tombstone = node.ledger.purge(up_to, reason=reason)
    finally:
        node.close()
    if tombstone is None:
        out.print("nothing to purge")
        return
    data = tombstone.data
    out.print(f"purged {data['purged']} decision entries in {data['from_seq']}..{data['to_seq']}")
    out.print(f"  tombstone ledger entry {tombstone.seq}")
