"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App


def render(app: "App") -> str:
    w = app.writer
    lines = [
        "# HELP stockyard_writer_queue_depth Records waiting for the database writer.",
        "# TYPE stockyard_writer_queue_depth gauge",
        f"stockyard_writer_queue_depth {w.depth}",
        "# HELP stockyard_records_written_total Records committed to the database.",
        "# TYPE stockyard_records_written_total counter",
        f"stockyard_records_written_total {w.stats.written}",
        "# HELP stockyard_records_dropped_total Records lost because the queue was full or the database refused them.",
        "# TYPE stockyard_records_dropped_total counter",
        f"stockyard_records_dropped_total {w.stats.dropped}",
    ]
    return "\n".join(lines) + "\n"
