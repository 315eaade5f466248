"""The process behind ``clirun``: imports a pyz's modules once, then runs each command asked of
it (a server's ``serve`` too) in a forked child, as ``python3 stockyard.pyz ARGS`` would run it in a
process of its own.

Usage: python3 cli_forkserver.py PYZ. Requests arrive on stdin as JSON lines: ``argv``, ``env``
(the child's whole environment), ``cwd``, and the files for the child's ``stdin`` (or null),
``stdout`` and ``stderr`` (a FIFO's path for a server's log). For each, the child answers one line
``{"pid": N}`` once it opened those files (so a FIFO's reader never sees an end before the child
held it), and this process one ``{"code": N}`` when the child ended (negative: the signal that
ended it, as subprocess says). The protocol uses the file descriptors 0 and 1 directly, so no
buffered text follows a child.
"""

from __future__ import annotations

import json
import os
import sys


def load(pyz: str) -> None:
    """Import what any command imports: the pyz's entry point and every module, as ``serve`` does
    before it listens."""
    sys.path.insert(0, pyz)
    import stockyard.pyzimport

    stockyard.pyzimport.install()
    import stockyard._native as native

    native.bootstrap()
    from stockyard.cli import serve

    serve.preload()


def requests():
    """Each request line from stdin, until it closes."""
    pending = b""
    while True:
        while b"\n" not in pending:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        yield json.loads(line)


def answer(message: dict) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def child(request: dict, pyz: str) -> int:
    """In the forked child: become the command's process, run it, return its exit code."""
    opened = [
        os.open(request[name] or os.devnull, flags | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o600)
        for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY))
    ]
    answer({"pid": os.getpid()})
    for fd, file in enumerate(opened):
        os.dup2(file, fd)
        os.close(file)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [pyz, *request["argv"]]
    from stockyard.cli import main

    try:
        return main(request["argv"])
    except SystemExit as exc:  # argparse's exits, as the interpreter reports them
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def serve(pyz: str) -> int | None:
    """Answer requests; in a child, return its exit code (the caller exits the interpreter with it)."""
    load(pyz)
    for request in requests():
        pid = os.fork()
        if pid == 0:
            return child(request, pyz)
        _, status = os.waitpid(pid, 0)
        answer({"code": os.waitstatus_to_exitcode(status)})
    return None


if __name__ == "__main__":
    # A child leaves through here, so the interpreter ends it as it ends `python3 stockyard.pyz`
    # (atexit handlers, logging flushed, threads joined), with the command's exit code.
    sys.exit(serve(sys.argv[1]))
