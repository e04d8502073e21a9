"""``lexecon demo``: the LangChain support agent, governed, offline, on a scratch node."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from lexecon_core.cli._common import app, out
from lexecon_core.errors import ConfigError


@app.command()
def demo(
    home: Annotated[
        Path | None, typer.Option("--home", help="Where to create the demo node (default: a new temporary directory).")
    ] = None,
) -> None:
    """Run a governed LangChain support agent offline on a fresh node and verify its ledger."""
    try:
        from lexecon_integrations.langchain.demo import run_demo
    except ImportError:
        raise ConfigError("lexecon demo runs a LangChain agent: pip install 'lexecon[langchain]'") from None
    target = home or Path(tempfile.mkdtemp(prefix="lexecon-demo-")) / "home"
    if not run_demo(target, out):
        raise typer.Exit(1)
