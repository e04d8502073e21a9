"""Shared pieces of the CLI: the Typer app, the home option, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lexecon_core.errors import InvalidRequest

app = typer.Typer(
    name="lexecon",
    help="Lexecon: govern AI-agent tool calls with deterministic policy, signed tokens and a verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="LEXECON_HOME", help="Node home directory (default ./.lexecon).", show_default=False),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None) -> None:
    """A Rich table on a terminal; tab-separated lines (header first) when piped, so nothing is truncated."""
    if out.is_terminal:
        table = Table(*headers, title=title)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    if title:
        sys.stdout.write(f"# {title}\n")
    sys.stdout.write("\t".join(headers) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(row) + "\n")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` options; a value that parses as JSON (``10``, ``true``, ``{...}``) is taken as JSON."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} must look like key=value, got {pair!r}")
        try:
            result[key] = json.loads(raw)
        except ValueError:
            result[key] = raw
    return result
