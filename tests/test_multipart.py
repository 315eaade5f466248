"""The streamed multipart parser: fields kept, file bytes spooled, strict 400s, and re-encoding for upstream."""

from __future__ import annotations

import http.server
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockyard import multipart
from stockyard.errors import ClientGone, ProxyError
from stockyard.multipart import Upload, receive
from stockyard.upstream import Pool

B = "----stockyardTestBoundary7MA4YWxk"
CT = f"multipart/form-data; boundary={B}"


def form(*parts: tuple[str, bytes, str | None], boundary: str = B) -> bytes:
    """A body as SDKs send it: (name, bytes, filename or None)."""
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: audio/wav\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for n in sizes:
        out.append(data[at : at + n])
        at += n
    return [*out, data[at:]]


def parse(
    data: bytes | list[bytes], content_type: str = CT, limit: int = 1 << 30, folder: Path | None = None
) -> Upload:
    return receive([data] if isinstance(data, bytes) else data, content_type, limit=limit, folder=folder)


AUDIO = bytes(range(256)) * 40 + b"\r\n--" + B[:-1].encode() + b"\r\n"  # holds a near-boundary


def test_fields_and_files_are_parsed_and_the_file_bytes_stay_in_the_spool(tmp_path):
    body = form(
        ("model", b"whisper-1", None),
        ("file", AUDIO, "speech.wav"),
        ("timestamp_granularities[]", b"word", None),
        ("timestamp_granularities[]", b"segment", None),
        ("prompt", "héllo".encode(), None),
    )
    with parse(split(body, [1, 2, 3, 50, 7, 4000]), folder=tmp_path / "uploads") as up:
        assert up.fields == {"model": "whisper-1", "timestamp_granularities[]": ["word", "segment"], "prompt": "héllo"}
        assert up.get("model") == "whisper-1" and up.get("language") is None
        with pytest.raises(ProxyError) as err:
            up.get("timestamp_granularities[]")
        assert err.value.status == 400
        (f,) = up.files
        assert (f.name, f.filename, f.content_type, f.size) == ("file", "speech.wav", "audio/wav", len(AUDIO))
        assert up.size == len(body)
        assert up.open(f).read() == AUDIO
        assert up.metadata() == {
            "fields": up.fields,
            "files": [{"name": "file", "filename": "speech.wav", "content_type": "audio/wav", "size": len(AUDIO)}],
            "size": len(body),
        }
        assert AUDIO not in repr(up.metadata()).encode()
    folder = tmp_path / "uploads"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.iterdir()) == []  # the spool never has a name there


def test_encode_resends_the_form_with_fields_replaced_and_added():
    body = form(("model", b"openai/whisper-1", None), ("file", AUDIO, "a.wav"), ("language", b"en", None))
    with parse(body) as up:
        assert up.encode().read() == body  # unchanged: byte for byte what the client sent
        enc = up.encode({"model": "whisper-1", "response_format": "json"})
        assert enc.content_type == CT
        first = enc.read(10)
        sent = first + b"".join(iter(lambda: enc.read(7), b""))
        assert len(sent) == enc.length
        again = parse(sent)
        assert again.fields == {"model": "whisper-1", "language": "en", "response_format": "json"}
        assert again.open(again.files[0]).read() == AUDIO
        enc.seek(0)
        assert enc.read() == sent
        with pytest.raises(ProxyError) as refused:  # a 400 for the client, never a 500
            up.encode({"model": f"x\r\n--{B}"})
        assert refused.value.status == 400


@pytest.mark.parametrize(
    "parts, repeated",
    [
        ([("n", b"1", None), ("n", b"10", None)], "n"),
        ([("n", b"1", None), ("n", b"10", "n.txt")], "n"),  # a text field and a file of one name
        ([("n", b"10", "n.txt"), ("n", b"1", None)], "n"),
        ([("include[]", b"logprobs", None), ("include[]", b"x", None), ("model", b"m", None)], None),
        ([("image", b"a", "a.png"), ("image", b"b", "b.png")], None),  # files may repeat
        ([("image[]", b"a", "a.png"), ("image[]", b"b", "b.png"), ("model", b"gpt-image-1", None)], None),
    ],
)
def test_a_text_field_sent_twice_is_a_400_naming_it_and_lists_may_repeat(parts, repeated):
    with parse(form(*parts)) as up:
        assert up.repeated() == repeated
        if repeated is None:
            up.refuse_repeated()
            return
        with pytest.raises(ProxyError) as err:
            up.refuse_repeated()
    assert (err.value.status, err.value.code, err.value.param) == (400, "duplicate_key", repeated)
    assert f"names {repeated!r} twice" in err.value.message


@pytest.mark.parametrize(
    "content_type, problem",
    [
        ("application/json", "takes multipart/form-data"),
        (None, "takes multipart/form-data"),
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=", "malformed parameter"),
        ("multipart/form-data; boundary=" + "a" * 71, "1 to 70"),
        ('multipart/form-data; boundary="ends in space "', "1 to 70"),
        ("multipart/form-data; boundary=a; boundary=b", "twice"),
    ],
)
def test_a_bad_content_type_is_a_400_naming_it(content_type, problem):
    with pytest.raises(ProxyError) as err:
        parse(form(("model", b"x", None)), content_type)
    assert err.value.status == 400 and problem in err.value.message


def test_a_quoted_boundary_is_accepted():
    with parse(form(("a", b"1", None), boundary="x y:z"), 'multipart/form-data; boundary="x y:z"') as up:
        assert up.fields == {"a": "1"}


HEAD = f"--{B}\r\n".encode()


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"", "no opening boundary"),
        (b"hello", "no opening boundary"),
        (b"x" * (multipart.MAX_PREAMBLE_BYTES + 10), "no opening boundary"),
        (form(("a", b"1", None))[:-8], "ended before the closing boundary"),
        (HEAD + b'Content-Disposition: form-data; name="a"\r\n\r\nvalue', "ended before the closing boundary"),
        (HEAD + b"Content-Type: text/plain\r\n\r\nv\r\n--" + B.encode() + b"--", "no Content-Disposition"),
        (HEAD + b"\r\nv\r\n--" + B.encode() + b"--", "no Content-Disposition"),
        (HEAD + b"Content-Disposition: attachment; name=a\r\n\r\nv\r\n--" + B.encode() + b"--", "not form-data"),
        (HEAD + b"Content-Disposition: form-data\r\n\r\nv\r\n--" + B.encode() + b"--", "has no name"),
        (HEAD + b"Content-Disposition: form-data; name=a b\r\n\r\nv\r\n--" + B.encode() + b"--", "malformed parameter"),
        (HEAD + b" folded: x\r\n\r\n", "not 'Name: value'"),
        (HEAD + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n", "more than 16 headers"),
        (HEAD + b"X: " + b"a" * 9000, "headers are longer"),
        (f"--{B}junk\r\n".encode(), "followed by something other"),
        (f"--{B}   x".encode(), "followed by something other"),
        (HEAD + b'Content-Disposition: form-data; name="a"\r\n\r\n' + b"v" * 70_000, "longer than 65536"),
        (HEAD + b'Content-Disposition: form-data; name="a"\r\n\r\n\xff\r\n--' + B.encode() + b"--", "not UTF-8"),
        ((HEAD + b'Content-Disposition: form-data; name="a"\r\n\r\n1\r\n') * 300, "more than 256 parts"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_malformed_body_is_a_400_naming_the_problem(body, problem, tmp_path):
    with pytest.raises(ProxyError) as err:
        parse(split(body, [3, 5, 11]), folder=tmp_path)
    assert err.value.status == 400 and err.value.code == "invalid_multipart"
    assert problem in err.value.message, err.value.message


def test_the_limit_is_a_413_and_the_spool_is_closed(tmp_path, monkeypatch):
    spools = []
    real = multipart.tempfile.TemporaryFile

    def tracked(*a, **kw):
        spools.append(real(*a, **kw))
        return spools[-1]

    monkeypatch.setattr(multipart.tempfile, "TemporaryFile", tracked)
    body = form(("file", b"z" * 5000, "a.wav"))
    with pytest.raises(ProxyError) as err:
        parse(split(body, [1000, 1000, 1000]), limit=2500, folder=tmp_path)
    assert err.value.status == 413 and "STOCKYARD_MAX_UPLOAD_BYTES" in err.value.message

    def gone():
        yield body[:100]
        raise ClientGone()

    with pytest.raises(ClientGone):
        receive(gone(), CT, limit=1 << 20, folder=tmp_path)
    with parse(body, folder=tmp_path):
        pass
    assert len(spools) == 3 and all(s.closed for s in spools)


def test_preamble_epilogue_and_padding_are_allowed():
    body = b"preamble\r\n" + form(("a", b"1", None)).replace(f"--{B}\r\n".encode(), f"--{B} \t\r\n".encode(), 1)
    with parse(body + b"epilogue") as up:
        assert up.fields == {"a": "1"}


def test_filenames_quoted_and_rfc5987():
    body = (
        HEAD
        + b'Content-Disposition: form-data; name="file"; filename="a \\"b\\".wav"\r\n\r\nx\r\n'
        + HEAD
        + b"Content-Disposition: form-data; name=f2; filename*=UTF-8''%C3%A9t%C3%A9.mp3\r\n\r\ny\r\n--"
        + B.encode()
        + b"--\r\n"
    )
    with parse(body) as up:
        assert [(f.name, f.filename, f.content_type, f.size) for f in up.files] == [
            ("file", 'a "b".wav', None, 1),
            ("f2", "été.mp3", None, 1),
        ]


ASCII = st.characters(max_codepoint=127, exclude_characters='"\\\r\n')
PART = st.tuples(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters='"\\\r\n'), min_size=1, max_size=8),
    st.binary(max_size=300),
    st.one_of(st.none(), st.text(ASCII, min_size=1, max_size=8)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(PART, max_size=6), cuts=st.lists(st.integers(0, 60), max_size=12))
def test_any_well_formed_form_parses_the_same_however_it_is_split(parts, cuts):
    parts = [(n, d if f else d.decode("utf-8", "ignore").encode(), f) for n, d, f in parts]
    parts = [(n, d, f) for n, d, f in parts if f or b"\r\n--" + B.encode() not in b"\r\n" + d + b"\r\n"]
    body = form(*parts)
    if any(b"\r\n--" + B.encode() in b"\r\n" + d for _, d, _ in parts):
        return  # a part holding the delimiter is not a well-formed form
    with parse(split(body, cuts)) as up:
        assert up.encode().read() == body
        assert [(f.name, f.filename, up.open(f).read()) for f in up.files] == [(n, f, d) for n, d, f in parts if f]
        texts = [(n, d.decode()) for n, d, f in parts if not f]
        for name in {n for n, _ in texts}:
            values = [v for n, v in texts if n == name]
            assert up.fields[name] == (values[0] if len(values) == 1 else values)


@settings(max_examples=400, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from(
                [
                    HEAD,
                    b"\r\n",
                    b"--",
                    B.encode(),
                    b"Content-Disposition: form-data; name=a",
                    b'; filename="f"',
                    b"Content-Type: x\r\n",
                    b"data",
                    b"\r\n\r\n",
                    b" ",
                    b"\xff",
                ]
            ),
            max_size=30,
        ).map(b"".join),
    ),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_any_bytes_give_an_upload_or_a_400_never_another_error(body, cuts):
    try:
        with parse(split(body, cuts), limit=100_000):
            pass
    except ProxyError as exc:
        assert exc.status == 400 and exc.code == "invalid_multipart"


def test_an_encoded_upload_goes_upstream_in_blocks_with_its_length():
    got: list[tuple[str | None, str | None, bytes]] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            got.append(
                (self.headers.get("Content-Type"), self.headers.get("Transfer-Encoding"), self.rfile.read(length))
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    big = os.urandom(300_000)
    try:
        with parse(form(("model", b"m", None), ("file", big, "a.wav"))) as up:
            body = up.encode({"model": "whisper-1"})
            pool = Pool()
            headers = {"Content-Type": body.content_type, "Content-Length": str(body.length)}
            for _ in range(2):  # the second call reuses the connection and sends the body again
                resp = pool.request(f"http://127.0.0.1:{server.server_address[1]}", "POST", "/x", headers, body)
                assert resp.read_all() == b"{}"
            pool.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(got) == 2 and got[0] == got[1]
    content_type, chunked, sent = got[0]
    assert content_type == CT and chunked is None
    with parse(sent) as again:
        assert again.get("model") == "whisper-1" and again.open(again.files[0]).read() == big
