"""Noticing a client that leaves while its request waits for the provider.

A request thread blocked on the provider's answer cannot look at its client's socket, so
one watcher thread per server does it for every request that is waiting upstream: it
sleeps in ``select`` on those sockets (no polling), and when one reads end-of-file — the
client closed, or shut down its sending side — or is reset, it calls that request's
callback, which shuts the upstream connection down. The blocked read then returns and
the request ends as ``client_disconnected``; the provider sees its connection close.

Bytes from a keep-alive client that pipelines its next request also make the socket
readable, but do not mean it left: such a socket is no longer watched for this request
(an end-of-file behind those bytes cannot be seen without reading them).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("stockyard.server")


class _Watch:
    __slots__ = ("on_gone", "active", "lock")

    def __init__(self, on_gone: Callable[[], None]) -> None:
        self.on_gone = on_gone
        self.active = True
        self.lock = threading.Lock()  # between this request's thread and the watcher, never shared


class ClientWatch:
    """One thread, one selector: the client sockets of requests that wait for a provider.

    Each watch has its own lock: one lock for all of them, held across the register and
    unregister system calls (which let go of the GIL), queued every request thread behind
    each other twice per request — measured at about 0.15 ms of CPU per request under load
    (bench/README.md). Sockets are registered by descriptor number, so the selector never
    searches its map (which another thread may be changing) for a closed socket.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ, None)
        # epoll sees a socket registered while it waits; select/poll copy their set per call
        self._needs_wake = not isinstance(self._selector, getattr(selectors, "EpollSelector", ()))
        threading.Thread(target=self._run, name="stockyard-client-watch", daemon=True).start()

    @contextmanager
    def watching(self, sock: socket.socket, on_gone: Callable[[], None]) -> Iterator[Callable[[], None]]:
        """Call ``on_gone`` (at most once, never after this block ends) if ``sock``'s peer leaves.

        The block gets a function that ends the watch early: once the answer is on its way, the
        client's next bytes are its next request, and waking this thread for them costs every
        keep-alive request a thread switch.
        """
        watch = _Watch(on_gone)
        fd = sock.fileno()
        if fd < 0:  # closed already; -1 would make the selector search its map, which others change
            watch.active = False
        else:
            try:
                self._selector.register(fd, selectors.EVENT_READ, (sock, watch))
            except (KeyError, ValueError, OSError):  # watched by another block, or gone meanwhile
                watch.active = False
        if watch.active and self._needs_wake:
            self._wake()
        try:
            yield lambda: self._end(fd, watch)
        finally:
            self._end(fd, watch)

    def _end(self, fd: int, watch: _Watch) -> None:
        with watch.lock:
            if watch.active:
                watch.active = False
                self._unregister(fd)

    def _wake(self) -> None:
        """Make a select/poll selector start over with the new socket in its set."""
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

    def _unregister(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def _run(self) -> None:
        while True:
            try:
                ready = self._selector.select()
            except OSError:  # a socket closed under select(): the next round no longer has it
                continue
            for key, _ in ready:
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._check(key.fd, *key.data)

    def _check(self, fd: int, sock: socket.socket, watch: _Watch) -> None:
        """The socket is readable: end-of-file or a reset means the client left."""
        try:
            gone = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            gone = True
        with watch.lock:
            if not watch.active:
                return
            watch.active = False
            self._unregister(fd)  # gone, or pipelined bytes: either way nothing more to see here
            if gone:
                try:
                    watch.on_gone()
                except Exception:
                    log.exception("ending the upstream call of a departed client failed")
