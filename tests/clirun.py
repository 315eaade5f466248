"""``stockyard`` commands for the tests, each in a process of its own, without paying for the imports.

``python3 stockyard.pyz keys list`` spends ~0.25 s importing the pyz before it does anything, and
the suite runs ~600 commands. Here a process that imported the pyz once (``cli_forkserver.py``,
one per concurrent caller, kept for reuse) forks a child for each command: the child gets the
environment, working folder and stdin/stdout/stderr asked for, runs the pyz's own code, and exits
as the interpreter ends a command (atexit, logging, threads). The entry point itself (``python3
stockyard.pyz``) is run as it is by every server start and by the tests of the pyz.

``run(pyz, args, env, ...)`` answers as ``subprocess.run(..., capture_output=True, text=True)``.
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

    def line(self, timeout: float) -> dict | None:
        """The next answer, or None if none came within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the fork server of {self.pyz} ended (exit {self.proc.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(
        self, args: list[str], env: dict[str, str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess:
        assert self.proc.stdin is not None
        with tempfile.TemporaryDirectory(prefix="cli-") as tmp:
            files = {name: os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")}
            if input is None:
                files["stdin"] = ""
            else:
                Path(files["stdin"]).write_text(input)
            request = {"argv": args, "env": env, "cwd": os.getcwd(), **files}
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            started = self.line(30)
            assert started is not None, "the fork server did not start the command"
            ended = self.line(timeout)
            if ended is None:
                os.kill(started["pid"], signal.SIGKILL)
                self.line(30)
                raise subprocess.TimeoutExpired([sys.executable, str(self.pyz), *args], timeout)
            out, err = (Path(files[n]).read_text(errors="replace") for n in ("stdout", "stderr"))
        return subprocess.CompletedProcess([sys.executable, str(self.pyz), *args], ended["code"], out, err)


_idle: dict[Path, list[ForkServer]] = {}
_lock = threading.Lock()


def run(
    pyz: Path, args: list[str], env: dict[str, str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python3 PYZ ARGS`` with exactly ``env`` as its environment; stdout and stderr as text."""
    pyz = Path(pyz).resolve()
    with _lock:
        idle = _idle.setdefault(pyz, [])
        server = idle.pop() if idle else None
    if server is None:
        server = ForkServer(pyz, env)
    try:
        done = server.run([str(a) for a in args], dict(env), input, timeout)
    except BaseException:
        server.proc.kill()
        server.proc.wait()
        raise
    with _lock:
        _idle[pyz].append(server)
    return done
