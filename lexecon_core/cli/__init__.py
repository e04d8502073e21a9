"""The ``lexecon`` command line. Errors print one line and exit 2; ``LEXECON_DEBUG=1`` shows tracebacks."""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer

from lexecon_core.cli import _demo, _node, _server  # noqa: F401  (registers commands)
from lexecon_core.cli._apikey import apikey_app
from lexecon_core.cli._common import app, err
from lexecon_core.cli._keys import keys_app
from lexecon_core.cli._ledger import ledger_app
from lexecon_core.cli._policy import policy_app
from lexecon_core.errors import LexeconError

app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.add_typer(apikey_app, name="apikey")

__all__ = ["app", "main"]


def _fail(message: str) -> int:
    err.print(f"error: {message}", markup=False)
    return 2


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lexecon`` console script."""
    # The CLI is an application: warnings from lexecon (or anything else) reach stderr. A no-op when the host
    # program, or pytest, has configured logging already; ``lexecon server`` configures uvicorn's logging on top.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = app(args=argv, prog_name="lexecon", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = _fail("aborted")
    except LexeconError as exc:
        code = _fail(str(exc))
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            # A usage error from Typer's parser (Click's exception protocol; Typer may vendor Click).
            message = exc.format_message().replace("\n", " ")
            if not message:  # a group run without a command: the help was printed, nothing failed
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            sys.exit(_fail(message + hint))
        debug = bool(os.environ.get("LEXECON_DEBUG"))
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (set LEXECON_DEBUG=1 for a traceback)"
        code = _fail(f"unexpected {type(exc).__name__}: {exc}{hint}")
    sys.exit(code)
