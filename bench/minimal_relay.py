"""A minimal pooled relay: the floor that proxy CPU per request is compared with (issue 18).

What any stdlib Python proxy pays at the least: a ``ThreadingHTTPServer`` reading the request,
a keep-alive ``http.client`` connection from a pool to the upstream, the answer relayed with
its status and Content-Type. No checks, no tracing, no logging, no error handling beyond a 502.

    python3 bench/minimal_relay.py --upstream http://127.0.0.1:PORT [--port 0]
"""

from __future__ import annotations

import argparse
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Pool:
    """Idle keep-alive connections to one upstream."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 refuses connections when 64 clients start at once


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    pool: Pool  # set by main

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k in ("Content-Type", "Authorization") if (v := self.headers.get(k)) is not None}
        conn = self.pool.take()
        try:
            conn.request("POST", self.path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.send_error(502)
            return
        self.pool.put(conn)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.getheader("Content-Type") or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    up = urlsplit(args.upstream)
    Relay.pool = Pool(up.hostname or "127.0.0.1", up.port or 80)
    server = Server(("127.0.0.1", args.port), Relay)
    print(f"listening http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
