"""Log lines a burst would repeat once a request — the database lost under load, connections refused
at the caps — said at most once an interval, the next one counting those held back."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable


class Throttle:
    """One log line's pace: ``due`` is the count held back since it was last said (0 the first
    time), or None while it was said less than ``every_s`` ago."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._said: float | None = None
        self._held = 0
        self._lock = threading.Lock()

    def due(self) -> int | None:
        with self._lock:
            now = self._clock()
            if self._said is not None and now - self._said < self.every_s:
                self._held += 1
                return None
            held, self._held, self._said = self._held, 0, now
            return held

    def say(self, logger: logging.Logger, level: int, message: str, *args: Any) -> None:
        """``logger.log(level, message, *args)`` when due, saying how many like it were held back."""
        held = self.due()
        if held is None:
            return
        if held:
            message, args = f"{message} (and %d more like it since it was last said)", (*args, held)
        logger.log(level, message, *args)
