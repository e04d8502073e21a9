"""ApiKeyStore: key format, only a hash kept (signed, in the ledger), constant-time checks, refusals, what a process
knows without I/O, validation, the ledger as the only record of keys."""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lexecon_core import LocalGovernor
from lexecon_core.auth import ApiKeyStore, Permission, Principal, Role
from lexecon_core.auth import apikeys as apikeys_module
from lexecon_core.errors import AuthError

KEY_RE = re.compile(r"^lxk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@pytest.fixture
def store(governor: LocalGovernor) -> Iterator[ApiKeyStore]:
    s = ApiKeyStore(governor.node.ledger, cache_seconds=5.0)
    yield s
    s.close()


@pytest.fixture
def other(home: Path) -> Iterator[LocalGovernor]:
    """Another process's view of the same node (its own ledger handle on the shared database)."""
    with LocalGovernor(home) as gov:
        yield gov


def rows(home: Path) -> list[tuple[Any, ...]]:
    """The signed creation entries: the only record of keys there is."""
    with sqlite3.connect(home / "ledger.db") as db:
        return db.execute("SELECT seq FROM ledger_entries WHERE entry_type = 'api_key_created'").fetchall()


# -- format and storage ----------------------------------------------------------------------------------------------


def test_key_format(store: ApiKeyStore) -> None:
    made = [store.create(f"agent-{i}", Role.AGENT, by="test") for i in range(20)]
    for record, key in made:
        match = KEY_RE.match(key)
        assert match, key
        assert match.group(1) == record.key_id
        assert record.name.startswith("agent-") and record.role is Role.AGENT and record.active
        assert record.revoked_at is None
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", record.created_at)
    assert len({r.key_id for r, _ in made}) == 20
    assert len({k for _, k in made}) == 20
    assert "secret" not in repr(made[0][0]).lower()
    assert made[0][1] not in repr(made[0][0])


def test_only_a_hash_is_stored(home: Path, store: ApiKeyStore, governor: LocalGovernor) -> None:
    record, key = store.create("billing", Role.OPERATOR, by="test")
    (created,) = governor.node.ledger.entries(entry_type="api_key_created")
    assert created.created_at == record.created_at
    data = created.data
    assert (data["key_id"], data["name"], data["role"]) == (record.key_id, "billing", "operator")
    assert data["key_sha256"] == hashlib.sha256(b"lexecon:apikey:v1\x00" + key.encode()).hexdigest()
    with sqlite3.connect(home / "ledger.db") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "api_keys" not in tables  # no unsigned record of keys for anyone to edit
    secret = KEY_RE.match(key).group(2)  # type: ignore[union-attr]
    with open(home / "ledger.db", "rb") as f:
        raw = f.read()
    wal = home / "ledger.db-wal"
    if wal.exists():
        raw += wal.read_bytes()
    assert secret.encode() not in raw, "the secret reached the database file"
    assert key.encode() not in raw


def test_to_dict_has_no_secret(store: ApiKeyStore) -> None:
    record, key = store.create("svc", Role.AUDITOR, by="test")
    assert record.to_dict() == {"key_id": record.key_id, "name": "svc", "role": "auditor", "actors": "*",
                                "created_at": record.created_at, "revoked_at": None}  # fmt: skip
    assert key not in str(record.to_dict())


# -- authentication ------------------------------------------------------------------------------------------------


def test_authenticate(store: ApiKeyStore) -> None:
    record, key = store.create("agent one", Role.AGENT, by="test")
    principal = store.authenticate(key)
    assert principal == Principal(record.key_id, "agent one", Role.AGENT)
    assert principal.label == f"apikey:{record.key_id}"
    assert principal.can(Permission.DECIDE) and not principal.can(Permission.READ_LEDGER)


def _variants(key: str) -> dict[str, str]:
    key_id, secret = key[4:20], key[21:]
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    return {
        "empty": "",
        "garbage": "not-an-api-key",
        "prefix only": "lxk_",
        "no prefix": key[4:],
        "other prefix": "lxz_" + key[4:],
        "upper-case id": f"lxk_{key_id.upper()}_{secret}" if key_id.upper() != key_id else f"lxk_{'A' * 16}_{secret}",
        "short secret": key[:-1],
        "long secret": key + "A",
        "trailing newline": key + "\n",
        "leading space": " " + key,
        "trailing space": key + " ",
        "non-ascii": key[:-1] + "é",
        "wrong secret": f"lxk_{key_id}_{other_secret}",
        "unknown id": f"lxk_{'0' * 16}_{secret}",
        "bearer prefix": "Bearer " + key,
    }


def test_unknown_malformed_and_wrong_keys_are_refused(store: ApiKeyStore) -> None:
    _, key = store.create("agent", Role.AGENT, by="test")
    for name, presented in _variants(key).items():
        assert store.authenticate(presented) is None, name
        assert store.cached(presented) is None, name
    assert store.authenticate(key) is not None  # the real one still works


def test_revoked_key_is_refused(store: ApiKeyStore) -> None:
    record, key = store.create("agent", Role.AGENT, by="test")
    assert store.authenticate(key) is not None  # now cached
    revoked = store.revoke(record.key_id, by="test")
    assert revoked.revoked_at is not None and not revoked.active
    assert store.authenticate(key) is None  # the revoking store drops its cache entry at once
    assert store.cached(key) is None
    assert store.get(record.key_id) == revoked


def test_constant_time_comparison(store: ApiKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = store.create("agent", Role.AGENT, by="test")
    calls: list[tuple[bytes, bytes]] = []
    real = apikeys_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys_module.hmac, "compare_digest", spy)
    assert store.authenticate(key) is not None
    assert len(calls) == 1
    # An unknown id is compared too (against a dummy), so timing does not reveal which ids exist.
    assert store.authenticate(f"lxk_{'0' * 16}_{key[21:]}") is None
    assert len(calls) == 2
    assert all(len(a) == len(b) == 32 for a, b in calls)
    wrong = key[:21] + ("A" if key[21] != "A" else "B") + key[22:]
    assert store.authenticate(wrong) is None
    assert len(calls) == 3


def test_recently_verified_keys_answer_without_the_database(
    store: ApiKeyStore, governor: LocalGovernor, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = store.create("agent", Role.AGENT, by="test")
    principal = store.authenticate(key)
    assert store.cached(key) == principal

    def no_db(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("what the process verified should have answered")

    ledger = governor.node.ledger
    monkeypatch.setattr(ledger._reader, "connect", no_db)
    monkeypatch.setattr(ledger._reader, "raw_connection", no_db)
    assert store.authenticate(key) == principal
    assert store.cached(key) == principal


def test_revocation_reaches_other_processes_within_cache_seconds(governor: LocalGovernor, other: LocalGovernor) -> None:
    first = ApiKeyStore(other.node.ledger, cache_seconds=0.2)  # "another server" sharing the database
    second = ApiKeyStore(governor.node.ledger)
    try:
        record, key = second.create("agent", Role.AGENT, by="test")
        cached_at = time.monotonic()
        assert first.authenticate(key) is not None  # cached in `first` for 0.2 s
        second.revoke(record.key_id, by="test")
        assert second.authenticate(key) is None  # at once where it was revoked
        if time.monotonic() - cached_at < 0.15:  # (unless this machine is too slow to observe the window)
            assert first.authenticate(key) is not None  # documented: up to cache_seconds elsewhere
        time.sleep(0.3)
        assert first.cached(key) is None
        assert first.authenticate(key) is None
    finally:
        first.close()
        second.close()


def test_zero_cache_always_checks_the_database(governor: LocalGovernor, other: LocalGovernor) -> None:
    first = ApiKeyStore(other.node.ledger, cache_seconds=0)
    second = ApiKeyStore(governor.node.ledger)
    try:
        record, key = second.create("agent", Role.AGENT, by="test")
        assert first.authenticate(key) is not None
        second.revoke(record.key_id, by="test")
        assert first.authenticate(key) is None
    finally:
        first.close()
        second.close()


# -- management ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", " leading", "-dash-first", "x" * 129, "tab\there", "new\nline", "semi;colon", "emoji 🙂", "名前", None, 42],
    ids=repr,
)
def test_bad_names_are_refused(home: Path, store: ApiKeyStore, name: Any) -> None:
    before = len(rows(home))
    with pytest.raises(AuthError):
        store.create(name, Role.AGENT, by="test")
    assert len(rows(home)) == before


@pytest.mark.parametrize("name", ["a", "x" * 128, "billing bot", "svc:ci@corp/eu-1.prod_2"])
def test_good_names(store: ApiKeyStore, name: str) -> None:
    record, _ = store.create(name, Role.AGENT, by="test")
    assert record.name == name


@pytest.mark.parametrize("role", ["root", "", "ADMIN", None, 3])
def test_bad_roles_are_refused(home: Path, store: ApiKeyStore, role: Any) -> None:
    before = len(rows(home))
    with pytest.raises(AuthError):
        store.create("svc", role, by="test")
    assert len(rows(home)) == before


def test_role_given_as_text(store: ApiKeyStore) -> None:
    record, key = store.create("svc", "auditor", by="test")
    assert record.role is Role.AUDITOR
    assert store.authenticate(key).role is Role.AUDITOR  # type: ignore[union-attr]


def test_list_and_get(store: ApiKeyStore) -> None:
    a, _ = store.create("a", Role.AGENT, by="test")
    b, _ = store.create("b", Role.ADMIN, by="test")
    store.revoke(a.key_id, by="test")
    listed = store.list()
    assert [k.key_id for k in listed] == [a.key_id, b.key_id]
    assert [k.key_id for k in store.list(include_revoked=False)] == [b.key_id]
    assert store.get(b.key_id) == b
    assert store.get("0" * 16) is None


def test_revoke_unknown_or_twice(store: ApiKeyStore, governor: LocalGovernor) -> None:
    record, _ = store.create("a", Role.AGENT, by="test")
    with pytest.raises(AuthError):
        store.revoke("0" * 16, by="test")
    store.revoke(record.key_id, by="test")
    with pytest.raises(AuthError, match="already revoked"):
        store.revoke(record.key_id, by="test")
    assert len(governor.node.ledger.entries(entry_type="api_key_revoked")) == 1


def test_changes_are_recorded_in_the_ledger_without_secrets(store: ApiKeyStore, governor: LocalGovernor) -> None:
    record, key = store.create("ci", Role.OPERATOR, by="apikey:0123456789abcdef")
    store.revoke(record.key_id, by="cli")
    ledger = governor.node.ledger
    (created,) = ledger.entries(entry_type="api_key_created")
    (revoked,) = ledger.entries(entry_type="api_key_revoked")
    assert created.data == {
        "key_id": record.key_id, "name": "ci", "role": "operator", "actors": "*", "by": "apikey:0123456789abcdef",
        "key_sha256": hashlib.sha256(b"lexecon:apikey:v1\x00" + key.encode()).hexdigest(),
    }  # fmt: skip
    assert revoked.data == {"key_id": record.key_id, "name": "ci", "role": "operator", "by": "cli"}
    for entry in (created, revoked):
        assert key[21:].encode() not in entry.body
    assert governor.verify_ledger().valid


def test_a_key_created_elsewhere_is_known_at_once(governor: LocalGovernor, other: LocalGovernor) -> None:
    """An unknown key id makes a process catch up with the ledger (at most every 0.25 s), so a key made by another
    server or the CLI works on its first request."""
    reader = ApiKeyStore(other.node.ledger, cache_seconds=60)
    assert reader.authenticate("lxk_" + "0" * 16 + "_" + "A" * 43) is None  # warms the state
    time.sleep(0.3)
    record, key = ApiKeyStore(governor.node.ledger).create("new", Role.AGENT, by="test")
    assert reader.authenticate(key) == Principal(record.key_id, "new", Role.AGENT)


def test_concurrent_revocations_record_one_entry(
    store: ApiKeyStore, governor: LocalGovernor, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, _ = store.create("contested", Role.AGENT, by="test")
    both_checked = threading.Barrier(2)
    ledger = governor.node.ledger
    real_append = ledger.append

    def append_after_both_checked(entry_type: str, data: Any, **options: Any) -> Any:
        # Widen the window: both revocations found the key active before either writes. The check that counts
        # runs again under the write lock, so only one gets through; do not hang waiting for the other.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=1)
        return real_append(entry_type, data, **options)

    monkeypatch.setattr(ledger, "append", append_after_both_checked)
    outcomes: list[str] = []

    def revoke() -> None:
        try:
            store.revoke(record.key_id, by="admin")
            outcomes.append("revoked")
        except AuthError:
            outcomes.append("refused")

    threads = [threading.Thread(target=revoke) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(outcomes) == ["refused", "revoked"]
    assert len(governor.node.ledger.entries(entry_type="api_key_revoked")) == 1
