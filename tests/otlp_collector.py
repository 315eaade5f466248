"""A small OTLP/HTTP JSON collector for the tests: it keeps the spans (``/v1/traces``) and the
metric exports (``/v1/metrics``) Stockyard posts, and the headers they came with."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Decodes each JSON export and keeps its spans, its metric exports and its headers."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.metric_exports: list[dict] = []  # each /v1/metrics body, in the order received
        self.headers: list[dict] = []
        self.fail_next = 0  # answer this many posts with 503 first
        self.posts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.posts += 1
                    if receiver.fail_next:
                        receiver.fail_next -= 1
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if self.path == "/v1/metrics":
                        receiver.metric_exports.append(body)
                    else:
                        for rs in body["resourceSpans"]:
                            for ss in rs["scopeSpans"]:
                                receiver.spans.extend(ss["spans"])
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_request(self, trace_id: str) -> list[dict]:
        """The spans of one Stockyard request: its own and its children (the attempts)."""
        with self.lock:
            tops = [s for s in self.spans if s["kind"] == 2 and attrs(s).get("stockyard.trace_id") == trace_id]
            if not tops:
                return []
            top = tops[0]
            return [top, *(s for s in self.spans if s.get("parentSpanId") == top["spanId"])]


def attrs(item: dict) -> dict:
    """An OTLP span's or data point's attributes as a dict (int64 strings made ints)."""
    out = {}
    for entry in item["attributes"]:
        value = entry["value"]
        ((kind, v),) = value.items()
        if kind == "intValue":
            v = int(v)
        elif kind == "arrayValue":
            v = [next(iter(x.values())) for x in v["values"]]
        out[entry["key"]] = v
    return out


def metrics_of(export: dict) -> dict[str, dict]:
    """A metric export's metrics by name (one resource, one scope)."""
    [rm] = export["resourceMetrics"]
    [sm] = rm["scopeMetrics"]
    return {m["name"]: m for m in sm["metrics"]}


def points(export: dict, name: str) -> list[tuple[dict, dict]]:
    """The data points of one metric of an export: (their attributes, the point); none if it is absent."""
    metric = metrics_of(export).get(name)
    if metric is None:
        return []
    data = metric.get("histogram") or metric["sum"]
    return [(attrs(p), p) for p in data["dataPoints"]]
