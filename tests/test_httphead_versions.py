"""httphead.Response leans on http.client internals: pinned on every Python 3.11–3.14 found here.

``stockyard.httphead.Response`` replaces ``HTTPResponse.begin`` (its head reader) and keeps
the stdlib's reading of the body, so it calls ``_read_status`` and ``_check_close``, reads
``fp`` and ``_method``, and sets the fields the body readers use (``chunked``, ``chunk_left``,
``length``, ``will_close``). A Python release that renames or adds one of them breaks the
proxy quietly; here each interpreter reads real answers through a socket pair with both
parsers, and they must agree. Each supported interpreter found on the machine is a test of
its own; the one running the tests always is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINORS = sorted({11, 12, 13, 14, sys.version_info.minor})

# Run in the interpreter under test: each answer is read by http.client's own HTTPResponse and by
# ours, through HTTPConnection on one end of a socket pair (as upstream.py uses it), the body read
# in the ways the proxy reads (read(n), then read1 to the end, then read()), and a second answer on the
# same connection when the first leaves it open. Prints what each parser saw, as JSON.
SCRIPT = r"""
import http.client, json, socket, sys
sys.path.insert(0, sys.argv[1])
from stockyard.httphead import Response

CASES = {  # name: (method, answer, the server closes after it)
    "content-length": ("GET", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
                              b"X-Request-Id: r1\r\n\r\n{\"ok\":true}", False),
    "chunked": ("POST", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n"
                        b"0\r\nX-Trailer: t\r\n\r\n", False),
    "close-delimited": ("POST", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                                b"data: 1\n\ndata: 2\n\n", True),
    "bad-length-close-delimited": ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nuntil the end", True),
    "connection-close": ("GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc", True),
    "http-1.0": ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", True),
    "head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\r\n", False),
    "204": ("DELETE", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False),
    "304": ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"e1\"\r\n\r\n", False),
    "100-continue-then-200": ("POST", b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    "429-with-retry-after": ("POST", b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n"
                                     b"Content-Length: 4\r\n\r\nslow", False),
}
NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


def read(response_class, method, answer, closes):
    a, b = socket.socketpair()
    a.settimeout(5)
    with a, b:
        conn = http.client.HTTPConnection("upstream.test")
        conn.response_class = response_class
        conn.sock = a
        conn.request(method, "/v1/x", body=b"{}" if method == "POST" else None)
        b.sendall(answer)
        if closes:
            b.shutdown(socket.SHUT_WR)
        resp = conn.getresponse()
        seen = {
            "status": resp.status, "reason": resp.reason, "version": resp.version, "headers": resp.getheaders(),
            "chunked": resp.chunked, "length": resp.length, "will_close": resp.will_close,
            "fields": sorted(vars(resp)),
        }
        body = resp.read(3)
        while data := resp.read1(65536):
            body += data
        body += resp.read()  # read1 alone never closes a Content-Length body: length 0 reads b"" and stops
        seen["body"] = body.decode("latin-1")
        seen["closed"] = resp.isclosed()
        if not resp.will_close:
            conn.request("GET", "/v1/next")
            b.sendall(NEXT)
            follow = conn.getresponse()
            seen["next"] = [follow.status, follow.read().decode("latin-1")]
        conn.close()
        return seen


missing = [name for name in ("_read_status", "_check_close") if not hasattr(http.client.HTTPResponse, name)]
cases = {}
for name, (method, answer, closes) in CASES.items():
    cases[name] = {"ours": read(Response, method, answer, closes),
                   "theirs": read(http.client.HTTPResponse, method, answer, closes)}
print(json.dumps({"version": list(sys.version_info[:3]), "missing": missing, "cases": cases}))
"""

# What each answer must read as (so both parsers cannot agree on something wrong).
EXPECTED = {
    "content-length": (200, '{"ok":true}', False),
    "chunked": (200, "hello world", False),
    "close-delimited": (200, "data: 1\n\ndata: 2\n\n", True),
    "bad-length-close-delimited": (200, "until the end", True),
    "connection-close": (200, "abc", True),
    "http-1.0": (200, "hi", True),
    "head": (200, "", False),
    "204": (204, "", False),
    "304": (304, "", False),
    "100-continue-then-200": (200, "ok", False),
    "429-with-retry-after": (429, "slow", False),
}


def interpreter(minor: int) -> str | None:
    """A working python3.<minor>: this one, one on PATH, or one pyenv installed but does not put on PATH."""
    if sys.version_info[:2] == (3, minor):
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    installed = sorted(pyenv.glob(f"versions/3.{minor}.*/bin/python3.{minor}"))
    found = [shutil.which(f"python3.{minor}"), *map(str, installed)]
    probe = f"import sys; assert sys.version_info[:2] == (3, {minor})"
    for path in filter(None, found):
        if subprocess.run([path, "-I", "-c", probe], capture_output=True, timeout=30).returncode == 0:
            return path
    return None


FOUND = {m: path for m in MINORS if (path := interpreter(m))}  # the running one at least


@pytest.mark.parametrize("minor", sorted(FOUND), ids=[f"python3.{m}" for m in sorted(FOUND)])
def test_httphead_reads_answers_as_http_client_does(minor):
    python = FOUND[minor]
    run = subprocess.run([python, "-I", "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["version"][:2] == [3, minor]
    assert result["missing"] == [], f"http.client.HTTPResponse lost {result['missing']} on {result['version']}"
    assert set(result["cases"]) == set(EXPECTED)
    for name, seen in result["cases"].items():
        ours, theirs = seen["ours"], seen["theirs"]
        missing = set(theirs["fields"]) - set(ours["fields"])
        assert not missing, f"{name}: HTTPResponse.begin sets {sorted(missing)} on {result['version']}; ours does not"
        ours.pop("fields"), theirs.pop("fields")
        assert ours == theirs, f"{name} on {result['version']}"
        status, body, closes = EXPECTED[name]
        assert (ours["status"], ours["body"], ours["will_close"], ours["closed"]) == (status, body, closes, True), name
        if not closes:
            assert ours["next"] == [200, "next"], name
