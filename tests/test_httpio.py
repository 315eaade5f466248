"""The HTTP seam in process: a Request reads its body only on demand, one JSON-object-or-400 rule."""

from __future__ import annotations

import datetime
import json

import pytest

from stockyard.errors import ProxyError
from stockyard.httpio import Request, Response, json_object, json_response


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{", "invalid_json"),
        (b"\xff", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),  # too deep: RecursionError, still a 400
        (b"", "invalid_json"),
        (b"[1]", "invalid_body"),
        (b"null", "invalid_body"),
        (b'"text"', "invalid_body"),
    ],
)
def test_anything_but_a_json_object_is_a_400(raw, code):
    with pytest.raises(ProxyError) as err:
        json_object(raw)
    assert err.value.status == 400 and err.value.code == code


def test_a_json_object_is_decoded_and_floats_can_stay_text():
    assert json_object(b'{"a": 1.10, "b": [2]}') == {"a": 1.1, "b": [2]}
    assert json_object(b'{"usd": 10.10, "n": 3}', parse_float=str) == {"usd": "10.10", "n": 3}


def test_the_body_is_read_only_when_asked_for_and_once():
    reads = []

    def read() -> bytes:
        reads.append(1)
        return b'{"x": 1}'

    req = Request("POST", "/api/keys?limit=5&limit=7&empty=", {"content-type": "application/json"}, read, "::1")
    assert (req.method, req.path, req.query, req.client) == ("POST", "/api/keys", {"limit": "7", "empty": ""}, "::1")
    assert reads == []
    assert req.json() == {"x": 1} and req.body == b'{"x": 1}' and reads == [1]


def test_an_empty_request_body_is_an_empty_object():
    assert Request("POST", "/api/x", {}, b"", "127.0.0.1").json() == {}


def test_json_response():
    resp = json_response({"when": datetime.date(2026, 1, 2), "name": "é"}, 201, {"X-A": "1"})
    assert resp == Response(201, b'{"when": "2026-01-02", "name": "\\u00e9"}', "application/json", {"X-A": "1"})
    assert json.loads(json_response({"name": "é"}, ensure_ascii=False).body.decode()) == {"name": "é"}
    assert json_response({"name": "é"}, ensure_ascii=False).body == '{"name": "é"}'.encode()
    assert Response(204).body == b"" and Response(204).headers == {}


def test_a_route_gets_an_upload_only_where_the_server_gives_a_reader():
    sentinel = object()
    assert Request("POST", "/x", {}, b"", "::1", upload=lambda: sentinel).upload() is sentinel  # type: ignore[arg-type,return-value]
    with pytest.raises(ProxyError) as err:
        Request("POST", "/x", {}, b"", "::1").upload()
    assert err.value.status == 400
