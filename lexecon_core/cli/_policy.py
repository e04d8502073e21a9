"""``lexecon policy load|show|test``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lexecon_core.cli._common import HomeOption, JsonFlag, out, parse_pairs, print_json
from lexecon_core.node import open_node
from lexecon_core.policy import PolicyEngine, load_policy
from lexecon_core.risk import RiskLevel, assess

policy_app = typer.Typer(help="Load, show and test policies.", no_args_is_help=True)

FileArgument = Annotated[Path, typer.Argument(help="Policy file (.json, .yaml or .yml).")]


@policy_app.command("load")
def load(file: FileArgument, home: HomeOption = None) -> None:
    """Validate a policy file, record it in the ledger and make it the node's policy."""
    node = open_node(home)
    try:
        engine, entry = node.load_policy_file(file)
    finally:
        node.close()
    out.print(f"loaded policy {engine.name or file.name}: {len(engine.terms)} terms, {len(engine.relations)} relations")
    out.print(f"  version      {engine.version}")
    out.print(f"  mode         {engine.mode.value}")
    out.print(f"  ledger entry {entry.seq}")


@policy_app.command("show")
def show(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Show the node's current policy."""
    node = open_node(home, signer=False)
    try:
        engine = node.current_policy()
    finally:
        node.close()
    if as_json:
        print_json({**engine.to_document(), "version": engine.version})
        return
    _print_policy(engine)


def _print_policy(engine: PolicyEngine) -> None:
    out.print(f"policy {engine.name or '(unnamed)'}  mode [bold]{engine.mode.value}[/]  version {engine.version}")
    terms = Table("term_id", "type", "value", title="terms")
    for term in engine.terms:
        terms.add_row(term.term_id, term.term_type.value, term.value)
    relations = Table("relation_id", "type", "source", "target", "conditions", title="relations")
    for rel in engine.relations:
        conditions = rel.cond.model_dump_json(exclude_none=True) if not rel.cond.is_empty() else ""
        relations.add_row(rel.relation_id, rel.relation_type.value, rel.source_term_id, rel.target_term_id, conditions)
    out.print(terms)
    out.print(relations)


@policy_app.command("test")
def explain(
    file: FileArgument,
    actor: Annotated[str, typer.Option(help="Actor of the hypothetical call.")],
    tool: Annotated[str, typer.Option(help="Tool of the hypothetical call.")],
    action: Annotated[str | None, typer.Option(help="Proposed action.")] = None,
    data_class: Annotated[list[str] | None, typer.Option("--data-class", help="Data class (repeatable).")] = None,
    context: Annotated[list[str] | None, typer.Option("--context", help="Context key=value (repeatable).")] = None,
    risk_level: Annotated[RiskLevel | None, typer.Option(help="Declared risk level.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a hypothetical call against a policy file and explain which relations matched. Records nothing."""
    engine = load_policy(file)
    ctx = parse_pairs(context, "--context")
    classes = data_class or []
    risk = assess(tool=tool, data_classes=classes, declared_level=risk_level, context=ctx)
    resource = ctx.get("resource") if isinstance(ctx.get("resource"), str) else None
    result = engine.evaluate(
        actor=actor,
        action=action,
        tool=tool,
        resource=resource,
        data_classes=classes,
        context=ctx,
        risk_level=risk.level,
    )
    if as_json:
        print_json(
            {
                "outcome": result.outcome.value,
                "reason": result.reason,
                "mode": result.mode.value,
                "policy_version": result.policy_version,
                "satisfied_terms": list(result.satisfied_terms),
                "matched_relations": [m.to_dict() for m in result.matched],
                "risk": risk.to_record(),
            }
        )
        return
    colour = {"approved": "green", "denied": "red", "escalated": "yellow"}[result.outcome.value]
    out.print(f"[bold {colour}]{result.outcome.value}[/]  {result.reason}")
    out.print(f"  risk             {risk.level.value} ({risk.score}) {dict(risk.dimensions)}")
    out.print(f"  satisfied terms  {', '.join(result.satisfied_terms) or '(none)'}")
    if result.matched:
        table = Table("relation", "type", "effect")
        for match in result.matched:
            table.add_row(match.relation_id, match.relation_type.value, match.effect)
        out.print(table)
    else:
        out.print("  no relation matched")
