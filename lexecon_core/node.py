"""A Lexecon node on disk: its settings, keys and ledger, and the operations that change them.

``init_node`` creates a home; ``open_node`` opens one. Key rotation and policy loads are recorded in the ledger before
they take effect, so the ledger tells the whole story of which key and which policy decided what.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lexecon_core.config import NodeHome, Settings, load_settings, read_config
from lexecon_core.errors import ConfigError
from lexecon_core.keys import KeyRing, PublicKey, b64url
from lexecon_core.ledger import Ledger, LedgerEntry, sqlite_url
from lexecon_core.policy import PolicyEngine, load_policy

__all__ = ["Node", "init_node", "open_node"]


@dataclass
class Node:
    settings: Settings
    keys: KeyRing
    ledger: Ledger

    @property
    def node_id(self) -> str:
        return self.ledger.node_id

    @property
    def paths(self) -> NodeHome:
        return self.settings.paths

    def close(self) -> None:
        self.ledger.close()

    def rotate_keys(self) -> str:
        """Make a new signing key. The old key signs a ledger entry introducing the new one, then retires."""
        new = self.keys.prepare_rotation(self.settings.master_key_value())
        self.ledger.append(
            "key_rotated",
            {"old_kid": self.keys.active_kid, "new_kid": new.kid, "new_public_key": b64url(new.public.raw)},
            signer=self.keys.signer,
        )
        self.ledger.publish_key(new.public)
        self.keys.activate(new)
        self.ledger.set_signer(new)
        return new.kid

    def load_policy_file(self, path: str | Path) -> tuple[PolicyEngine, LedgerEntry]:
        """Validate a policy file, record it in the ledger, then make it the node's current policy."""
        return self.adopt_policy(load_policy(path), source=Path(path).name)

    def adopt_policy(self, engine: PolicyEngine, *, source: str) -> tuple[PolicyEngine, LedgerEntry]:
        """Record a validated policy in the ledger, then make it the node's current policy."""
        document = engine.to_document()
        entry = self.ledger.append(
            "policy_loaded", {"policy_version": engine.version, "source": source, "document": document}
        )
        target = self.paths.policy
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, target)
        return engine, entry

    def current_policy(self) -> PolicyEngine:
        """The policy in force: ``LEXECON_POLICY_FILE``, else the loaded one, else an empty (deny-all) strict policy.

        ``LEXECON_POLICY_MODE`` is applied per evaluation (it can only tighten), so the policy's version stays the
        hash of the document that was loaded.
        """
        path = self.settings.policy_file or (self.paths.policy if self.paths.policy.is_file() else None)
        return load_policy(path) if path is not None else PolicyEngine(mode="strict", name="empty")

    def trusted_keys(self) -> dict[str, PublicKey]:
        return dict(self.keys.public_keys)


def init_node(
    home: str | Path | None = None,
    *,
    node_id: str,
    force: bool = False,
    master_key: str | None = None,
    database_url: str | None = None,
) -> Node:
    """Create a node home: config, signing key (0600), ledger with its genesis entry.

    An existing home is refused unless ``force``; even then its keys are kept, never replaced, and the other settings
    in its config are kept. Every check runs before anything is written.
    """
    settings = load_settings(home, node_id=node_id, master_key=master_key, database_url=database_url)
    paths = settings.paths
    existing = read_config(paths.config)
    if paths.exists() and not force:
        raise ConfigError(f"{paths.root} is already a Lexecon home; use --force to rewrite its config (keys are kept)")
    previous = existing.get("node_id")
    if previous not in (None, node_id) and paths.ledger.exists():
        raise ConfigError(
            f"{paths.root} holds the ledger of node {previous!r}; a ledger cannot change node, move it away first"
        )
    if paths.ledger.exists():  # refuse another node's ledger before creating anything
        with Ledger(sqlite_url(paths.ledger), readonly=True) as existing_ledger:
            if existing_ledger.node_id != node_id:
                raise ConfigError(f"{paths.ledger} is the ledger of node {existing_ledger.node_id!r}, not {node_id!r}")
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)
    key_master = settings.master_key_value()
    keys = (
        KeyRing.load(paths.keys, key_master)
        if (paths.keys / "active").exists()
        else KeyRing.create(paths.keys, key_master)
    )
    ledger = Ledger(  # refuses another node's ledger
        settings.ledger_url,
        node_id=node_id,
        signer=keys.signer,
        durability=settings.ledger_durability,
        checkpoint_interval=settings.checkpoint_interval,
        retention_days=settings.retention_days,
        trusted_keys=keys.public_keys,  # the key directory's keys (the key ring adds rotated ones), not the table's
        anchor_file=paths.ledger_anchor,
    )
    for key in keys.public_keys.values():
        ledger.publish_key(key)
    config = {**existing, "node_id": node_id}
    if database_url:
        config["database_url"] = database_url
    paths.config.write_text(json.dumps(config, indent=2) + "\n")
    if paths.ledger.exists():
        os.chmod(paths.ledger, 0o600)
    return Node(settings, keys, ledger)


def open_node(home: str | Path | None = None, *, settings: Settings | None = None, signer: bool = True) -> Node:
    """Open an initialised node. ``signer=False`` opens it read-only (no private key needed)."""
    settings = settings or load_settings(home)
    if not settings.paths.exists():
        raise ConfigError(f"no Lexecon node at {settings.paths.root}; run `lexecon init --node-id NAME` first")
    if not settings.node_id:
        raise ConfigError(f"{settings.paths.config} does not name a node_id")
    keys = KeyRing.load(settings.paths.keys, settings.master_key_value(), need_signer=signer)
    ledger = Ledger(
        settings.ledger_url,
        node_id=settings.node_id,
        signer=keys.signer if signer else None,
        durability=settings.ledger_durability,
        checkpoint_interval=settings.checkpoint_interval,
        retention_days=settings.retention_days,
        trusted_keys=keys.public_keys,  # the key directory's keys (the key ring adds rotated ones), not the table's
        anchor_file=settings.paths.ledger_anchor if signer else None,
    )
    return Node(settings, keys, ledger)
