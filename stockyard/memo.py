"""Bounded memos of what a model name maps to (its price, its provider): each request looks one up,
and a client chooses the names, so a memo keeps at most :data:`MEMO_MAX` of them and none longer
than :data:`MEMO_NAME_MAX` (a batch line's); past either the answer is worked out, not remembered."""

from __future__ import annotations

from typing import Any, Hashable

MEMO_MAX = 10_000  # entries one memo keeps
MEMO_NAME_MAX = 256  # a longer model name is worked out every time, not remembered


def remember(memo: dict[Any, Any], key: Hashable, name: str, value: Any) -> None:
    """Keep ``value`` under ``key`` (made from the model ``name``) while ``memo`` has room for it."""
    if len(memo) < MEMO_MAX and len(name) <= MEMO_NAME_MAX:
        memo[key] = value
