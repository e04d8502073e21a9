"""Reading and verifying the ledger: entries, proofs, checkpoints, verification, export, keys."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lexecon_core.auth import Permission, Principal
from lexecon_core.errors import LedgerError
from lexecon_core.keys import jwks_of
from lexecon_core.ledger import LedgerEntry
from lexecon_core.policy import Outcome
from lexecon_core.server._errors import ERROR_RESPONSES
from lexecon_core.server._security import require
from lexecon_core.server._state import ServerState, state_of
from lexecon_core.wire import (
    CheckpointInfo,
    EntriesPage,
    ErrorResponse,
    InclusionProofInfo,
    LedgerEntryInfo,
    LedgerVerification,
)

router = APIRouter(prefix="/ledger", tags=["ledger"], responses=ERROR_RESPONSES)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such entry"}}

_NO_NUL = r"^[^\x00]*$"  # filters compare with text columns, which PostgreSQL cannot give NUL

Reader = Annotated[Principal, Depends(require(Permission.READ_LEDGER))]


def _info(entry: LedgerEntry) -> LedgerEntryInfo:
    return LedgerEntryInfo(
        seq=entry.seq,
        entry_type=entry.entry_type,
        created_at=entry.created_at,
        body=entry.body.decode("utf-8", "replace"),  # only a tampered body is not UTF-8; verification reports it
        prev_hash=entry.prev_hash.hex(),
        entry_hash=entry.entry_hash.hex(),
        kid=entry.kid,
        signature=entry.signature.hex(),
    )


def _timestamp(value: datetime | None) -> str | None:
    """Entries store RFC 3339 UTC timestamps with microseconds, which sort as strings; compare in that form."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. year 1 at +01:00: before any entry could have been written
        raise HTTPException(422, f"timestamp {value.isoformat()} is out of range") from None
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


@router.get("/entries", response_model=EntriesPage, summary="List ledger entries, oldest first")
async def list_entries(
    request: Request,
    _principal: Reader,
    after: Annotated[int, Query(ge=0, le=2**62, description="return entries with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    actor: Annotated[str | None, Query(max_length=256, pattern=_NO_NUL)] = None,
    tool: Annotated[str | None, Query(max_length=256, pattern=_NO_NUL)] = None,
    outcome: Outcome | None = None,
    entry_type: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
    since: Annotated[datetime | None, Query(description="created at or after (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="created before (RFC 3339)")] = None,
) -> EntriesPage:
    ledger = state_of(request).governor.node.ledger
    entries = await run_in_threadpool(
        ledger.entries,
        after=after,
        limit=limit + 1,  # one more than asked: whether another page exists
        actor=actor,
        tool=tool,
        outcome=outcome.value if outcome else None,
        entry_type=entry_type,
        since=_timestamp(since),
        until=_timestamp(until),
    )
    page = entries[:limit]
    next_after = page[-1].seq if len(entries) > limit else None
    return EntriesPage(entries=[_info(e) for e in page], next_after=next_after)


@router.get("/entries/{seq}", response_model=LedgerEntryInfo, responses=_NOT_FOUND, summary="One ledger entry")
async def get_entry(seq: Annotated[int, Path(ge=1, le=2**62)], request: Request, _principal: Reader) -> LedgerEntryInfo:
    entry = await run_in_threadpool(state_of(request).governor.node.ledger.get, seq)
    if entry is None:
        raise HTTPException(404, f"no ledger entry {seq}")
    return _info(entry)


@router.get(
    "/entries/{seq}/proof",
    response_model=InclusionProofInfo,
    responses=_NOT_FOUND,
    summary="Inclusion proof of an entry in a signed checkpoint's tree (RFC 9162)",
)
async def get_proof(
    seq: Annotated[int, Path(ge=1, le=2**62)],
    request: Request,
    _principal: Reader,
    tree_size: Annotated[int | None, Query(ge=1, le=2**62, description="default: the latest checkpoint")] = None,
) -> InclusionProofInfo:
    ledger = state_of(request).governor.node.ledger
    try:
        proof = await run_in_threadpool(ledger.inclusion_proof, seq, tree_size)
    except LedgerError as exc:  # not covered (yet): the caller asked for something that does not exist
        raise HTTPException(404, str(exc)) from None
    return InclusionProofInfo(**proof.to_dict())


@router.get("/checkpoints", response_model=list[CheckpointInfo], summary="Signed checkpoints (C2SP signed notes)")
async def list_checkpoints(request: Request, _principal: Reader) -> list[CheckpointInfo]:
    checkpoints = await run_in_threadpool(state_of(request).governor.node.ledger.checkpoints)
    return [
        CheckpointInfo(tree_size=c.size, root_hash=c.root.hex(), timestamp=c.timestamp, note=c.note)
        for c in checkpoints
    ]


@router.get("/keys", summary="JWKS of every key that signed the ledger (for offline verification)")
async def ledger_keys(request: Request, _principal: Reader) -> dict[str, Any]:
    """The node's keys and those its verified key hand-overs introduced: what the node itself trusts."""
    keys = await run_in_threadpool(state_of(request).governor.node.ledger.trusted_keys)
    return jwks_of(keys.values())


@contextlib.asynccontextmanager
async def _one_at_a_time(state: ServerState) -> AsyncIterator[None]:
    """Whole-ledger jobs run one at a time per process and refuse rather than queue: each holds a worker thread for
    seconds, and a pile of them would starve the threads that decisions need."""
    if state.heavy.locked():
        raise HTTPException(
            429, "a ledger verification or export is already running on this server; retry later",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    async with state.heavy:
        yield


@router.get("/verify", response_model=LedgerVerification, summary="Verify the whole ledger")
async def verify_ledger(
    request: Request,
    _principal: Annotated[Principal, Depends(require(Permission.VERIFY_LEDGER))],
    trust_checkpoints: Annotated[
        bool, Query(description="check entries covered by signed checkpoints by hash only (faster)")
    ] = False,
) -> LedgerVerification:
    state = state_of(request)
    node = state.governor.node
    async with _one_at_a_time(state):
        report = await run_in_threadpool(
            node.ledger.verify, state.governor.public_keys, trust_checkpoints=trust_checkpoints
        )
    state.metrics.record_verification(report.valid)
    return LedgerVerification(
        valid=report.valid,
        entries_verified=report.entries_verified,
        chain_intact=report.chain_intact,
        signatures_valid=report.signatures_valid,
        details=report.to_dict(),
    )


@router.get(
    "/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "a signed ledger bundle"}},
    summary="Download a signed, self-contained ledger bundle (verify with `lexecon verify-ledger --ledger-file`)",
)
async def export_ledger(
    request: Request, _principal: Annotated[Principal, Depends(require(Permission.EXPORT_LEDGER))]
) -> FileResponse:
    state = state_of(request)
    ledger = state.governor.node.ledger
    handle, name = tempfile.mkstemp(prefix="lexecon-export-", suffix=".zip")
    os.close(handle)
    path = pathlib.Path(name)
    try:
        async with _one_at_a_time(state):
            await run_in_threadpool(ledger.export, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"lexecon-ledger-{ledger.node_id}.zip",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
