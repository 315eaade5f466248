"""Waking a thread asleep in ``poll`` or a selector: the client watch's and the stream relay's."""

from __future__ import annotations

import socket


class Wakeup:
    """A non-blocking socket pair: another thread's :meth:`wake` makes :meth:`fileno` readable, so
    the sleeper needs no timer to notice new work; it :meth:`drain`s it before taking that work."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        """The end to wait on (readable once woken)."""
        return self._r.fileno()

    def wake(self) -> None:
        """Wake the sleeper, from any thread; never blocks."""
        try:
            self._w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

    def drain(self) -> None:
        """Take every wake-up sent so far: the end is not readable again until the next."""
        try:
            while self._r.recv(4096):
                pass
        except BlockingIOError:
            pass
