"""``stockyard serve``: run the proxy until SIGTERM/SIGINT/SIGHUP, then shut down cleanly."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import config
from ..logbuffer import BatchedStreamHandler
from ..operations import providers as provider_ops
from ..store import db, pgpool
from ..store.lock import DatabaseBusy
from .common import CommandError, runs

CUT_WAIT_S = 5.0  # after the drain: how long requests ended by App.cut_in_flight get to record their traces
# the connections queued when the stop came (server.answer_backlog): how long their requests may take to
# arrive and be answered (a 503) within the grace; one that sent nothing by then is closed at the exit
BACKLOG_WAIT_S = 2.0

if TYPE_CHECKING:
    from ..workers import Worker


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the proxy server",
        description="Run the proxy until SIGTERM or Ctrl-C. Point your SDK at "
        "http://HOST:PORT/v1. Listening on anything but a loopback "
        "address requires STOCKYARD_ADMIN_KEY.",
    )
    p.add_argument("--host", help="listen address (default: $STOCKYARD_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: $STOCKYARD_PORT or 4200)")
    p.add_argument(
        "--snapshot",
        metavar="PATH",
        help="keep a consistent copy of the database at PATH, safe for cron to cp "
        "(default: $STOCKYARD_SNAPSHOT; off when unset)",
    )
    p.add_argument(
        "--snapshot-every",
        metavar="DURATION",
        help="how often to refresh the snapshot, e.g. 30s, 15m, 1h (default: $STOCKYARD_SNAPSHOT_EVERY or 15m)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="apply this configuration file (stockyard config apply) before serving; a bad file stops the start",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the port, for more than one core (default: $STOCKYARD_WORKERS or 1)",
    )
    runs(p, run)


def setup_logging(batched: bool = True, tag: str = "") -> None:
    """Log lines to stderr; a group's parent logs unbatched (no thread: it forks the workers),
    and each worker's lines carry its tag (``[w1]``)."""
    handler: logging.Handler = (
        BatchedStreamHandler(sys.stderr, tag=tag).install() if batched else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname).1s {tag}%(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("stockyard")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def preload() -> None:
    """Import every module and read every data file now: the pyz is read by the offsets of the
    directory parsed at start, so a pyz written over in place during an upgrade would break an
    import (or a data file read) made later by the running server, or by a ``--workers`` group's
    worker started again (forked from this process: what is read here it never reads)."""
    import importlib
    import pkgutil

    import stockyard

    for info in pkgutil.walk_packages(stockyard.__path__, "stockyard."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    from .. import ui
    from ..pricing import PriceTable

    ui.files()  # and the console's files, for the same reason
    PriceTable.load()  # and what a worker started again reads: the price table, the migrations
    for dialect in ("sqlite", "postgresql"):
        db.available_migrations(dialect)


def run(args: argparse.Namespace) -> int:
    preload()
    settings = config.load(
        {
            "host": args.host,
            "port": args.port,
            "db": args.db,
            "snapshot": args.snapshot,
            "snapshot_every": args.snapshot_every,
            "workers": args.workers,
        }
    )
    refusal = (
        config.exposure_problem(settings)
        or config.admin_key_problem(settings)
        or provider_ops.env_url_problem(os.environ)
    )
    if refusal:  # before the database is touched: nothing starts
        raise CommandError(refusal)
    # A file-size limit (ulimit -f, systemd LimitFSIZE) must behave like a full disk: writes
    # fail, the proxy keeps serving and /readyz says so. By default SIGXFSZ kills the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    db.set_busy_timeout(settings.busy_timeout_ms)  # before any connection opens (workers inherit it)
    pgpool.configure(settings.pg_connections, settings.busy_timeout_ms)
    if settings.workers > 1:
        return run_group(settings, args.config)
    setup_logging()
    return serve(settings, args.config)


def run_group(settings: config.Settings, config_file: str | None) -> int:
    """``--workers N``: the parent of N worker processes (:mod:`stockyard.workers`)."""
    from ..store.backends import SqliteBackend
    from ..workers import CannotListen, Group

    setup_logging(batched=False)

    def run_worker(worker: Worker) -> int:
        setup_logging(tag=f"[w{worker.index}] ")
        group = SqliteBackend(settings.db_path, group=worker.folder) if settings.db_url is None else None
        try:  # --config once, by worker 0 before the others start (not again on a restart)
            return serve(settings, config_file if worker.first else None, backend=group, worker=worker)
        except CommandError as exc:
            logging.getLogger("stockyard").error("%s", exc)
            return 1

    try:
        return Group(settings, run_worker).run()
    except (DatabaseBusy, CannotListen) as exc:
        raise CommandError(str(exc)) from None


def serve(
    settings: config.Settings,
    config_file: str | None,
    *,
    backend: Any = None,
    worker: "Worker | None" = None,
) -> int:
    """One server until SIGTERM/SIGINT/SIGHUP: the whole process, or a :class:`~stockyard.workers.Worker`
    of a group (on the socket its parent bound; the parent is told once it serves)."""
    from ..app import App
    from ..cpupin import keep_on_one_cpu
    from ..metrics import render_own
    from ..server import make_server
    from ..workers import STOP_SIGNALS, ignore_stop_signals

    log = logging.getLogger("stockyard")
    try:
        app = App(settings, backend=backend, worker=None if worker is None else worker.index)
    except DatabaseBusy as exc:
        raise CommandError(str(exc)) from None
    stopped = threading.Event()
    if worker is not None:
        app.group_metrics = worker.metrics
        worker.metrics.start(lambda: render_own(app), stopped)
    if config_file:
        from .. import audit
        from .config import apply_file

        try:
            apply_file(app.ops(audit.actor_cli()), config_file)
        except CommandError:
            app.close()
            raise
    try:
        server = make_server(app, None if worker is None else worker.sock)
    except OSError as exc:
        app.close()
        raise CommandError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    stop_once = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop_once.is_set():
            return
        stop_once.set()
        log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
        server.draining = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in STOP_SIGNALS:  # before the banner: a supervisor that saw it may stop the server at once
        signal.signal(sig, on_signal)
    host, port = server.server_address[:2]
    if worker is None or worker.index == 0:  # the parent says where a group listens
        banner(log, app, str(host), int(port), listening=worker is None)
    pin = keep_on_one_cpu(settings.cpu_pin, None if worker is None else worker.index)
    if worker is not None:
        worker.ready()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stopped.set()
        if pin is not None:
            pin.stop()
        grace_ends = time.monotonic() + settings.shutdown_grace_s
        queued = server.answer_backlog() if server.draining else []  # answered, not reset; then no more come
        if worker is None:  # a worker's socket is its parent's to close
            server.server_close()
        server.wait_served(queued, min(BACKLOG_WAIT_S, settings.shutdown_grace_s))
        if not server.wait_idle(max(0.0, grace_ends - time.monotonic())):
            log.warning(
                "%d requests still in flight after %gs: ending them (their clients get an error; traces kept)",
                server.active,
                settings.shutdown_grace_s,
            )
            app.cut_in_flight()
            if not server.wait_idle(CUT_WAIT_S / 2):  # the cut ones write their error events, then
                server.cut_connections()  # any still writing to a client that stopped reading
                if not server.wait_idle(CUT_WAIT_S / 2):
                    log.warning("gave up waiting for %d in-flight requests", server.active)
        app.close()
        log.info("stopped; database closed")
        for handler in logging.getLogger("stockyard").handlers:
            handler.flush()
        ignore_stop_signals()
    return 0


def banner(log: logging.Logger, app, host: str, port: int, listening: bool = True) -> None:
    """The start-up lines (a group's parent says where it listens once every worker is ready)."""
    s = app.settings
    if listening:
        log.info(
            "stockyard %s listening on http://%s:%d (OpenAI base_url http://%s:%d/v1)",
            app.version,
            host,
            port,
            host,
            port,
        )
    log.info(
        "database %s%s",
        s.database,
        f" (applied migrations: {', '.join(str(m.version) for m in app.migrations_applied)})"
        if app.migrations_applied
        else "",
    )
    (log.info if app.auth_required else log.warning)("%s", app.auth_description())
    if app.snapshots is not None:
        log.info(
            "snapshot %s every %s (safe to copy at any time)", app.snapshots.path, _duration_text(s.snapshot_every_s)
        )
    if app.retention.configured:
        parts = []
        if s.retention_bodies_s:
            parts.append(f"bodies {_duration_text(s.retention_bodies_s)}")
        if s.retention_traces_s:
            parts.append(f"traces {_duration_text(s.retention_traces_s)}")
        if s.bodies_max_bytes:
            parts.append(f"bodies at most {s.bodies_max_bytes // (1024 * 1024)} MB")
        log.info("retention: %s", ", ".join(parts))
    providers = app.registry().providers
    if providers:
        log.info(
            "providers: %s",
            ", ".join(f"{p.name} ({p.source}{', key cannot be decrypted' if p.key_error else ''})" for p in providers),
        )
    else:
        log.warning("no providers configured: set OPENAI_API_KEY or another provider's variables")


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
