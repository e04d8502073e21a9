"""``lexecon init``, ``decide`` and ``verify-ledger``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import make_url

from lexecon_core.cli._common import HomeOption, JsonFlag, app, err, out, parse_pairs, print_json
from lexecon_core.config import load_settings
from lexecon_core.decisions import LocalGovernor
from lexecon_core.errors import ConfigError, InvalidRequest
from lexecon_core.keys import KeyRing, PublicKey, jwks_to_keys
from lexecon_core.ledger import Ledger, VerificationReport, sqlite_url
from lexecon_core.ledger._bundle import is_bundle, verify_bundle
from lexecon_core.node import init_node


@app.command()
def init(
    node_id: Annotated[str, typer.Option("--node-id", help="Name of this node (goes into every token and entry).")],
    home: HomeOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite the config of an existing home (keys are kept).")
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Keep the ledger in this database (postgresql+psycopg://...); written to config.json.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a node home: config, Ed25519 signing key (0600) and a ledger (SQLite in the home by default)."""
    node = init_node(home, node_id=node_id, force=force, database_url=database_url)
    try:
        out.print(f"initialised node [bold]{node.node_id}[/] in {node.paths.root}")
        out.print(
            f"  signing key  {node.keys.active_kid} ({'encrypted' if node.keys.is_encrypted() else 'unencrypted'})"
        )
        out.print(f"  ledger       {make_url(node.settings.ledger_url).render_as_string(hide_password=True)}")
    finally:
        node.close()


@app.command()
def decide(
    actor: Annotated[str, typer.Option(help="Who is calling, e.g. ai_agent:support_bot.")],
    tool: Annotated[str, typer.Option(help="Tool name.")],
    action: Annotated[str | None, typer.Option(help="Proposed action, e.g. read:customer.")] = None,
    intent: Annotated[str, typer.Option(help="The user intent behind the call.")] = "",
    data_class: Annotated[
        list[str] | None, typer.Option("--data-class", help="Data class touched (repeatable).")
    ] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="Tool argument key=value (repeatable).")] = None,
    context: Annotated[list[str] | None, typer.Option("--context", help="Context key=value (repeatable).")] = None,
    risk_level: Annotated[
        str | None,
        typer.Option(help="Declared risk level: low|medium|high|critical, or 1-5 (1 low ... 4, 5 critical)."),
    ] = None,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Ask for a decision on one tool call; it is recorded in the ledger."""
    request = {
        "actor": actor,
        "proposed_action": action,
        "tool": tool,
        "tool_args": parse_pairs(arg, "--arg"),
        "user_intent": intent,
        "data_classes": data_class or [],
        # A number on the command line means the 1-5 scale, as it does in a JSON body.
        "risk_level": int(risk_level) if risk_level is not None and risk_level.isdecimal() else risk_level,
        "context": parse_pairs(context, "--context"),
    }
    with LocalGovernor(home) as governor:
        decision = governor.decide(request)
    if as_json:
        print_json(decision.model_dump(mode="json"))
        return
    colour = {"approved": "green", "denied": "red", "escalated": "yellow"}[decision.outcome.value]
    out.print(f"[bold {colour}]{decision.outcome.value}[/]  {decision.reasoning}")
    out.print(f"  decision     {decision.decision_id}")
    out.print(f"  risk         {decision.risk_level.value} ({decision.risk_score})")
    out.print(f"  ledger entry {decision.ledger_entry_id} ({decision.ledger_entry_hash[:16]}...)")
    out.print(f"  policy       {decision.policy_version}")
    if decision.escalation_id:
        out.print(f"  escalation   {decision.escalation_id}")
    if decision.capability_token:
        out.print(f"  token        {decision.capability_token}")


def _parse_anchor(text: str) -> tuple[int, bytes]:
    seq, sep, digest = text.partition(":")
    try:
        if not sep:
            raise ValueError
        value = bytes.fromhex(digest)
        if len(value) != 32:
            raise ValueError
        return int(seq), value
    except ValueError:
        raise InvalidRequest(f"--anchor must be SEQ:HEX_SHA256, got {text!r}") from None


def _read_note(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from None


def _trusted_keys(jwks: Path | None, node_id: str, home: Path | None) -> tuple[dict[str, PublicKey] | None, str]:
    """Pinned JWKS if given; else the keys of the local node whose ledger this is; else none (embedded keys)."""
    if jwks is not None:
        try:
            document = json.loads(jwks.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read JWKS {jwks}: {exc}") from None
        return jwks_to_keys(document), f"pinned JWKS {jwks}"
    settings = load_settings(home)
    if settings.paths.keys.is_dir() and settings.node_id == node_id:
        return KeyRing.load_public(settings.paths.keys), f"node keys in {settings.paths.keys}"
    return None, ""


@app.command("verify-ledger")
def verify_ledger(
    ledger_file: Annotated[
        Path | None,
        typer.Option("--ledger-file", help="Verify this SQLite file or exported bundle instead of the node's ledger."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Verify the ledger in this live database (e.g. postgresql+psycopg://...)."),
    ] = None,
    jwks: Annotated[Path | None, typer.Option("--jwks", help="Trust only the keys in this JWKS file.")] = None,
    anchor: Annotated[
        list[str] | None, typer.Option("--anchor", help="Known entry SEQ:HASH (from a token or receipt); repeatable.")
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", help="A signed checkpoint note kept elsewhere (file); repeatable."),
    ] = None,
    trust_checkpoints: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoints", help="Fast path: entries under a signed checkpoint are checked by hash only."
        ),
    ] = False,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Verify the ledger: hash chain, every signature, signed checkpoints, anchors.

    Exit 0 valid, 1 invalid, 3 consistent but unpinned (checked only against keys the ledger or bundle carries).
    """
    anchors = [_parse_anchor(a) for a in anchor or []]
    notes = [_read_note(path) for path in checkpoint or []]
    if ledger_file is not None and database_url is not None:
        raise ConfigError("give --ledger-file or --database-url, not both")
    if database_url is not None:
        url = database_url
    elif ledger_file is not None:
        if not ledger_file.is_file():
            raise ConfigError(f"no ledger file at {ledger_file}")
        if is_bundle(ledger_file):
            _verify_bundle_file(ledger_file, jwks, anchors, notes, as_json=as_json)
        url = sqlite_url(ledger_file)
    else:
        settings = load_settings(home)
        if not settings.paths.exists():
            raise ConfigError(f"no Lexecon node at {settings.paths.root}; pass --ledger-file or run `lexecon init`")
        url = settings.ledger_url
    with Ledger(url, readonly=True) as ledger:
        keys, source = _trusted_keys(jwks, ledger.node_id, home)
        total = ledger.count()
        report = _run_verify(
            ledger, keys, source, anchors, notes, total, show_progress=not as_json, trust_checkpoints=trust_checkpoints
        )
    _report_and_exit(report, as_json=as_json, trusted=trust_checkpoints)


def _verify_bundle_file(
    path: Path, jwks: Path | None, anchors: list[tuple[int, bytes]], notes: list[str], *, as_json: bool
) -> None:
    keys, source = _trusted_keys(jwks, "", None) if jwks is not None else (None, "")
    report = verify_bundle(path, keys, key_source=source or None, anchors=anchors, checkpoints=notes)
    _report_and_exit(report, as_json=as_json, origin="bundle")


# A valid report checked with keys the file carries proves internal consistency only (whoever wrote the file could
# write its keys too), so it gets a status and exit code of its own: a script testing for 0 does not take it as proof.
_EXIT_CODES = {"valid": 0, "invalid": 1, "unpinned": 3}


def _status(report: VerificationReport) -> str:
    if not report.valid:
        return "invalid"
    return "valid" if report.keys_pinned else "unpinned"


def _report_and_exit(
    report: VerificationReport, *, as_json: bool, trusted: bool = False, origin: str = "ledger"
) -> NoReturn:
    status = _status(report)
    if as_json:
        print_json({**report.to_dict(), "status": status})
    else:
        _print_report(report, status, trusted=trusted, origin=origin)
    raise typer.Exit(_EXIT_CODES[status])


def _run_verify(
    ledger: Ledger,
    keys: dict[str, PublicKey] | None,
    source: str,
    anchors: list[tuple[int, bytes]],
    notes: list[str],
    total: int,
    *,
    show_progress: bool,
    trust_checkpoints: bool,
) -> VerificationReport:
    progress = Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show_progress or total < 20_000 or not err.is_terminal,
    )
    with progress:
        task = progress.add_task("verify", total=total)
        return ledger.verify(
            keys,
            anchors=anchors,
            checkpoints=notes,
            trust_checkpoints=trust_checkpoints,
            key_source=source or None,
            progress=lambda n: progress.update(task, completed=n),
        )


def _print_report(report: VerificationReport, status: str, *, trusted: bool = False, origin: str = "ledger") -> None:
    # Reasons and key sources can quote the file (a kid, a path): escaped, so they cannot restyle the verdict.
    if status == "unpinned":
        out.print(
            f"[bold yellow]UNPINNED[/]  {report.entries_verified} entries consistent, but the keys came from the "
            f"{origin} itself: this proves internal consistency, not that the node signed it; pass --jwks with the "
            "node's published keys"
        )
    elif status == "valid":
        checked = "signatures after the last checkpoint" if trusted else "all signatures"
        out.print(f"[bold green]valid[/]  {report.entries_verified} entries verified, chain intact, {checked} good")
    else:
        out.print(f"[bold red]INVALID[/]  first bad entry {report.first_bad_seq}: {escape(report.reason or '')}")
        out.print(f"  entries verified before it: {report.entries_verified}")
    out.print(f"  head         {report.head_seq} {report.head_hash or '-'}")
    out.print(f"  trusted keys {escape(report.key_source)}")
    if report.anchors_checked:
        out.print(f"  anchors      {report.anchors_checked} matched")
    if report.checkpoints_checked and report.valid:
        out.print(f"  checkpoints  {report.checkpoints_checked} signed, all consistent with the entries")
