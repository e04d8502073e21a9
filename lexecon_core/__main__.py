"""``python -m lexecon_core`` runs the CLI."""

from lexecon_core.cli import main

main()
