"""Noticing a client that leaves while its request waits for the provider.

A request thread blocked on the provider's answer cannot look at its client's socket, so
one watcher thread per server does it for every request that is waiting upstream: it
sleeps in ``poll`` on those sockets (no polling loop), and when a client is gone it calls that
request's callback. A stream's shuts the upstream connection down: the blocked read returns, the
request ends as ``client_disconnected`` and the provider sees its connection close (and stops
generating). A whole answer's lets a call already sent run to its end (``upstream.Cancel.leave``):
the provider bills that answer whole, so it is read for its usage, then traced the same way.

Gone is a reset, not an end-of-file alone. A client that shut down only its sending side
(``nc -N``, HTTP/1.0 tools, scripts) still reads its answer, and RFC 9112 §9.6 says a half-close is
no abort while the server can still write; but a client that closed both ways sends the same FIN,
and Linux tells the two apart only once something is written to it (a closed socket answers data
with a reset: ``POLLHUP``). So at an end-of-file the watch writes the request's ``probe`` — an
interim ``100 Continue``, which every HTTP/1.1 client reads past — and watches on for the reset
alone. An HTTP/1.0 client may get no 1xx (RFC 9110 §15.2), so none is written to it: one that
closed both ways is noticed when its answer is written (a whole answer, billed whole either way,
goes out unread; a stream ends at its next write).

Bytes from a keep-alive client that pipelines its next request also make the socket
readable, but do not mean it left: such a socket is no longer watched for this request
(an end-of-file behind those bytes cannot be seen without reading them).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator

from .wakeup import Wakeup

log = logging.getLogger("stockyard.server")

LATE_S = 0.005  # a request is watched once it has waited this long (a faster answer costs nothing)
IDLE_S = 1.0  # with no request waiting for this long, the watcher sleeps until the next one
# The peer's FIN (Linux): bytes of a keep-alive client's next request do not wake the watcher for
# a request whose watch ended and whose socket is still in the poll set; elsewhere, readable.
_LEFT = getattr(select, "POLLRDHUP", select.POLLIN)


_RESET = select.POLLERR | select.POLLHUP  # reported whatever is asked: all a half-closed socket is watched for


class _Watch:
    __slots__ = ("sock", "fd", "on_gone", "probe", "due", "active", "taken", "half_closed", "lock")

    def __init__(self, sock: socket.socket, fd: int, on_gone: Callable[[], None], probe: bytes, due: float) -> None:
        self.sock, self.fd, self.on_gone, self.probe, self.due = sock, fd, on_gone, probe, due
        self.active = fd >= 0
        self.taken = False  # in the watcher's poll set
        self.half_closed = False  # its end-of-file was read: watched for a reset only
        self.lock = threading.Lock()  # between this request's thread and the watcher, never shared


class ClientWatch:
    """One thread, one ``poll`` set: the client sockets of requests that wait for a provider.

    A request thread touches no system call: it puts its watch in ``_pending`` and takes it
    out again. The watcher moves the watches still waiting after ``LATE_S`` into its poll set
    (``poll.register`` is not a system call either) and drops the ended ones, on a timer that
    runs only while requests come in. Registering each socket with epoll from the request
    thread cost two ``epoll_ctl`` per request, each letting go of the GIL: about 50 µs of CPU
    per request under load (bench/README.md).
    """

    def __init__(self, late_s: float = LATE_S) -> None:
        self.late_s = late_s
        self._pending: dict[_Watch, None] = {}  # oldest first; request threads add and remove
        self._ended: deque[_Watch] = deque()  # taken watches whose block ended: leave the poll set
        self._watched: dict[int, _Watch] = {}  # fd -> watch in the poll set (the watcher's alone)
        self._poll = select.poll()
        self._asleep = False  # the watcher waits with no timer: a new watch must wake it
        self._wakeup = Wakeup()
        self._poll.register(self._wakeup.fileno(), select.POLLIN)
        threading.Thread(target=self._run, name="stockyard-client-watch", daemon=True).start()

    @contextmanager
    def watching(
        self, sock: socket.socket, on_gone: Callable[[], None], probe: bytes = b""
    ) -> Iterator[Callable[[], None]]:
        """Call ``on_gone`` (at most once, never after this block ends) if ``sock``'s peer leaves.

        ``probe``: bytes the watcher may write to the peer at its end-of-file, to learn from a reset
        whether it closed both ways (an HTTP/1.1 client's interim response); empty, nothing is
        written and only a reset says the peer left. Written under the watch's lock and only while
        it is active, so never after the block's answer began (the answer ends the watch first).

        The block gets a function that ends the watch early: once the answer is on its way, the
        client's next bytes are its next request, and waking this thread for them costs every
        keep-alive request a thread switch.
        """
        watch = _Watch(sock, sock.fileno(), on_gone, probe, time.monotonic() + self.late_s)
        if watch.active:  # a closed socket (fd -1) is never watched
            self._pending[watch] = None
            if self._asleep:
                self._asleep = False
                self._wakeup.wake()
        try:
            yield lambda: self._end(watch)
        finally:
            self._end(watch)

    def _end(self, watch: _Watch) -> None:
        with watch.lock:
            if not watch.active:
                return
            watch.active = False
        if watch.taken:  # the watcher drops it from the poll set (or on its next event: closed, reused)
            self._ended.append(watch)
        else:
            self._pending.pop(watch, None)

    def _run(self) -> None:
        last_busy = time.monotonic()
        while True:
            self._drop_ended()
            now = time.monotonic()
            if self._take_due(now):
                last_busy = now
            # A timer of late_s while requests come in (one wake-up per tick however many there
            # are: a watch is taken between late_s and twice that), none once they stop.
            timeout: float | None = self.late_s if now - last_busy < IDLE_S else None
            if timeout is None:
                self._asleep = True
                if self._pending:  # added before the flag was seen
                    self._asleep = False
                    continue
            try:
                ready = self._poll.poll(None if timeout is None else timeout * 1000)
            except OSError:
                continue
            self._asleep = False
            for fd, events in ready:
                if fd == self._wakeup.fileno():
                    self._wakeup.drain()
                elif (watch := self._watched.get(fd)) is not None:
                    self._check(watch, events)
                else:
                    self._poll.unregister(fd)

    def _take_due(self, now: float) -> bool:
        """Put the watches waiting since ``late_s`` in the poll set; True while others wait."""
        for watch in list(self._pending):
            if watch.due > now:
                return True
            self._pending.pop(watch, None)
            with watch.lock:
                if not watch.active:
                    continue
                other = self._watched.get(watch.fd)
                if other is not None and other.active:  # a second block on a watched socket: inert
                    watch.active = False
                    continue
                watch.taken = True
            self._watched[watch.fd] = watch
            self._poll.register(watch.fd, _LEFT)
        return False

    def _drop_ended(self) -> None:
        while self._ended:
            self._forget(self._ended.popleft())

    def _forget(self, watch: _Watch) -> None:
        if self._watched.get(watch.fd) is watch:
            del self._watched[watch.fd]
            self._poll.unregister(watch.fd)

    def _check(self, watch: _Watch, events: int) -> None:
        """The socket is readable, or (half-closed) reset: a reset means the client left; an
        end-of-file, that it may have (:meth:`_half_closed`); bytes, that it sent its next request."""
        with watch.lock:
            if not watch.active:  # ended; its entry in _ended is on the way
                self._forget(watch)
                return
            if watch.half_closed:
                gone = bool(events & _RESET)
                if not gone:
                    return
            else:
                try:
                    gone = watch.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    gone = True
                else:
                    if gone and self._half_closed(watch):
                        return
            watch.active = False
            self._forget(watch)  # gone, or pipelined bytes: either way nothing more to see here
            if gone:
                try:
                    watch.on_gone()
                except Exception:
                    log.exception("ending the upstream call of a departed client failed")

    def _half_closed(self, watch: _Watch) -> bool:
        """The peer sent its end-of-file: write the probe (its answer to a peer that closed both
        ways is a reset) and watch on for the reset alone; False if the peer is gone already (the
        write failed, or went out in part: an interim response cut short would spoil the answer)."""
        if watch.probe:
            try:
                sent = watch.sock.send(watch.probe, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0  # no room to ask (never so before an answer): the reset alone will tell
            except OSError:
                return False
            if 0 < sent < len(watch.probe):
                return False
        watch.half_closed = True
        self._poll.modify(watch.fd, 0)  # the end-of-file stays readable: only a reset may wake us now
        return True
