"""The batched log output when what reads it stalls (a log shipper that stopped, a slow disk).

The stream is a real pipe nobody reads: once its buffer (64 KiB) is full, the log thread's
``write`` blocks, as it would on a stalled ``docker logs`` pipe or a disk that does not answer.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time

import pytest

from stockyard import logbuffer
from stockyard.logbuffer import BatchedStreamHandler


@pytest.fixture
def stalled():
    """A handler writing to a pipe whose reader reads nothing until the test says so; the pipe is
    filled first, so the handler's first write blocks."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    stream = os.fdopen(w, "w")
    handler = BatchedStreamHandler(stream, interval=0.01)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
    yield handler, r
    drain = threading.Thread(target=_read_all, args=(r,), daemon=True)
    drain.start()
    handler.close()
    stream.close()
    drain.join(5)


def _read_all(fd: int, size: int = 65536) -> bytes:
    out = bytearray()
    while chunk := os.read(fd, size):
        out += chunk
    os.close(fd)
    return bytes(out)


def _blocked(handler: BatchedStreamHandler) -> None:
    """Wait until the log thread has taken a batch and is stuck writing it."""
    handler.write_line("first\n")
    deadline = time.monotonic() + 5
    while handler._pending and time.monotonic() < deadline:
        time.sleep(0.005)  # polling the handler's own state: there is no event to wait on
    assert not handler._pending


def test_lines_waiting_for_a_stalled_stream_are_bounded_and_counted(stalled):
    handler, _ = stalled
    _blocked(handler)
    for n in range(logbuffer.PENDING_LINES_MAX * 3):
        handler.write_line(f"2026-01-01T00:00:00 I GET /v1/models 200 - 0.1ms {n}\n")
    assert len(handler._pending) <= logbuffer.PENDING_LINES_MAX
    assert handler.dropped == logbuffer.PENDING_LINES_MAX * 2


def test_the_dropped_lines_are_said_once_the_stream_moves_again(stalled):
    handler, r = stalled
    _blocked(handler)
    for n in range(logbuffer.PENDING_LINES_MAX + 5):
        handler.write_line(f"line {n}\n")
    got = bytearray()
    while b"5 log lines dropped" not in got or not got.endswith(b"\n"):
        assert select.select([r], [], [], 5)[0], "the log thread wrote nothing more"
        got += os.read(r, 65536)
    text = got.decode()
    assert f"line {logbuffer.PENDING_LINES_MAX - 1}\n" in text
    assert f"line {logbuffer.PENDING_LINES_MAX}\n" not in text  # the newest are the ones dropped
    assert handler.dropped == 0


def test_a_warning_does_not_hold_its_thread_while_the_stream_is_stalled(stalled):
    handler, _ = stalled
    _blocked(handler)
    logger = logging.getLogger("stockyard.test_logbuffer")
    logger.handlers[:] = [handler]
    logger.propagate = False
    done = threading.Event()

    def warn() -> None:
        logger.warning("the upstream went away")
        done.set()

    threading.Thread(target=warn, daemon=True).start()
    assert done.wait(2), "a request thread's warning waited on the stalled log stream"


def test_two_workers_batches_on_one_stalled_pipe_never_tear_a_line():
    """``--workers``: each process has its own handler on the one stderr pipe. A write of more
    than PIPE_BUF bytes to a pipe is not atomic: while the reader is slow, the kernel takes it in
    pieces and another worker's bytes land between them, mid-line."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 4095 + b"\n")
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    streams = [os.fdopen(os.dup(w), "w") for _ in range(2)]
    os.close(w)
    handlers = [BatchedStreamHandler(stream, interval=0.01) for stream in streams]
    lines = 3000
    for n in range(lines):
        for tag, handler in enumerate(handlers):
            handler.write_line(f"2026-01-01T00:00:00 I [w{tag}] POST /v1/chat/completions 200 gpt 0.5ms {n:05d}\n")
    out: list[bytes] = []
    drain = threading.Thread(target=lambda: out.append(_read_all(r, 512)), daemon=True)
    drain.start()  # a slow reader: a page at a time, so the writers take turns at the freed room
    closing = [threading.Thread(target=handler.close) for handler in handlers]
    for thread in closing:
        thread.start()
    for thread, stream in zip(closing, streams):
        thread.join(10)
        stream.close()
    drain.join(10)
    got = [line for line in out[0].decode().splitlines() if not line.startswith("xxxx")]
    expected = re.compile(r"2026-01-01T00:00:00 I \[w[01]\] POST /v1/chat/completions 200 gpt 0\.5ms \d{5}")
    torn = [line for line in got if not expected.fullmatch(line)]
    assert torn == []
    assert len(got) == 2 * lines
