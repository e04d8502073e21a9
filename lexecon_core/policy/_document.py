"""Policy documents: JSON or YAML files whose shape mirrors the classes.

.. code-block:: yaml

    mode: strict
    terms:
      - {term_id: bots, term_type: actor, value: "ai_agent:*"}
      - {term_id: search, term_type: tool, value: search}
    relations:
      - {relation_type: permits, source_term_id: bots, target_term_id: search}
    classifications:            # optional: facts the node adds to a call (lexecon_core/policy/_classify.py)
      - {tool: search, data_classes: [public]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lexecon_core.errors import PolicyError
from lexecon_core.policy._classify import ClassificationRule
from lexecon_core.policy._engine import PolicyEngine
from lexecon_core.policy._model import Conditions, PolicyMode, PolicyRelation, PolicyTerm, RelationType, TermType


class _TermDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    term_id: str = Field(min_length=1)
    term_type: TermType
    value: str = Field(min_length=1)


class _RelationDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    relation_id: str | None = None
    relation_type: RelationType
    source_term_id: str = Field(min_length=1)
    target_term_id: str = Field(min_length=1)
    conditions: Conditions | None = None


class _PolicyDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    description: str = ""
    mode: PolicyMode = PolicyMode.STRICT
    terms: list[_TermDoc] = Field(default_factory=list)
    relations: list[_RelationDoc] = Field(default_factory=list)
    classifications: list[ClassificationRule] = Field(default_factory=list)


def policy_from_document(document: Any, *, source: str = "policy") -> PolicyEngine:
    """Build an engine from a parsed document; errors name the bad field, e.g. ``relations[2].relation_type``."""
    if not isinstance(document, dict):
        raise PolicyError(f"{source}: a policy must be a mapping with 'mode', 'terms' and 'relations'")
    try:
        doc = _PolicyDoc.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        # A model validator's message comes as "Value error, <message>"; the location already says where.
        raise PolicyError(f"{source}: {where}: {first['msg'].removeprefix('Value error, ')}") from None
    engine = PolicyEngine(mode=doc.mode, name=doc.name)
    try:
        for term in doc.terms:
            engine.add_term(PolicyTerm(term.term_id, term.term_type, term.value))
        for rel in doc.relations:
            engine.add_relation(
                PolicyRelation(
                    rel.relation_type, rel.source_term_id, rel.target_term_id, rel.conditions, rel.relation_id or ""
                )
            )
        for rule in doc.classifications:
            engine.add_classification(rule)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None
    return engine


def parse_policy_text(text: str, *, source: str = "policy", fmt: str | None = None) -> PolicyEngine:
    """Parse JSON or YAML text (``fmt`` "json"/"yaml"; guessed from the text when None)."""
    try:
        if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
            document = json.loads(text)
        else:
            document = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyError(f"{source}: not valid JSON/YAML: {first_line}") from None
    return policy_from_document(document, source=source)


def load_policy(path: str | Path) -> PolicyEngine:
    """Load a policy file (``.json``, ``.yaml`` or ``.yml``)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {file}: {exc.strerror}") from None
    fmt = "json" if file.suffix.lower() == ".json" else "yaml" if file.suffix.lower() in {".yaml", ".yml"} else None
    return parse_policy_text(text, source=str(file), fmt=fmt)
