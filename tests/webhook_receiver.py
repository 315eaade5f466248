"""A webhook receiver for the tests: records every POST, answers scripted statuses."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import wait_for


class Receiver:
    """An HTTP server that records every POST and answers the scripted statuses (then 200)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, kind: str | None = None) -> list[tuple[dict[str, str], bytes, dict]]:
        with self.lock:
            got = list(self.got)
        out = [(h, b, json.loads(b)) for h, b in got]
        return [e for e in out if kind is None or e[2].get("type") == kind]

    def wait(self, kind: str, n: int = 1, timeout: float = 15.0) -> list[tuple[dict[str, str], bytes, dict]]:
        wait_for(lambda: len(self.events(kind)) >= n, timeout, f"{n} {kind} deliveries")
        return self.events(kind)
