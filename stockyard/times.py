"""Reading the times operators type (``2024-05-01``, ``2024-05-01T12:00``, ``…Z``) as UTC.

The admin API and the CLI take the same ``--since``/``since=`` values, so they parse them
here, once. A time without an offset is UTC, like every time Stockyard stores.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FORMAT_HELP = "an ISO date or time in UTC, e.g. 2024-05-01 or 2024-05-01T12:30:00Z"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_utc(text: str) -> datetime:
    """An aware UTC datetime, or ValueError naming the accepted forms."""
    raw = (text or "").strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not {FORMAT_HELP}") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch (how traces are indexed), in exact integer arithmetic."""
    return (value - EPOCH) // timedelta(milliseconds=1)


def to_iso(value: datetime) -> str:
    """The exact text form of stored audit times, so string comparison orders correctly."""
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """Now, in the stored text form."""
    return to_iso(datetime.now(timezone.utc))


def parse_day(text: str, what: str = "date") -> date:
    """A UTC day ``2024-05-01`` (what daily rollups are keyed by), or ValueError naming ``what``."""
    raw = (text or "").strip() if isinstance(text, str) else ""
    if not _DAY.match(raw):
        raise ValueError(f"{what} must be a date like 2024-05-01, got {text!r}")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a real date") from None
