"""Canonical JSON: the exact bytes that ledger entries are hashed and signed over.

Sorted keys, no insignificant whitespace, UTF-8. Ledger bodies admit no floats and only integers within ±2^53, so the
bytes are identical to RFC 8785 (JCS) output and any verifier can reproduce them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lexecon_core.errors import InvalidRequest

_MAX_SAFE_INT = 2**53 - 1

_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _reject_float(text: str) -> Any:
    raise InvalidRequest(f"floats are not allowed in ledger entries (found {text}); use an integer or a string")


def _check_int(text: str) -> int:
    value = int(text)
    if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
        raise InvalidRequest(f"integer {text} is outside ±2^53 and cannot be stored canonically")
    return value


def canonical_bytes(value: Any) -> bytes:
    """Serialise ``value`` as JCS-compatible canonical JSON. Raises :class:`InvalidRequest` on floats or big ints."""
    try:
        text = _encoder.encode(value)
        encoded = text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError
        raise InvalidRequest(f"not JSON-serialisable: {exc}") from None
    # Re-reading with hooks is the cheapest complete check (the C parser calls back only for numbers).
    json.loads(text, parse_float=_reject_float, parse_int=_check_int)
    return encoded


def args_digest(args: Any) -> str:
    """SHA-256 (hex) of a tool call's arguments in canonical form.

    Tool arguments may contain floats (``refund(amount=10.5)``); they are written the way Python's ``json`` writes them
    (shortest round-trip repr). Verifiers in other languages should expect integers or strings for exact reproduction.
    """
    _string_keys_only(args)
    try:
        data = _encoder.encode(args).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError
        raise InvalidRequest(f"tool_args must be JSON-serialisable: {exc}") from None
    return hashlib.sha256(data).hexdigest()


def _string_keys_only(value: Any) -> None:
    """JSON writes ``{1: x}``, ``{True: x}`` and ``{None: x}`` as ``{"1": x}``, ``{"true": x}``, ``{"null": x}``: two
    different calls would share one hash, and a token for one would authorise the other. Refused at every depth."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise InvalidRequest(f"tool argument names must be strings, at every depth (found {key!r})")
                if isinstance(inner, dict | list | tuple):
                    pending.append(inner)
        elif isinstance(item, list | tuple):
            pending.extend(inner for inner in item if isinstance(inner, dict | list | tuple))


def ledger_safe(value: Any) -> Any:
    """Copy ``value`` with floats written as strings, so free-form context can be stored in a ledger body."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): ledger_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [ledger_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_SAFE_INT:
        return str(value)
    return value
