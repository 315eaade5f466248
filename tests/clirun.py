"""``stockyard`` commands for the tests, each in a process of its own, without paying for the imports.

``python3 stockyard.pyz keys list`` spends ~0.25 s importing the pyz before it does anything, and
the suite runs ~600 commands. Here a process that imported the pyz once (``cli_forkserver.py``,
one per concurrent caller, kept for reuse) forks a child for each command: the child gets the
environment, working folder and stdin/stdout/stderr asked for, runs the pyz's own code, and exits
as the interpreter ends a command (atexit, logging, threads). Servers start the same way (~180
starts, each ~0.4 s of import CPU spared): the fork server imported every module, as ``serve`` does
before it listens. The entry point itself (``python3 stockyard.pyz``) is run as it is by the tests
of the pyz and of a server's start (``ServerProcess(..., spawned=True)``).

``run(pyz, args, env, ...)`` answers as ``subprocess.run(..., capture_output=True, text=True)``;
``spawn(pyz, args, env)`` starts a server and answers a ``Forked``, handled as ``subprocess.Popen``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = Path(__file__).with_name("cli_forkserver.py")


class ForkServer:
    def __init__(self, pyz: Path, env: dict[str, str]) -> None:
        self.pyz = pyz
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(pyz)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.pending = b""

    def line(self, timeout: float | None) -> dict | None:
        """The next answer, or None if none came within ``timeout`` seconds (None: wait for it)."""
        assert self.proc.stdout is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the fork server of {self.pyz} ended (exit {self.proc.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def start(self, args: list[str], env: dict[str, str], files: dict[str, str]) -> dict:
        """Fork a child running ``args``; its first answer: ``{"pid": N}``, or ``{"code": N}`` if
        it ended before it opened its files."""
        assert self.proc.stdin is not None
        request = {"argv": args, "env": env, "cwd": os.getcwd(), **files}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        started = self.line(30)
        assert started is not None, "the fork server did not start the command"
        return started

    def run(
        self, args: list[str], env: dict[str, str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="cli-") as tmp:
            files = {name: os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")}
            if input is None:
                files["stdin"] = ""
            else:
                Path(files["stdin"]).write_text(input)
            started = self.start(args, env, files)
            ended = self.line(timeout) if "pid" in started else started
            if ended is None:
                os.kill(started["pid"], signal.SIGKILL)
                self.line(30)
                raise subprocess.TimeoutExpired([sys.executable, str(self.pyz), *args], timeout)
            out, err = (Path(files[n]).read_text(errors="replace") for n in ("stdout", "stderr"))
        return subprocess.CompletedProcess([sys.executable, str(self.pyz), *args], ended["code"], out, err)


class Forked:
    """A long-running child of a fork server (a server's ``serve``), handled as ``subprocess.Popen``
    handles a spawned one: ``pid``, ``stdout`` (its output and errors, as text lines), ``poll``,
    ``wait``, ``send_signal``, ``terminate``, ``kill``, ``returncode``. The fork server goes back to
    the idle ones when the child ended."""

    def __init__(self, server: ForkServer, args: list[str], env: dict[str, str]) -> None:
        self.args = [sys.executable, str(server.pyz), *args]
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._folder = tempfile.TemporaryDirectory(prefix="serve-")
        log = os.path.join(self._folder.name, "log")
        os.mkfifo(log, 0o600)
        # Opened before the child exists (a FIFO's writer waits for a reader); blocking again once
        # the child said it holds the writing end, so the reader sees the end only when it exits.
        reading = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
        started = server.start(args, env, {"stdin": "", "stdout": log, "stderr": log})
        os.set_blocking(reading, True)
        self.stdout = open(reading, encoding="utf-8", errors="replace")
        self.pid = started.get("pid", 0)
        if "code" in started:
            self._end(server, started["code"])
        else:
            threading.Thread(target=self._wait, args=(server,), daemon=True).start()

    def _wait(self, server: ForkServer) -> None:
        try:
            ended = server.line(None)
        except RuntimeError:
            ended = None
        self._end(server if ended else None, ended["code"] if ended else -signal.SIGKILL)

    def _end(self, server: ForkServer | None, code: int) -> None:
        self.returncode = code
        self._folder.cleanup()
        self._ended.set()
        if server is not None:
            _release(server)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # it ended; its end is on its way from the fork server

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_idle: dict[Path, list[ForkServer]] = {}
_lock = threading.Lock()


def _take(pyz: Path, env: dict[str, str]) -> ForkServer:
    """An idle fork server of ``pyz``, or a new one."""
    with _lock:
        idle = _idle.setdefault(pyz, [])
        server = idle.pop() if idle else None
    return server or ForkServer(pyz, env)


def _release(server: ForkServer) -> None:
    with _lock:
        _idle[server.pyz].append(server)


def run(
    pyz: Path, args: list[str], env: dict[str, str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python3 PYZ ARGS`` with exactly ``env`` as its environment; stdout and stderr as text."""
    server = _take(Path(pyz).resolve(), env)
    try:
        done = server.run([str(a) for a in args], dict(env), input, timeout)
    except BaseException:
        server.proc.kill()
        server.proc.wait()
        raise
    _release(server)
    return done


def spawn(pyz: Path, args: list[str], env: dict[str, str]) -> Forked:
    """``python3 PYZ ARGS`` (a server) running beside the caller, its output and errors on ``stdout``."""
    server = _take(Path(pyz).resolve(), env)
    try:
        return Forked(server, [str(a) for a in args], dict(env))
    except BaseException:
        server.proc.kill()
        server.proc.wait()
        raise
