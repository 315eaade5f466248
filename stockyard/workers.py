"""``serve --workers N``: N server processes on one port, supervised by a parent.

One CPython process serves on about one core. Here the parent binds the port, then forks N
workers that each run a whole server (``App`` + ``StockyardHTTPServer``) on a listening socket
of their own, all bound to the port with ``SO_REUSEPORT``: the kernel spreads new connections
over the sockets evenly. Measured here with 64 keep-alive clients, one socket shared by both
workers split the work anywhere from 40/60 to 10/90 (whichever worker wakes first takes a
burst of connections, and keeps them), reuseport 45/55 to 50/50. The parent keeps every socket
open, so connections queued at a worker that dies wait for its replacement instead of being
reset; a worker that stops on a signal answers what is queued at its socket and stops it
listening (``server.answer_backlog``), and a replacement then gets a new one. A plain bind
comes first, so a port already in use is refused as a single server's is.

The parent owns what a single server owned: the database lock (``store/lock.py``; a second
``serve`` on the file is still refused; the workers share the lock through the parent), the
migrations (run before any worker starts), and signals: SIGTERM/SIGINT/SIGHUP stop every worker,
which finishes its requests in flight and flushes its writer, and the parent exits when all
have (0 when they all did cleanly; a stop during start-up starts no more workers, and a worker
ended by it before it served counts as clean). A worker that dies is replaced (at once if it had run
``QUICK_S``, else after a wait that doubles with each such quick death in a row); one that cannot
start stops the group, at the group's start or after ``QUICK_FAILURES`` quick deaths in a row before
it served (one that served was ended by something else, a client perhaps: it never stops the group,
and waits longer only after ``QUICK_FAILURES`` quick deaths in a row, up to ``SERVED_WAIT_MAX_S``).

State the workers must agree on, and where it lives (the database is read and written by every
worker, each with its own writer thread; SQLite's ``BEGIN IMMEDIATE`` and busy timeout serialize
their write transactions):

- budgets and rate limits: the parent keeps them in memory, as one server does, and the workers
  call it (:mod:`stockyard.groupstate`: one line of JSON a call over a Unix socket in the
  group's private folder). Measured (bench/workers.py, 2 cores shared with the load generator):
  the parent spends about 0.14 ms of CPU per request whose key has a budget and a limit (four
  calls), and a group of 2 serves such keys at about one process's rate. The design before, the
  tables PostgreSQL replicas use in an SQLite file of the group's own (each step a transaction
  serialized across the workers), cost about 1.2 ms per such request in a group and served them
  at 0.6x one process.
- the audit chain: appended inside the writers' ``BEGIN IMMEDIATE`` transactions, one chain.
- configuration: every worker's watcher notices other processes' commits (``data_version``) and
  reloads within ``WATCH_EVERY_S``; the cache is already a table.
- duties done once for all (snapshots, retention, the webhook checks) run in worker 0 only.
- ``/metrics``: counters live in each worker's memory, so any worker answers a scrape with every
  worker's series, each labelled ``worker`` (:class:`GroupMetrics`: the others' as published at
  most a second ago); ``sum without (worker) (rate(...))`` is the group's. The answering worker
  says who it is in ``x-stockyard-worker``.

On PostgreSQL, workers are simply replicas on one machine (no lock held by the parent).
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .budgets import Budget, ledger_spend_uc
from .config import Settings
from .groupstate import StateServer
from .store import backend_for
from .store.backends import SqliteBackend

log = logging.getLogger("stockyard")

# A worker that dies within QUICK_S of its start is started again after RESTART_WAIT_S, twice as long
# each time it does so again; QUICK_FAILURES such deaths in a row stop the group (exit 1): a worker
# that cannot start (a setting only it reads, no descriptors, a database it cannot open) must
# neither loop forever nor leave the group half up with a line a second in the log.
RESTART_WAIT_S = 1.0
QUICK_S = 10.0
QUICK_FAILURES = 5
# A worker that served, then died within QUICK_S of its start (a fault after start, or a client
# that can end a worker) never stops the group: it is started again after RESTART_WAIT_S the first
# QUICK_FAILURES times in a row, then after a wait that doubles up to SERVED_WAIT_MAX_S, so a fault
# after start costs a restart a minute (its CPU, its log line), not one a second for good.
SERVED_WAIT_MAX_S = 60.0
PUBLISH_EVERY_S = 1.0  # how often a worker publishes its metrics to the others
STOP_WAIT_S = 60.0  # after SIGTERM, workers get this long (beyond twice their grace) before SIGKILL
# What stops a server (or a group) cleanly: SIGHUP too, the terminal of a foreground serve closing
# (or a kill -HUP), which by default would kill it at once with traces still queued.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignore_stop_signals() -> None:
    """Once a server (or a group's parent) has stopped: a stop signal after this is ignored. Python
    puts a handler's signal back to its default action as the interpreter finalises, so a second
    SIGTERM arriving then (a supervisor's, sent again) killed a process that was exiting cleanly, and
    its supervisor saw a signal death (-15) instead of 0; an ignored signal stays ignored."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@dataclass
class Worker:
    """What a forked worker gets from its parent."""

    index: int
    folder: Path  # the group's private folder (its shared state's socket: groupstate.StateClient)
    sock: socket.socket  # its listening socket
    first: bool  # the group's first start, not a restart (worker 0 applies --config then)
    metrics: "GroupMetrics"
    ready: Callable[[], None]  # tell the parent it serves


WorkerMain = Callable[[Worker], int]  # runs in the forked worker: its exit code


class CannotListen(Exception):
    """The group's address cannot be bound."""


def listen(settings: Settings, count: int) -> list[socket.socket]:
    """One listening socket per worker, all on the group's port (``SO_REUSEPORT``).

    A plain bind first: a port that anything else listens on (a second group included,
    whose sockets would otherwise join this one's) is refused as a single server's is."""
    probe = _bind(settings.host, settings.port, reuse_port=False)
    port = probe.getsockname()[1]  # --port 0: the port the system chose
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(_listening(settings.host, port))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    from .server import StockyardHTTPServer

    sock = socket.socket(StockyardHTTPServer.address_family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _listening(host: str, port: int) -> socket.socket:
    """A socket of the group's on its port (``SO_REUSEPORT``), listening."""
    from .server import StockyardHTTPServer

    sock = _bind(host, port, reuse_port=True)
    sock.listen(StockyardHTTPServer.request_queue_size)
    return sock


def _still_listening(sock: socket.socket) -> bool:
    """False once a worker stopped listening on it at its stop (``server.answer_backlog``)."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


class Group:
    """The parent: starts the workers, replaces those that die, stops them all on a signal."""

    def __init__(self, settings: Settings, main: WorkerMain) -> None:
        self.settings = settings
        self.main = main
        self.socks: list[socket.socket] = []  # one per worker, kept open here across restarts
        self.port = 0  # the group's port, once bound
        self.folder = ""  # the group's private folder (GroupMetrics)
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # index -> monotonic time of its last start
        self.due: dict[int, float] = {}  # index -> when to start it again (after a quick death)
        self.quick_deaths: dict[int, int] = {}  # index -> its deaths in a row within QUICK_S of its start
        self.served_deaths: dict[int, int] = {}  # index -> the same for deaths after it served
        self.ready: set[int] = set()  # workers serving now
        self.up = False  # every worker has been ready once (the group started)
        self.stopping = False
        self.failed = False  # a worker stopped uncleanly on the way out
        self._wake_r, self._wake_w = os.pipe()  # signals wake the loop (signal.set_wakeup_fd)
        self._ready_r, self._ready_w = os.pipe()  # a worker writes its index when it serves
        self._selector = selectors.DefaultSelector()  # the loop: signals, ready workers, state calls
        self.state: StateServer | None = None  # SQLite: the workers' budgets and rate windows

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT/SIGHUP; the database lock is held from here to the end."""
        backend = backend_for(self.settings.database)
        group_lock = backend.server_lock()  # DatabaseBusy: another server has this file
        try:
            backend.open_and_migrate()
            self.socks = listen(self.settings, self.settings.workers)
            self.port = self.socks[0].getsockname()[1]  # --port 0: the one the system chose
            self.folder = tempfile.mkdtemp(prefix="stockyard-workers-")  # private (0700): metrics, state
            try:
                if isinstance(backend, SqliteBackend):
                    self.state = StateServer(
                        self.folder,
                        spend_loader(backend),
                        self.settings.budget_warn_percent,
                        lambda: backend.connect(readonly=True),
                    )
                return self._supervise()
            finally:
                if self.state is not None:
                    self.state.close()
                shutil.rmtree(self.folder, ignore_errors=True)
                for sock in self.socks:
                    sock.close()
        finally:
            group_lock.release()

    # -- the loop -------------------------------------------------------------------------
    def _supervise(self) -> int:
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.set_blocking(fd, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector.register(self._ready_r, selectors.EVENT_READ, None)
        if self.state is not None:
            self.state.attach(self._selector)  # the workers' calls are answered in this loop
        signal.set_wakeup_fd(self._wake_w)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the loop
        self._start(0)  # worker 0 first: it applies --config before the others read it
        while True:
            self._reap()
            if self.stopping and not self.pids:
                ignore_stop_signals()
                return 1 if self.failed else 0
            self._read_ready()
            if not self.stopping:
                self._start_due()
            for key, _ in self._selector.select(self._timeout()):
                if key.data is not None:
                    key.data()
            if self.state is not None:
                self.state.wake()  # its accepting rested (out of descriptors) long enough
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass

    def _timeout(self) -> float | None:
        """How long the loop may wait for an event: until a worker is due to start, or the shared
        state's accepting is due to resume."""
        times = list(self.due.values())
        if self.state is not None and self.state.resting_until is not None:
            times.append(self.state.resting_until)
        return max(0.0, min(times) - time.monotonic()) if times else None

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
        # a worker may take the grace for its requests, then the grace again for its writer (Writer.stop)
        timer = threading.Timer(2 * self.settings.shutdown_grace_s + STOP_WAIT_S, self._kill_all)
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
            if self.state is not None:
                self.state.forget(pid, resync=not self.stopping)  # its holds go back; the spend is reloaded
            code = os.waitstatus_to_exitcode(status)
            served = index in self.ready
            self.ready.discard(index)
            if self.stopping:
                self.failed = self.failed or not _stopped_cleanly(code, served)
                continue
            if not self.up:  # the group never started: stop the others, exit 1
                self.failed = True
                self._stop(f"worker {index} could not start (exit status {code})")
                continue
            self._restart(index, pid, code, served)

    def _restart(self, index: int, pid: int, code: int, served: bool) -> None:
        """Start a worker that died again: at once if it had run a while, else after a wait that
        doubles with each quick death in a row; at ``QUICK_FAILURES`` of them, stop the group. Only a
        worker that died before it served counts (it cannot start): one that served was ended by
        something else (the OOM killer, a kill, a fault after start), which a client may cause as each
        replacement comes up, so it never stops the group (``SERVED_WAIT_MAX_S`` says how it waits)."""
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        quick = time.monotonic() - self.started[index] < QUICK_S
        deaths = self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if quick and not served else 0
        again = self.served_deaths[index] = self.served_deaths.get(index, 0) + 1 if quick and served else 0
        if deaths >= QUICK_FAILURES:
            self.failed = True
            log.error(
                "worker %d (pid %d) %s: it died within %gs of its start %d times in a row (its lines above say "
                "why); stopping the group, which cannot serve as configured",
                index,
                pid,
                how,
                QUICK_S,
                deaths,
            )
            self._stop(f"worker {index} cannot start")
            return
        wait = _restart_wait(deaths, again)
        log.error("worker %d (pid %d) %s: starting a new one in %gs", index, pid, how, wait)
        self.due[index] = time.monotonic() + wait

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 512)
        except BlockingIOError:
            return
        self.ready.update(data)
        if self.stopping:  # a stop came first: start no one it was not passed on to
            return
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
        if not _still_listening(self.socks[index]):  # its last worker was stopped alone (a SIGTERM of its own)
            self.socks[index].close()
            try:
                self.socks[index] = _listening(self.settings.host, self.port)
            except (CannotListen, OSError) as exc:
                self.failed = True
                self._stop(f"worker {index} cannot be started again: {exc}")
                return
        # The stop signals wait while the worker is forked: until it has put them back to their default
        # action, one sent to it (the parent's stop, as it forks) ran the parent's handler in it — and
        # was lost: the worker went on to serve, and the group's stop waited for the kill a minute later.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.pids[pid] = index
            return
        code = 1  # the worker: never returns into the parent's loop
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop signal sent meanwhile ends it now
            for fd in (self._wake_r, self._wake_w, self._ready_r):
                os.close(fd)
            self._selector.close()
            if self.state is not None:
                self.state.close()  # the parent's end of the shared state: the worker calls it
            _watch_parent(os.getppid())

            def ready() -> None:
                os.write(self._ready_w, bytes([index]))

            metrics = GroupMetrics(self.folder, index, self.settings.workers)
            code = self.main(Worker(index, Path(self.folder), self.socks[index], not self.up, metrics, ready))
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            for handler in logging.getLogger("stockyard").handlers:
                handler.flush()
            os._exit(code)


class GroupMetrics:
    """``/metrics`` for the whole group from any worker: each worker publishes its own metrics to
    a file in the group's private folder every ``PUBLISH_EVERY_S``; the worker that answers a
    scrape renders its own fresh and adds the others' latest, every series labelled with its
    ``worker``. So one scrape sees every worker (Prometheus: ``sum without (worker) (...)``);
    another worker's series are at most that old."""

    def __init__(self, folder: str, worker: int, workers: int) -> None:
        self.folder, self.worker, self.workers = folder, worker, workers

    def start(self, render: Callable[[], str], stopping: threading.Event) -> None:
        def publish() -> None:
            while not stopping.wait(PUBLISH_EVERY_S):
                try:
                    path = os.path.join(self.folder, f"{self.worker}.prom")
                    with open(path + ".tmp", "w") as out:
                        out.write(render())
                    os.replace(path + ".tmp", path)
                except Exception as exc:  # a scrape shows this worker's series as they last were
                    log.warning("metrics of worker %d not published: %s", self.worker, exc)

        threading.Thread(target=publish, name="stockyard-metrics", daemon=True).start()

    def combine(self, own: str) -> str:
        texts = {self.worker: own}
        for index in range(self.workers):
            if index != self.worker:
                try:
                    with open(os.path.join(self.folder, f"{index}.prom")) as published:
                        texts[index] = published.read()
                except OSError:
                    pass  # not published yet
        return merge(texts)


_SAMPLE = re.compile(r"^([^{ ]+)(?:\{(.*)\})? (\S+)$")


def merge(texts: dict[int, str]) -> str:
    """Prometheus texts of several workers as one: a family's HELP and TYPE once, then the
    samples of every worker (a family's samples must be together), each labelled ``worker``."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for worker, text in sorted(texts.items()):
        family = ""
        for line in text.split("\n"):  # only \n ends a line in the text format (splitlines also splits at U+2028)
            if line.startswith("# "):
                family = line.split(" ", 3)[2]
                head, _ = families.setdefault(family, ([], []))
                if line not in head:
                    head.append(line)
            elif line:
                sample = _SAMPLE.match(line)
                if sample is None:
                    continue
                name, labels, value = sample.groups()
                labelled = f'worker="{worker}"' + (f",{labels}" if labels else "")
                families.setdefault(family, ([], []))[1].append(f"{name}{{{labelled}}} {value}")
    return "".join(line + "\n" for head, samples in families.values() for line in head + samples)


def spend_loader(backend: SqliteBackend) -> Callable[[Budget, str], int]:
    """A budget period's spend so far, as one server's ledger loads it (``ledger_spend_uc``: the
    rollups and the unbilled batches' holds); the group's ledger loads each period once."""

    def load(budget: Budget, period_key: str) -> int:
        conn = backend.connect(readonly=True)
        try:
            return ledger_spend_uc(conn, budget, period_key)
        finally:
            conn.close()

    return load


def _watch_parent(parent: int) -> None:
    """A worker whose parent died (kill -9) stops as on SIGTERM: no orphan keeps serving."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stockyard-parent", daemon=True).start()


def _restart_wait(deaths: int, again: int) -> float:
    """Seconds before a dead worker starts again, from its quick deaths in a row before it served
    (``deaths``) or after (``again``); none of either: it had run a while, start it at once."""
    if deaths:
        return RESTART_WAIT_S * 2 ** (deaths - 1)
    if again:
        return min(SERVED_WAIT_MAX_S, RESTART_WAIT_S * 2 ** max(0, again - QUICK_FAILURES))
    return 0.0


def _stopped_cleanly(code: int, served: bool) -> bool:
    """Whether a worker that exited during the group's stop ended as it should: with 0, or ended
    by the stop signal itself before it served (a worker still starting has the default SIGTERM
    disposition; it had no request in flight and no trace queued)."""
    return code == 0 or (not served and -code in STOP_SIGNALS)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
