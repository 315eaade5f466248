"""Noticing a client that leaves while its request waits for the provider.

A request thread blocked on the provider's answer cannot look at its client's socket, so
one watcher thread per server does it for every request that is waiting upstream: it
sleeps in ``poll`` on those sockets (no polling loop), and when one reads end-of-file — the
client closed, or shut down its sending side — or is reset, it calls that request's
callback. A stream's shuts the upstream connection down: the blocked read returns, the
request ends as ``client_disconnected`` and the provider sees its connection close (and stops
generating). A whole answer's lets a call already sent run to its end (``upstream.Cancel.leave``):
the provider bills that answer whole, so it is read for its usage, then traced the same way.

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

log = logging.getLogger("stockyard.server")

LATE_S = 0.005  # a request is watched once it has waited this long (a faster answer costs nothing)
IDLE_S = 1.0  # with no request waiting for this long, the watcher sleeps until the next one
# The peer's FIN (Linux): bytes of a keep-alive client's next request do not wake the watcher for
# a request whose watch ended and whose socket is still in the poll set; elsewhere, readable.
_LEFT = getattr(select, "POLLRDHUP", select.POLLIN)


class _Watch:
    __slots__ = ("sock", "fd", "on_gone", "due", "active", "taken", "lock")

    def __init__(self, sock: socket.socket, fd: int, on_gone: Callable[[], None], due: float) -> None:
        self.sock, self.fd, self.on_gone, self.due = sock, fd, on_gone, due
        self.active = fd >= 0
        self.taken = False  # in the watcher's poll set
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
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poll.register(self._wake_r.fileno(), select.POLLIN)
        threading.Thread(target=self._run, name="stockyard-client-watch", daemon=True).start()

    @contextmanager
    def watching(self, sock: socket.socket, on_gone: Callable[[], None]) -> Iterator[Callable[[], None]]:
        """Call ``on_gone`` (at most once, never after this block ends) if ``sock``'s peer leaves.

        The block gets a function that ends the watch early: once the answer is on its way, the
        client's next bytes are its next request, and waking this thread for them costs every
        keep-alive request a thread switch.
        """
        watch = _Watch(sock, sock.fileno(), on_gone, time.monotonic() + self.late_s)
        if watch.active:  # a closed socket (fd -1) is never watched
            self._pending[watch] = None
            if self._asleep:
                self._asleep = False
                self._wake()
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

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

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
            for fd, _ in ready:
                if fd == self._wake_r.fileno():
                    self._drain_wake()
                elif (watch := self._watched.get(fd)) is not None:
                    self._check(watch)
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

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _check(self, watch: _Watch) -> None:
        """The socket is readable: end-of-file or a reset means the client left."""
        with watch.lock:
            if not watch.active:  # ended; its entry in _ended is on the way
                self._forget(watch)
                return
            try:
                gone = watch.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                gone = True
            watch.active = False
            self._forget(watch)  # gone, or pipelined bytes: either way nothing more to see here
            if gone:
                try:
                    watch.on_gone()
                except Exception:
                    log.exception("ending the upstream call of a departed client failed")
