"""Memory a burst freed, given back to the system once the server is idle.

After a burst of large bodies the process's RSS stayed at its peak (~160 MB after 64 MiB of queued
bodies) although Python had freed almost all of it: glibc keeps what each thread freed in its arena
for reuse. ``malloc_trim(0)`` hands those free pages back. It runs as a writer idle task (the queue
empty for a second: no burst going on), at most once every ``EVERY_S``; where the C library has no
``malloc_trim`` (musl, macOS) there is nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Any, Callable

EVERY_S = 30.0


class IdleTrimmer:
    """The writer idle task: ``malloc_trim(0)`` if it has not run for ``EVERY_S``."""

    def __init__(self, trim: Callable[[int], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._trim = trim
        self._clock = clock
        self._last = -EVERY_S
        self.trims = 0

    def __call__(self, _conn: Any) -> bool:
        now = self._clock()
        if now - self._last >= EVERY_S:
            self._last = now
            self._trim(0)
            self.trims += 1
        return False  # one step, nothing left to do


def idle_trimmer(clock: Callable[[], float] = time.monotonic) -> IdleTrimmer | None:
    """The idle task that trims the heap, or None where the C library cannot."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return IdleTrimmer(trim, clock)
