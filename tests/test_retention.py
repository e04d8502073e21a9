"""Retention, legal holds and the purge: refused where it must be, and a purged ledger still verifies."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lexecon_core import LedgerError, LedgerTampered, LocalGovernor
from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, sqlite_url

LATER = datetime.now(UTC) + timedelta(days=3651)  # past the default ten-year retention


@pytest.fixture
def decided(governor: LocalGovernor) -> LocalGovernor:
    for i in range(6):
        governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": i}, "user_intent": f"secret-{i}"})
    return governor  # entries: 1 genesis, 2 policy, 3..8 decisions


def rows(home: Path) -> list[tuple[int, str, int, int]]:
    with sqlite3.connect(home / "ledger.db") as db:
        return db.execute("SELECT seq, entry_type, length(body), purged FROM ledger_entries ORDER BY seq").fetchall()


def test_purge_inside_retention_is_refused(decided: LocalGovernor, home: Path) -> None:
    before = rows(home)
    with pytest.raises(LedgerError, match="inside the 3650-day retention period"):
        decided.node.ledger.purge(8, reason="gdpr erasure")
    assert rows(home) == before  # nothing changed


def test_purge_past_retention_keeps_the_ledger_verifiable(decided: LocalGovernor, home: Path) -> None:
    ledger = decided.node.ledger
    checkpoint = ledger.checkpoint()
    newest = ledger.get(6)
    assert newest is not None
    tombstone = ledger.purge(6, reason="retention expired", now=LATER)
    assert tombstone is not None and tombstone.entry_type == "entries_purged"
    import hashlib

    # What it decided by, signed: the retention, the time of the newest entry purged (from its verified body)
    # and the clock it judged by - so verification can prove the purge was allowed.
    assert tombstone.data == {"from_seq": 3, "to_seq": 6, "purged": 4, "reason": "retention expired",
                              "retention_days": 3650, "seqs_sha256": hashlib.sha256(b"3,4,5,6").hexdigest(),
                              "newest_ts": newest.created_at,
                              "as_of": LATER.isoformat(timespec="microseconds").replace("+00:00", "Z")}  # fmt: skip
    state = rows(home)
    assert [r[3] for r in state[:9]] == [0, 0, 1, 1, 1, 1, 0, 0, 0]  # genesis and policy are never purged
    assert all(length == 0 for _, _, length, purged in state if purged)
    with sqlite3.connect(home / "ledger.db") as db:
        assert b"secret-0" not in b"".join(b for (b,) in db.execute("SELECT body FROM ledger_entries"))
    report = decided.verify_ledger()
    assert report.valid, report.to_dict()
    assert report.checkpoints_checked == 1  # the checkpoint made before the purge still matches
    assert ledger.inclusion_proof(4, checkpoint.size).seq == 4  # and still proves the purged entry's place
    assert ledger.purge(6, reason="again", now=LATER) is None  # nothing left to purge


def test_legal_hold_blocks_the_purge_until_released(decided: LocalGovernor) -> None:
    ledger = decided.node.ledger
    hold = ledger.place_hold(5, 7, reason="litigation 2026-17")
    with pytest.raises(LedgerError, match=f"under legal hold {hold}"):
        ledger.purge(8, reason="retention", now=LATER)
    ledger.release_hold(hold, reason="case closed")
    assert ledger.purge(8, reason="retention", now=LATER) is not None
    assert decided.verify_ledger().valid
    with pytest.raises(LedgerError, match="no active legal hold"):
        ledger.release_hold(hold, reason="twice")


def test_retention_policy_entries_set_the_period(decided: LocalGovernor) -> None:
    ledger = decided.node.ledger
    ledger.set_retention(30, reason="short-lived test data")
    with pytest.raises(LedgerError, match="30-day retention"):
        ledger.purge(8, reason="too early")
    assert ledger.purge(8, reason="expired", now=datetime.now(UTC) + timedelta(days=31)) is not None
    with pytest.raises(LedgerError, match="between 1 and 36,500"):
        ledger.set_retention(0, reason="no")


def test_purged_entry_without_a_tombstone_is_caught(decided: LocalGovernor, home: Path) -> None:
    with sqlite3.connect(home / "ledger.db") as db:  # an operator "purging" by hand, with no signed record
        db.execute(
            "UPDATE ledger_entries SET body = x'', actor = NULL, tool = NULL, outcome = NULL, decision_id = NULL,"
            " purged = 1 WHERE seq = 5"
        )
    report = decided.verify_ledger()
    assert not report.valid and report.first_bad_seq == 5
    assert "without a signed tombstone" in (report.reason or "")


def test_a_purged_flag_on_an_entry_with_content_is_caught(decided: LocalGovernor, home: Path) -> None:
    with sqlite3.connect(home / "ledger.db") as db:
        db.execute("UPDATE ledger_entries SET purged = 1 WHERE seq = 5")
    report = decided.verify_ledger()
    assert not report.valid and report.first_bad_seq == 5


def test_settings_default_retention(tmp_path: Path) -> None:
    signer = Signer.generate()
    ledger = Ledger(sqlite_url(tmp_path / "r.db"), node_id="n", signer=signer, retention_days=1)
    ledger.append("decision", {"decision_id": "d", "outcome": "approved", "request": {"actor": "a", "tool": "t"}})
    with pytest.raises(LedgerError, match="1-day retention"):
        ledger.purge(2, reason="now")
    assert ledger.purge(2, reason="later", now=datetime.now(UTC) + timedelta(days=2)) is not None
    assert ledger.verify({signer.kid: signer.public}).valid
    ledger.close()


def test_blanking_a_governance_entry_inside_a_tombstone_range_is_caught(decided: LocalGovernor, home: Path) -> None:
    """A hold between two purged decisions sits inside the tombstone's range; erasing it must not pass."""
    ledger = decided.node.ledger
    hold = ledger.place_hold(100, 200, reason="future litigation")  # entry 9, covering entries not yet written
    decided.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": "x"}})  # entry 10
    assert ledger.purge(10, reason="expired", now=LATER) is not None  # tombstone covers 3..10, hold at 9 kept
    assert decided.verify_ledger().valid
    with sqlite3.connect(home / "ledger.db") as db:  # the attacker blanks the hold and marks it purged
        db.execute("UPDATE ledger_entries SET body = x'', purged = 1 WHERE seq = 9")
    report = decided.verify_ledger()
    assert not report.valid and report.first_bad_seq == 3
    assert "differ from those the tombstone signed" in (report.reason or "")
    # A node that reads the ledger now does not lose the hold: it refuses the tampered ledger altogether.
    with LocalGovernor(home) as fresh, pytest.raises(LedgerTampered, match="differ from those the tombstone signed"):
        fresh.node.ledger.release_hold(hold, reason="gone")
    # The node that verified the hold before it was blanked still knows it.
    assert hold in ledger.governance().holds


def test_retention_cli(governor: LocalGovernor, capsys: pytest.CaptureFixture[str]) -> None:
    from lexecon_core.cli import main as cli_main

    home = str(governor.settings.home)

    def run(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            cli_main(list(argv))
        captured = capsys.readouterr()
        return int(exited.value.code or 0), captured.out, captured.err

    governor.decide({"actor": "ai_agent:a", "tool": "search", "tool_args": {"q": 1}})  # entry 3
    code, _, err = run("ledger", "purge", "--home", home, "--up-to", "3", "--reason", "too early")
    assert code == 2 and "retention period" in err and err.count("\n") == 1
    code, out, _ = run("ledger", "hold", "--home", home, "--from", "3", "--to", "3", "--reason", "case 7")
    hold_id = out.split()[2]
    assert code == 0 and hold_id.startswith("hold_")
    code, out, _ = run("ledger", "retention", "--home", home, "--days", "1", "--reason", "test data")
    assert code == 0 and "1 days" in out
    code, out, _ = run("ledger", "release", "--home", home, "--hold-id", hold_id, "--reason", "closed")
    assert code == 0 and f"released {hold_id}" in out
    code, out, _ = run("verify-ledger", "--home", home, "--json")
    assert code == 0
