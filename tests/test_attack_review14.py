"""Review 14 of the day's changes (a stream held for its claim, the writes that keep a Responses turn,
the erase and admin deletes of stored responses and conversations, the busy timeout), as an
attacker and as an operator: each finding with the real parts that show it."""

from __future__ import annotations

import queue
import sqlite3
import time

from stockyard.errors import described
from stockyard.files_api import Ownership
from stockyard.store import Store, Writer, db


def held_writer(tmp_path, maxsize: int) -> tuple[Writer, sqlite3.Connection]:
    """A writer on a real SQLite file whose queue is full while another connection holds the
    database (``BEGIN EXCLUSIVE``): its first job waits out the busy timeout meanwhile."""
    path = tmp_path / "stockyard.db"
    conn, _ = db.open_and_migrate(path)
    conn.close()
    writer = Writer(path, maxsize=maxsize).start()
    lock = sqlite3.connect(path, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    stuck = writer.later(lambda c: c.execute("INSERT INTO meta (key, value) VALUES ('stuck', 'v')"))
    deadline = time.monotonic() + 5
    while writer.depth and time.monotonic() < deadline:  # the writer took it: it waits for the lock now
        time.sleep(0.01)
    assert writer.depth == 0 and not stuck.done()
    for i in range(maxsize):
        writer.submit(lambda c, i=i: c.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (f"k{i}",)))
    assert writer.depth == maxsize
    return writer, lock


def test_a_claim_made_on_the_relay_thread_never_waits_for_room_in_a_full_queue(tmp_path):
    """Was: ``Ownership.claim_new_later`` (the claim of a file Anthropic's code execution tool wrote,
    or of a Responses stream's auto container, made on the stream relay's one thread) queued its job
    with ``Store.write_later``'s default 30 s wait for room: a full writer queue (a database held by
    another process) stalled every relayed stream until room came. It must fail at once instead:
    its future's ``queue.Full`` ends that one stream, as the kept turn's writes already do."""
    writer, lock = held_writer(tmp_path, maxsize=2)
    store = Store(tmp_path / "stockyard.db")
    store.writer = writer
    try:
        began = time.monotonic()
        future = Ownership(store, None).claim_new_later({"file_review14"}, "anthropic_file", "k1", "anthropic")
        took = time.monotonic() - began
        assert took < 1.0, f"the relay thread waited {took:.1f} s for room in the writer's queue"
        failed = future.exception(timeout=0)
        assert isinstance(failed, queue.Full)
        assert described(failed) == "Full: the database writer's queue is full (2 waiting)"  # the log line's
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        writer.stop()
