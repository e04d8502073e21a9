"""With ``process`` durability, SQLite WAL checkpoints run on a background thread, not inside an append
(lexecon_core/ledger/_backend.py); with ``fsync`` durability SQLite's own checkpointing stays."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lexecon_core.keys import Signer
from lexecon_core.ledger import Ledger, sqlite_url
from lexecon_core.ledger._backend import WalCheckpointer, backend_for

THREAD = "lexecon-wal-checkpoint"


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


def test_committed_pages_reach_the_database_file_without_an_append_doing_it(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    signer = Signer.generate()
    with Ledger(sqlite_url(path), node_id="n", signer=signer, durability="process") as ledger:
        before = path.stat().st_size
        # ~7 WAL pages per entry: without the background thread these would sit in the WAL until the writer's
        # backstop (10,000 pages); with it they are copied into the database every 128 entries.
        for i in range(300):
            ledger.append("note", {"i": i, "text": "x" * 200})
        deadline = time.monotonic() + 20
        while path.stat().st_size < before + 100_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size >= before + 100_000
        report = ledger.verify({signer.kid: signer.public})
        assert report.valid and report.entries_verified == 301


@pytest.mark.parametrize(("durability", "pages"), [("process", 10_000), ("fsync", 1_000)])
def test_the_writer_keeps_only_a_backstop_checkpoint(tmp_path: Path, durability: str, pages: int) -> None:
    with Ledger(sqlite_url(tmp_path / "l.db"), node_id="n", signer=Signer.generate(), durability=durability) as ledger:
        ledger.append("note", {"i": 1})
        with ledger._writer.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == pages
        assert (ledger._wal is not None) is (durability == "process")  # fsync: SQLite checkpoints as it commits


def test_the_thread_starts_on_demand_and_stops_with_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(sqlite_url(tmp_path / "l.db"), node_id="n", signer=Signer.generate(), durability="process")
    already = len(checkpointer_threads())
    for i in range(130):
        ledger.append("note", {"i": i})
    assert len(checkpointer_threads()) == already + 1
    ledger.close()
    assert len(checkpointer_threads()) == already


def test_no_checkpointer_without_a_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(sqlite_url(path), node_id="n", signer=Signer.generate()) as ledger:
        ledger.append("note", {"i": 1})
    with Ledger(sqlite_url(path), readonly=True) as reader:
        assert reader._wal is None
    backend, url = backend_for("sqlite://")
    engine = backend.make_engine(url, writer=True, readonly=False, durability="process")
    assert backend.wal_checkpointer(engine, "process") is None  # an in-memory database has no WAL
    engine.dispose()


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_an_idle_thread_exits_and_comes_back_when_needed(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    checkpointer = WalCheckpointer(str(path), synchronous="NORMAL", every=1, idle=0.1)
    try:
        checkpointer.committed(1)
        first = checkpointer._thread
        assert first is not None
        assert wait_for(lambda: not first.is_alive())  # nothing more to do: gone, with its connection
        assert checkpointer._thread is None
        checkpointer.committed(1)
        assert checkpointer._thread is not None and checkpointer._thread is not first
    finally:
        checkpointer.close()


def test_an_append_succeeds_when_no_thread_can_be_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    signer = Signer.generate()
    with Ledger(sqlite_url(tmp_path / "l.db"), node_id="n", signer=signer, durability="process") as ledger:
        for i in range(126):  # with the genesis entry, 127 committed: one short of a checkpoint request
            ledger.append("note", {"i": i})

        def refuse(self: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", refuse)
        with caplog.at_level("WARNING", logger="lexecon.ledger"):
            entry = ledger.append("note", {"i": 126})  # the one that asks for a checkpoint
        assert entry.seq == 128 and ledger.head()[0] == 128
        assert "cannot start the background WAL checkpointer" in caplog.text
        monkeypatch.undo()
        for i in range(128):  # a later request starts it after all
            ledger.append("note", {"i": i})
        assert ledger._wal is not None and ledger._wal._thread is not None
    # and close() worked: the thread is gone
    assert wait_for(lambda: not checkpointer_threads())


def test_a_forked_child_starts_its_own_thread(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    checkpointer = WalCheckpointer(str(path), synchronous="NORMAL", every=1)
    try:
        checkpointer.committed(1)
        parents = checkpointer._thread
        checkpointer._pid = -1  # as a forked child sees it: the thread above belongs to another process
        checkpointer.committed(1)
        assert checkpointer._thread is not None and checkpointer._thread is not parents
    finally:
        checkpointer.close()
        if parents is not None:
            parents.join(timeout=10)


def test_a_failing_checkpoint_is_logged_and_the_thread_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-dir" / "l.db"  # sqlite cannot open it: every checkpoint fails
    checkpointer = WalCheckpointer(str(missing), synchronous="NORMAL", every=1)
    try:
        with caplog.at_level("WARNING", logger="lexecon.ledger"):
            checkpointer.committed(1)
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.02)
        assert "background WAL checkpoint of the ledger failed" in caplog.text
        caplog.clear()
        checkpointer.committed(1)  # still serving
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
        assert caplog.records
        thread = checkpointer._thread
    finally:
        checkpointer.close()
    assert thread is not None and not thread.is_alive()


def test_checkpoints_do_not_block_concurrent_readers(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(sqlite_url(path), node_id="n", signer=Signer.generate(), durability="process") as ledger:
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] >= 1  # holds a snapshot
        for i in range(300):
            ledger.append("note", {"i": i})
        reader.rollback()
        reader.close()
        assert ledger.head()[0] == 301
