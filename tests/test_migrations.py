"""The ledger schema is managed by Alembic: the code's revision is the migrations' head, and upgrades adopt ledgers."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, _schema, sqlite_url
from lexecon_core.ledger._migrate import MIGRATIONS, SCHEMA_REVISION, current_revision


def test_code_revision_is_the_migrations_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_new_ledger_is_at_head_and_matches_the_model(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "new.db")
    Ledger(url, node_id="n", signer=Signer.generate()).close()
    engine = create_engine(url)
    assert current_revision(engine) == SCHEMA_REVISION
    inspector = inspect(engine)
    for table in _schema.metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    engine.dispose()


def test_ledger_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "old.db")
    engine = create_engine(url)
    _schema.metadata.create_all(engine)  # how ledgers were created before Alembic managed the schema
    assert current_revision(engine) is None
    engine.dispose()
    signer = Signer.generate()
    with Ledger(url, node_id="n", signer=signer) as ledger:
        ledger.append("note", {"x": 1})
        assert ledger.verify({signer.kid: signer.public}).valid
    engine = create_engine(url)
    assert current_revision(engine) == SCHEMA_REVISION
    engine.dispose()
