"""Bounds on the numbers Stockyard takes from clients and operators, and one checker for them.

Python integers have no limit, but SQLite's are 64-bit: a number past 2**63-1 that reaches
the database is an OverflowError (a 500), and a huge ``max_tokens`` or ``n`` makes the
budget arithmetic meaningless. So every whole number read from a request body, the admin
API or the CLI is checked here against a sensible range first (module options carry their
own bounds in their schema); the bounds are generous enough never to stand in a real
user's way, and small enough that their products (tokens × choices × price) stay far
below SQLite's range.

The request fields the proxy itself reads (to estimate the worst case and enforce the
guard's ceiling) are named here too, so the validation, the estimate and the guard read
the same list. And bounds on things held at once: :class:`Caps` (open connections, message batch
results being read).
"""

from __future__ import annotations

import math
import threading
from typing import Any, NamedTuple

from .errors import ProxyError

SQLITE_INT_MAX = 2**63 - 1
MAX_TOKENS = 10_000_000  # output tokens one choice may ask for
MAX_CHOICES = 128  # n / best_of / candidateCount (OpenAI's own limit for n)
MAX_RATE_LIMIT = 10**12  # rpm and tpm of a client key
MAX_MONEY_UC = 10**17  # a budget: $1,000,000,000 in µ¢
MAX_PRICE_UC = 10**14  # a rate: $1,000,000 per 1M tokens, in µ¢ per 1M tokens

# Output caps per choice, in the order a provider reads them (Chat/Completions, Responses).
TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# Multipliers: every choice is billed, and ``best_of`` completions are generated (and billed) upstream.
CHOICE_FIELDS = ("n", "best_of")
# A Gemini-shaped body: ``generationConfig`` (or its proto name) with candidates × their cap.
GENERATION_CONFIGS = ("generationConfig", "generation_config")
GENERATION_TOKEN_FIELDS = ("maxOutputTokens", "max_output_tokens")
GENERATION_CHOICE_FIELDS = ("candidateCount", "candidate_count")
BODY_FIELDS = TOKEN_FIELDS + CHOICE_FIELDS
GENERATION_FIELDS = GENERATION_TOKEN_FIELDS + GENERATION_CHOICE_FIELDS


def whole_number(value: Any, lo: int, hi: int, *, integral_floats: bool = False) -> int:
    """``value`` as an int in [lo, hi], or ValueError saying what is wrong.

    ``True`` is an int to Python but not a number to anyone else, so booleans are refused;
    with ``integral_floats`` a float with no fraction (``5000.0``, JSON ``5e3``) counts.
    """
    if isinstance(value, float) and integral_floats and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise ValueError(f"must be a whole number, got {show(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"must be from {lo} to {hi}, got {value}")
    return value


def show(value: Any) -> str:
    """A client's value for an error message: short, with its JSON type when that is the problem."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    kinds: dict[type, str] = {dict: "an object", list: "an array"}
    return kinds.get(type(value), f"a {type(value).__name__}")


class BodyNumber(NamedTuple):
    """One numeric field of a request body: where it sits, its name for people, what it counts.

    A named tuple, not a frozen dataclass: these lists are made up to four times per request
    (the edge check, the guard, the rate limit's and the budget's estimate), and a frozen
    dataclass's ``__init__`` cost more than the rest of the lookup.
    """

    container: dict
    key: str
    name: str  # "max_tokens", "generationConfig.candidateCount"
    tokens: bool  # an output cap (else a number of choices)

    @property
    def value(self) -> Any:
        return self.container[self.key]

    @property
    def most(self) -> int:
        return MAX_TOKENS if self.tokens else MAX_CHOICES


def request_numbers(body: dict) -> list[BodyNumber]:
    """Every numeric field of a request body that the proxy reads, as the body has it."""
    found = [BodyNumber(body, key, key, key in TOKEN_FIELDS) for key in BODY_FIELDS if key in body]
    for section in GENERATION_CONFIGS:
        config = body.get(section)
        if isinstance(config, dict):
            found += [
                BodyNumber(config, key, f"{section}.{key}", key in GENERATION_TOKEN_FIELDS)
                for key in GENERATION_FIELDS
                if key in config
            ]
    return found


def check_request_numbers(body: dict) -> bool:
    """Refuse (400, naming the field) a token cap or choice count that is not a whole number
    in range, so that no ``"5000"`` or ``5000.5`` slips past the guard and the budget to a
    provider that reads it its own way. ``null`` means "not set". An integral float is
    rewritten as an int in ``body``; returns True when that happened (re-serialise it).
    """
    changed = False
    for field in request_numbers(body):
        value = field.value
        if value is None:
            continue
        try:
            number = whole_number(value, 1, field.most, integral_floats=True)
        except ValueError as exc:
            numeric = type(value) is int or (type(value) is float and math.isfinite(value) and value.is_integer())
            code = "invalid_value" if numeric else "invalid_type"  # out of range, or not a whole number
            raise ProxyError(400, f"'{field.name}' {exc}", param=field.name, code=code) from None
        if type(value) is not int:
            field.container[field.key] = number
            changed = True
    return changed


class Caps:
    """Things held at once (open connections; message batch results being read), at most ``total`` in
    all and ``per_sender`` for one counted holder (a sender's address; a client key): one holder
    cannot take every one there is."""

    def __init__(self, total: int, per_sender: int) -> None:
        self.total, self.per_sender = total, per_sender
        self.open = 0
        self._by_sender: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, who: str | None) -> int | None:
        """Count one more held by ``who`` (None: not counted per holder), or the status to refuse
        it with: 503 when the whole is held, 429 when ``who``'s share is."""
        with self._lock:
            if self.open >= self.total:
                return 503
            if who is not None:
                held = self._by_sender.get(who, 0)
                if held >= self.per_sender:
                    return 429
                self._by_sender[who] = held + 1
            self.open += 1
            return None

    def give(self, who: str | None) -> None:
        """One that ``take`` counted for ``who`` has ended."""
        with self._lock:
            self.open -= 1
            if who is not None:
                left = self._by_sender.pop(who, 1) - 1
                if left > 0:
                    self._by_sender[who] = left


# Request bodies in memory at once are bounded (STOCKYARD_REQUEST_BODIES_MB: App.bodies): those up to
# this size are not counted (a thousand of them are 64 MiB), a larger one waits for room this long.
BODY_UNCOUNTED_BYTES = 64 * 1024
BODY_WAIT_S = 5.0


class HeldBytes:
    """Bytes held at once by every holder together, at most ``total`` (request bodies in memory; the
    writer's queued records), and by one ``owner`` at most ``share`` (the writer: a client key's).

    Past it a taker waits for room up to ``wait_s`` (a burst passes at the pace holders let go),
    then is refused; one holder alone always fits (an owner's first too), so nothing within the
    size limit is refused for its size alone."""

    def __init__(self, total: int, share: int | None = None) -> None:
        self.total = total
        self.share = share
        self.held = 0
        self._by_owner: dict[str, int] = {}
        self._room = threading.Condition()

    def take(self, size: int, wait_s: float, own: int = 0, owner: str | None = None) -> bool:
        """Hold ``size`` more bytes, waiting up to ``wait_s`` for room; False if none came. ``own``:
        the bytes this holder holds already (a body counted as it comes), so one alone still fits;
        ``owner``'s holders together are held to ``share`` (its first one alone fits too)."""

        def fits() -> bool:
            if not (self.held == own or self.held + size <= self.total):
                return False
            if owner is None or self.share is None:
                return True
            mine = self._by_owner.get(owner, 0)
            return mine == own or mine + size <= self.share

        with self._room:
            if not self._room.wait_for(fits, timeout=wait_s):
                return False
            self.held += size
            if owner is not None:
                self._by_owner[owner] = self._by_owner.get(owner, 0) + size
            return True

    def fits(self, size: int, owner: str | None = None, wait_s: float = 0.0) -> bool:
        """Whether ``owner``'s ``size`` more bytes fit the total and its share, waiting up to ``wait_s``
        for them to; nothing is held (``add`` does: the writer queues what it checked)."""
        with self._room:
            return self._room.wait_for(lambda: self._fits(size, owner), timeout=wait_s)

    def _fits(self, size: int, owner: str | None) -> bool:
        mine = self._by_owner.get(owner, 0) if owner is not None and self.share is not None else 0
        total_ok = self.held == 0 or self.held + size <= self.total
        return total_ok and (mine == 0 or self.share is None or mine + size <= self.share)

    def add(self, size: int, owner: str | None = None) -> None:
        """Hold ``size`` more bytes of ``owner``'s whether they fit or not."""
        if size:
            with self._room:
                self.held += size
                if owner is not None:
                    self._by_owner[owner] = self._by_owner.get(owner, 0) + size

    def give(self, size: int, owner: str | None = None) -> None:
        """``size`` bytes that ``take`` or ``add`` held (``owner``'s) are free again."""
        if not size:
            return
        with self._room:
            self.held -= size
            if owner is not None:
                left = self._by_owner.pop(owner) - size
                if left:
                    self._by_owner[owner] = left
            self._room.notify_all()


def bodies_full() -> ProxyError:
    """The 503 of a request body (or WebSocket message) that found no room for ``BODY_WAIT_S``."""
    return ProxyError(
        503,
        "the server holds all the request bodies it may at once (STOCKYARD_REQUEST_BODIES_MB); try again shortly",
        code="too_many_request_bodies",
        headers={"Retry-After": "1"},
    )


def uploads_full() -> ProxyError:
    """The 503 of an upload that found no room to spool for ``BODY_WAIT_S`` (its disk shared by the database)."""
    return ProxyError(
        503,
        "the server spools all the uploads it may at once (STOCKYARD_UPLOADS_MB); try again shortly",
        code="too_many_uploads",
        headers={"Retry-After": "1"},
    )


def websocket_caps(wanted: int, connections: int | None) -> Caps:
    """The Responses WebSocket caps: ``wanted`` (``STOCKYARD_WEBSOCKET_MAX_CONNECTIONS``) in all, but at
    most half of ``connections`` (the server's connection cap, when known): a socket holds one of those
    for its life, and a client refused one (a 426) goes on over HTTP, which needs the room: half of one
    connection is none (every handshake a 426). One client key holds a quarter of them (at least one)."""
    total = min(wanted, connections // 2) if connections else wanted
    return Caps(total, max(1, total // 4))
