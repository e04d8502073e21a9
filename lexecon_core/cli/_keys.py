"""``lexecon keys export|rotate``."""

from __future__ import annotations

import typer

from lexecon_core.cli._common import HomeOption, out, print_json
from lexecon_core.config import load_settings
from lexecon_core.errors import ConfigError
from lexecon_core.keys import KeyRing, jwks_of
from lexecon_core.node import open_node

keys_app = typer.Typer(help="Publish and rotate signing keys.", no_args_is_help=True)


@keys_app.command("export")
def export(home: HomeOption = None) -> None:
    """Print the JWKS: every public key this node has signed with."""
    settings = load_settings(home)
    if not settings.paths.keys.is_dir():
        raise ConfigError(f"no keys at {settings.paths.keys}; run `lexecon init` first")
    keys = KeyRing.load_public(settings.paths.keys)
    print_json(jwks_of(keys.values()))


@keys_app.command("rotate")
def rotate(home: HomeOption = None) -> None:
    """Make a new signing key; the old one signs the hand-over into the ledger, then retires."""
    node = open_node(home)
    try:
        old = node.keys.active_kid
        new = node.rotate_keys()
    finally:
        node.close()
    out.print(f"rotated signing key {old} -> [bold]{new}[/] (old public key stays published)")
