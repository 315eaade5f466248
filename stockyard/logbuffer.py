"""Log output written in batches, and the per-request access line written without ``logging``.

Under load, a ``logging`` call per request cost a quarter of the proxy's throughput: the
record, the handler lock that 64 threads queue on, and a ``write`` per line. Here lines go
to a deque (appends need no lock) and a daemon thread writes whatever is there every
``interval`` seconds in one ``write``; a warning or an error wakes it at once.

Only that thread writes, and not under the handler's own lock (which every ``logging`` call
takes): when what reads stderr stalls (a log shipper that stopped, a slow disk), the writer
blocks alone, a request that logs a warning goes on, and at most ``PENDING_LINES_MAX`` lines
wait; the ones beyond are dropped, counted, and said in one line when the stream moves again.
"""

from __future__ import annotations

import collections
import logging
import select
import threading
import time
from typing import TextIO

PENDING_LINES_MAX = 10_000  # about 1 MB of access lines; beyond, lines are dropped and counted
_active: "BatchedStreamHandler | None" = None
_access = logging.getLogger("stockyard.access")


class BatchedStreamHandler(logging.Handler):
    def __init__(self, stream: TextIO, interval: float = 0.2, tag: str = "") -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.tag = tag  # a group worker's "[w1] ", on the access lines too
        self.dropped = 0  # lines not kept while the stream was stalled; said with the next batch
        self._pending: collections.deque[str] = collections.deque()
        self._dropping = threading.Lock()  # taken only when the deque is full
        self._writing = threading.Lock()  # one batch at a time, in order
        self._wake = threading.Event()
        self._stopping = threading.Event()  # not ``_closed``: logging.Handler has its own
        threading.Thread(target=self._run, name="stockyard-log", daemon=True).start()

    def install(self) -> "BatchedStreamHandler":
        """Make this the handler :func:`access` writes to."""
        global _active
        _active = self
        return self

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)
        if record.levelno >= logging.WARNING:
            self._wake.set()  # soon, but by the log thread: this one may be a request's

    def write_line(self, line: str) -> None:
        """Queue a line for the log thread; drop (and count) it when too many already wait."""
        if len(self._pending) < PENDING_LINES_MAX:
            self._pending.append(line)
            return
        with self._dropping:
            self.dropped += 1

    def flush(self) -> None:
        with self._writing:
            parts = self._take()
            if not parts:
                return
            try:
                for piece in whole_lines(parts, select.PIPE_BUF):
                    self.stream.write(piece)
                    self.stream.flush()  # one write each: atomic on a pipe
            except (OSError, ValueError):
                pass  # stderr went away: nothing sensible to do with a log line

    def _take(self) -> list[str]:
        """Every waiting line, then the count of those dropped since the last batch."""
        parts = []
        try:
            while True:
                parts.append(self._pending.popleft())
        except IndexError:
            pass
        with self._dropping:
            dropped, self.dropped = self.dropped, 0
        if dropped:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
            parts.append(f"{stamp} W {self.tag}{dropped} log lines dropped: the log output was not read fast enough\n")
        return parts

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        global _active
        if _active is self:
            _active = None
        self._stopping.set()
        self._wake.set()
        self.flush()
        super().close()


def whole_lines(lines: list[str], limit: int) -> list[str]:
    """The lines joined into pieces of at most ``limit`` bytes (a longer line alone): a write of at
    most PIPE_BUF bytes to a pipe is never split, so ``--workers`` sharing one stderr pipe (docker,
    systemd) cannot put one worker's bytes inside another's line while the reader lags."""
    pieces: list[str] = []
    piece: list[str] = []
    size = 0
    for line in lines:
        n = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
        if piece and size + n > limit:
            pieces.append("".join(piece))
            piece, size = [], 0
        piece.append(line)
        size += n
    if piece:
        pieces.append("".join(piece))
    return pieces


def printable(text: str, limit: int | None = None) -> str:
    """Text made safe for one log line: every non-printable character (controls, line breaks,
    terminal escapes, bidi overrides) as a visible escape, so a client cannot forge lines or
    drive the operator's terminal."""
    if limit is not None:
        text = text[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def access(message: str) -> None:
    """One access-log line (no secrets in it: method, path without query, status, model, time)."""
    message = printable(message)
    handler = _active
    if handler is None:
        _access.info("%s", message)
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    handler.write_line(f"{stamp} I {handler.tag}{message}\n")
