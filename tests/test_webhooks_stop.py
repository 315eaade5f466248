"""Webhook events a server stops before delivering are written down, not lost without a trace.

Found under load (issue 24): a burst crossed a key's 50% and 80% budget warnings while the
receiver was slow; the server was stopped (SIGTERM) during the first delivery. The 80% warning,
still queued, was never sent, and nothing said so: no row in the delivery log, no log line, while
``budget_warnings`` recorded it as told, so no restart would send it either. Retries and queued
events live in memory (README); now each one the stop leaves is logged as ``abandoned`` in
``webhook_deliveries`` (``webhooks deliveries`` shows it) and the log says which events were not
delivered, so an operator knows to look.
"""

from __future__ import annotations

import socket
import threading

from conftest import open_database
from module_helpers import api, start_server

SECRET = "webhook-stop-encryption-secret-0123456789"
QUEUED = 3  # test events sent: the first held by the receiver, the others queued behind it


class SilentReceiver:
    """A receiver that accepts each delivery and never answers it (until closed)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.arrived = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._held.append(conn)
            self.arrived.set()

    def close(self) -> None:
        self.listener.close()
        for conn in self._held:
            conn.close()


def test_events_left_undelivered_at_a_stop_are_logged_as_abandoned(pyz_path, cache_home, mock, tmp_path_factory):
    receiver = SilentReceiver()
    server = start_server(pyz_path, cache_home, mock, tmp_path_factory, "webhookstop", STOCKYARD_ENCRYPTION_KEY=SECRET)
    try:
        status, hook = api(server, "POST", "/api/webhooks", {"url": receiver.url, "events": ["all"]})
        assert status == 201, hook
        for _ in range(QUEUED):
            status, sent = api(server, "POST", f"/api/webhooks/{hook['id']}/test")
            assert status == 202, sent
        assert receiver.arrived.wait(10), "the first delivery reached the receiver"
    finally:
        server.stop()
        receiver.close()
    conn = open_database(server.db)
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM webhook_deliveries ORDER BY id")]
    finally:
        conn.close()
    assert [(r["webhook_id"], r["event"], r["outcome"]) for r in rows] == [
        (hook["id"], "webhook.test", "abandoned")
    ] * QUEUED, rows
    assert len({r["event_id"] for r in rows}) == QUEUED
    assert "3 webhook deliveries were not made (webhook.test)" in server.log, server.log[-2000:]
    assert "Traceback" not in server.log
