"""Settings and the node home directory.

Settings come from, highest first: keyword arguments, ``LEXECON_*`` environment variables, ``<home>/config.json``,
defaults. ``LEXECON_HOME`` (default ``./.lexecon``) picks the home. Invalid settings raise :class:`ConfigError`
with one line naming the setting.
"""

from __future__ import annotations

import contextvars
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from lexecon_core.errors import ConfigError
from lexecon_core.ledger._backend import Durability
from lexecon_core.policy import PolicyMode

__all__ = ["NodeHome", "Settings", "load_settings"]

DEFAULT_HOME = Path(".lexecon")
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("lexecon_config_file", default=None)


class Settings(BaseSettings):
    """Every setting, with its environment variable ``LEXECON_<NAME>``. See docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="LEXECON_", extra="ignore", validate_default=True)

    home: Path = DEFAULT_HOME
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    policy_mode: PolicyMode | None = None
    database_url: str | None = None
    ledger_durability: Durability = "fsync"
    checkpoint_interval: int = Field(default=1000, ge=0, le=10_000_000)
    retention_days: int = Field(default=3650, ge=1, le=36_500)
    policy_file: Path | None = None
    risk_rules_file: Path | None = None
    token_ttl_seconds: int = Field(default=60, ge=1, le=3600)
    token_audience: str | None = None
    token_leeway_seconds: int = Field(default=5, ge=0, le=300)
    master_key: SecretStr | None = None
    # The hosted server (lexecon server); see docs/configuration.md.
    redis_url: SecretStr | None = None
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS; empty: none")
    rate_limit_per_second: float = Field(default=100.0, ge=0, description="per API key; 0 disables")
    rate_limit_burst: int = Field(default=200, ge=1, le=1_000_000)
    max_request_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    metrics_public: bool = True
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    policy_sync_seconds: float = Field(default=2.0, ge=0, le=3600, description="0: do not follow the ledger")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None and config_file.is_file():
            sources.append(JsonConfigSettingsSource(settings_cls, json_file=config_file))
        return tuple(sources)

    @property
    def paths(self) -> NodeHome:
        return NodeHome(self.home)

    @property
    def ledger_url(self) -> str:
        return self.database_url or f"sqlite:///{self.paths.ledger}"

    def master_key_value(self) -> str | None:
        return self.master_key.get_secret_value() if self.master_key else None


@dataclass(frozen=True)
class NodeHome:
    """Where a node keeps its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def ledger_anchor(self) -> Path:
        """``seq:hash`` of an entry this node wrote: what a database writer cannot cut from the chain unnoticed."""
        return self.root / "ledger.anchor"

    @property
    def policy(self) -> Path:
        return self.root / "policy.json"

    def exists(self) -> bool:
        return self.config.is_file()


def _home_from_env(home: str | Path | None) -> Path:
    return Path(home if home is not None else os.environ.get("LEXECON_HOME") or DEFAULT_HOME)


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object in a node's ``config.json`` (empty when there is none); anything else is a ConfigError."""
    if not path.is_file():
        return {}
    try:
        parsed = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return parsed


def load_settings(home: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings for the node at ``home`` (or ``$LEXECON_HOME``), including its ``config.json``."""
    root = _home_from_env(home)
    config_path = root / "config.json"
    read_config(config_path)  # fail with one clear line before pydantic-settings reads it
    token = _config_file.set(config_path)
    try:
        return Settings(home=root, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise ConfigError(f"invalid setting LEXECON_{name.upper()}: {first['msg']}") from None
    finally:
        _config_file.reset(token)
