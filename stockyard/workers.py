"""``serve --workers N``: N server processes on one port, supervised by a parent.

One CPython process serves on about one core. Here the parent binds the port, then forks N
workers that each run a whole server (``App`` + ``StockyardHTTPServer``) on a listening socket
of their own, all bound to the port with ``SO_REUSEPORT``: the kernel spreads new connections
over the sockets evenly. Measured here with 64 keep-alive clients, one socket shared by both
workers split the work anywhere from 40/60 to 10/90 (whichever worker wakes first takes a
burst of connections, and keeps them), reuseport 45/55 to 50/50. The parent keeps every socket
open, so connections queued at a worker that dies wait for its replacement instead of being
reset. A plain bind comes first, so a port already in use is refused as a single server's is.

The parent owns what a single server owned: the database lock (``store/lock.py``; a second
``serve`` on the file is still refused; the workers share the lock through the parent), the
migrations (run before any worker starts), and signals: SIGTERM/SIGINT go to every worker,
which finishes its requests in flight and flushes its writer, and the parent exits when all
have (0 when they all did cleanly). A worker that dies is replaced (within a second; at once
unless it had just started); one that cannot start stops the group.

State the workers must agree on lives in the database, which every worker reads and writes
(each with its own writer thread; SQLite's ``BEGIN IMMEDIATE`` and busy timeout serialize the
small write transactions of all of them):

- budgets and rate limits: on SQLite the workers use the shared ledger and rate buckets of
  ``store/shared.py`` (the tables PostgreSQL replicas use), each admission a short write
  transaction, instead of one process's memory. That costs a write per request with a budget
  or limit, which the second core more than pays for; the in-memory ledger stays for one
  process. The parent empties those tables at start (spend is loaded from the rollups again).
- the audit chain: appended inside the writers' ``BEGIN IMMEDIATE`` transactions, one chain.
- configuration: every worker's watcher notices other processes' commits (``data_version``) and
  reloads within ``WATCH_EVERY_S``; the cache is already a table.
- duties done once for all (snapshots, retention, the webhook checks) run in worker 0 only.
- ``/metrics`` is per worker (in memory): a scrape sees the counters of the worker that answered
  it, with ``stockyard_worker`` saying which; sum per-worker series in Prometheus (or scrape
  with one worker).

On PostgreSQL, workers are simply replicas on one machine (no lock held by the parent).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from typing import Callable

from .config import Settings
from .store import backend_for
from .store.backends import SqliteBackend
from .store.shared import reset

log = logging.getLogger("stockyard")

RESTART_WAIT_S = 1.0  # a worker that dies within this of its start is restarted after this long
STOP_WAIT_S = 60.0  # after SIGTERM, workers get this long (beyond their own grace) before SIGKILL

# (index, listening socket, ready callback, first start of the group) -> exit code; runs in the
# forked worker.
WorkerMain = Callable[[int, socket.socket, Callable[[], None], bool], int]


class CannotListen(Exception):
    """The group's address cannot be bound."""


def listen(settings: Settings, count: int) -> list[socket.socket]:
    """One listening socket per worker, all on the group's port (``SO_REUSEPORT``).

    A plain bind first: a port that anything else listens on (a second group included,
    whose sockets would otherwise join this one's) is refused as a single server's is."""
    from .server import StockyardHTTPServer

    def bind(port: int, reuse_port: bool) -> socket.socket:
        sock = socket.socket(StockyardHTTPServer.address_family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((settings.host, port))
        except OSError as exc:
            sock.close()
            raise CannotListen(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
        return sock

    probe = bind(settings.port, reuse_port=False)
    port = probe.getsockname()[1]  # --port 0: the port the system chose
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(bind(port, reuse_port=True))
            socks[-1].listen(StockyardHTTPServer.request_queue_size)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Group:
    """The parent: starts the workers, replaces those that die, stops them all on a signal."""

    def __init__(self, settings: Settings, main: WorkerMain) -> None:
        self.settings = settings
        self.main = main
        self.socks: list[socket.socket] = []  # one per worker, kept open here across restarts
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # index -> monotonic time of its last start
        self.due: dict[int, float] = {}  # index -> when to start it again (after a quick death)
        self.ready: set[int] = set()  # workers serving now
        self.up = False  # every worker has been ready once (the group started)
        self.stopping = False
        self.failed = False  # a worker stopped uncleanly on the way out
        self._wake_r, self._wake_w = os.pipe()  # signals wake the loop (signal.set_wakeup_fd)
        self._ready_r, self._ready_w = os.pipe()  # a worker writes its index when it serves

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the database lock is held from here to the end."""
        backend = backend_for(self.settings.database)
        group_lock = backend.server_lock()  # DatabaseBusy: another server has this file
        try:
            backend.open_and_migrate()
            if isinstance(backend, SqliteBackend):
                conn = backend.connect()
                try:
                    reset(conn)
                finally:
                    conn.close()
            self.socks = listen(self.settings, self.settings.workers)
            try:
                return self._supervise()
            finally:
                for sock in self.socks:
                    sock.close()
        finally:
            group_lock.release()

    # -- the loop -------------------------------------------------------------------------
    def _supervise(self) -> int:
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the loop
        self._start(0)  # worker 0 first: it applies --config before the others read it
        while True:
            self._reap()
            if self.stopping and not self.pids:
                return 1 if self.failed else 0
            self._read_ready()
            if not self.stopping:
                self._start_due()
            timeout = None if not self.due else max(0.0, min(self.due.values()) - time.monotonic())
            select.select([self._wake_r, self._ready_r], [], [], timeout)
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop(f"received {signal.Signals(signum).name}")

    def _stop(self, why: str) -> None:
        """SIGTERM to every worker (each finishes its requests in flight); the loop ends when all exited."""
        if self.stopping:
            return
        log.info("%s: stopping %d workers", why, len(self.pids))
        self.stopping = True
        self.due.clear()
        for pid in list(self.pids):
            _signal(pid, signal.SIGTERM)
        timer = threading.Timer(self.settings.shutdown_grace_s + STOP_WAIT_S, self._kill_all)
        timer.daemon = True
        timer.start()

    def _kill_all(self) -> None:
        """Workers still alive long after SIGTERM: a hang must not keep the group (and the lock) forever."""
        for pid in list(self.pids):
            log.error("worker pid %d did not stop: killing it", pid)
            _signal(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self.ready.discard(index)
            if self.stopping:
                self.failed = self.failed or code != 0
                continue
            if not self.up:  # the group never started: stop the others, exit 1
                self.failed = True
                self._stop(f"worker {index} could not start (exit status {code})")
                continue
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            log.error("worker %d (pid %d) %s: starting a new one", index, pid, how)
            quick = time.monotonic() - self.started[index] < RESTART_WAIT_S
            self.due[index] = time.monotonic() + (RESTART_WAIT_S if quick else 0.0)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 512)
        except BlockingIOError:
            return
        self.ready.update(data)
        if 0 in self.ready and len(self.started) == 1:  # worker 0 applied --config: start the rest
            for index in range(1, self.settings.workers):
                self._start(index)
        if not self.up and len(self.ready) == self.settings.workers:
            self.up = True
            from . import __version__

            host, port = self.socks[0].getsockname()[:2]
            log.info(
                "stockyard %s listening on http://%s:%d (OpenAI base_url http://%s:%d/v1) with %d workers",
                __version__,
                host,
                port,
                host,
                port,
                self.settings.workers,
            )

    def _start_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self.due.items()):
            if when <= now:
                del self.due[index]
                self._start(index)

    def _start(self, index: int) -> None:
        self.started[index] = time.monotonic()
        pid = os.fork()
        if pid:
            self.pids[pid] = index
            return
        code = 1  # the worker: never returns into the parent's loop
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for fd in (self._wake_r, self._wake_w, self._ready_r):
                os.close(fd)
            _watch_parent(os.getppid())

            def ready() -> None:
                os.write(self._ready_w, bytes([index]))

            code = self.main(index, self.socks[index], ready, not self.up)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            for handler in logging.getLogger("stockyard").handlers:
                handler.flush()
            os._exit(code)


def _watch_parent(parent: int) -> None:
    """A worker whose parent died (kill -9) stops as on SIGTERM: no orphan keeps serving."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stockyard-parent", daemon=True).start()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
