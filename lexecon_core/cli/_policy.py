"""``lexecon policy load|show|test``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lexecon_core.cli._common import HomeOption, JsonFlag, out, parse_pairs, print_json, print_table
from lexecon_core.config import load_settings
from lexecon_core.node import open_node
from lexecon_core.policy import PolicyEngine, load_policy
from lexecon_core.risk import RiskLevel, assess, load_risk_rules

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
    print_table(
        ("term_id", "type", "value"),
        [(t.term_id, t.term_type.value, t.value) for t in engine.terms],
        title="terms",
    )
    print_table(
        ("relation_id", "type", "source", "target", "conditions"),
        [
            (
                r.relation_id,
                r.relation_type.value,
                r.source_term_id,
                r.target_term_id,
                "" if r.cond.is_empty() else r.cond.model_dump_json(exclude_none=True),
            )
            for r in engine.relations
        ],
        title="relations",
    )


@policy_app.command("test")
def explain(
    file: FileArgument,
    actor: Annotated[str, typer.Option(help="Actor of the hypothetical call.")],
    tool: Annotated[str, typer.Option(help="Tool of the hypothetical call.")],
    action: Annotated[str | None, typer.Option(help="Proposed action.")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="Tool argument key=value (repeatable).")] = None,
    data_class: Annotated[list[str] | None, typer.Option("--data-class", help="Data class (repeatable).")] = None,
    context: Annotated[list[str] | None, typer.Option("--context", help="Context key=value (repeatable).")] = None,
    risk_level: Annotated[RiskLevel | None, typer.Option(help="Declared risk level.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a hypothetical call against a policy file and explain which relations matched. Records nothing."""
    engine = load_policy(file)
    ctx = parse_pairs(context, "--context")
    classes = data_class or []
    rules = load_risk_rules(load_settings().risk_rules_file)
    # As a decision does: the policy's own classifications of the tool and its arguments add to what is declared.
    classified = engine.classify(tool, parse_pairs(arg, "--arg"))
    risk = (classified.assess_risk if classified else assess)(
        tool=tool, data_classes=classes, declared_level=risk_level, context=ctx, rules=rules
    )
    resource = ctx.get("resource") if isinstance(ctx.get("resource"), str) else None
    result = engine.evaluate(
        actor=actor,
        action=action,
        tool=tool,
        resource=resource,
        data_classes=classes,
        context=ctx,
        risk_level=risk.level,
        classified=classified,
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
                "classified": classified.to_record(),
            }
        )
        return
    colour = {"approved": "green", "denied": "red", "escalated": "yellow"}[result.outcome.value]
    out.print(f"[bold {colour}]{result.outcome.value}[/]  {result.reason}")
    out.print(f"  risk             {risk.level.value} ({risk.score}) {dict(risk.dimensions)}")
    out.print(f"  satisfied terms  {', '.join(result.satisfied_terms) or '(none)'}")
    if classified:
        added = classified.to_record()
        out.print(f"  classified       data classes {added['data_classes']}, context {added['context']}")
    if result.matched:
        print_table(
            ("relation", "type", "effect"),
            [(m.relation_id, m.relation_type.value, m.effect) for m in result.matched],
        )
    else:
        out.print("  no relation matched")
