"""UTC dates and instants as operators type them and as the database stores them.

Stored instants are ISO-8601 with a ``Z`` (``2026-11-27T10:00:00Z``), days are
``YYYY-MM-DD``; both sort as text, which is how the database compares them.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def iso(moment: datetime) -> str:
    """An aware datetime as stored: UTC, seconds, ``Z``."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_day(text: str, what: str = "date") -> date:
    """'2026-11-27' → date; ValueError naming ``what`` for anything else."""
    if not isinstance(text, str) or not _DATE.match(text.strip()):
        raise ValueError(f"{what} must be a date like 2026-11-27, got {text!r}")
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a real date") from None


def parse_instant(text: str, what: str = "time") -> datetime:
    """A date (00:00 UTC that day) or an ISO-8601 time (UTC unless it says otherwise)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a date like 2026-12-31 or a time like 2026-12-31T18:00:00Z")
    raw = text.strip()
    if _DATE.match(raw):
        return datetime.combine(parse_day(raw, what), time(), timezone.utc)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} must be a date like 2026-12-31 or a time like "
                         f"2026-12-31T18:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def epoch(stored: str | None) -> float | None:
    """A stored instant as a Unix time (None stays None)."""
    return None if stored is None else parse_instant(stored).timestamp()
