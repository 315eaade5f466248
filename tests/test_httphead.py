"""Message heads read without the email package: same answers as http.client's parser."""

from __future__ import annotations

import http.client
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockyard.httphead import MAX_HEADERS, MAX_REQUEST_HEAD, HeadError, body_framing, read_head


def test_case_insensitive_first_value_wins_and_order_is_kept():
    head = read_head(io.BytesIO(b"Content-Type: a\r\nX-Two: 1\r\nx-two: 2\r\n\r\nBODY"))
    assert head.get("content-type") == "a" and head["X-TWO"] == "1" and head.get_all("x-two") == ["1", "2"]
    assert head.items() == [("Content-Type", "a"), ("X-Two", "1"), ("x-two", "2")]
    assert "x-two" in head and head.get("missing") is None and head.get("missing", "d") == "d"


def test_folded_lines_are_joined():
    assert read_head(io.BytesIO(b"X: one\r\n two\r\n\r\n")).get("x") == "one two"


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"no colon here\r\n\r\n", 400),
        (b" starts folded\r\n\r\n", 400),
        (b"Bad Name : x\r\n\r\n", 400),
        (b"X: " + b"y" * 70000 + b"\r\n\r\n", 431),
        (b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", 431),
    ],
)
def test_bad_heads_are_refused_with_a_status(raw, status):
    with pytest.raises(HeadError) as err:
        read_head(io.BytesIO(raw))
    assert err.value.status == status


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)


@given(st.lists(st.tuples(names, values), max_size=20))
def test_agrees_with_the_standard_library(fields):
    raw = b"".join(f"{n}: {v}\r\n".encode() for n, v in fields) + b"\r\n"
    ours = read_head(io.BytesIO(raw))
    theirs = http.client.parse_headers(io.BytesIO(raw))
    assert ours.items() == list(theirs.items())
    for name, _ in fields:
        assert ours.get(name) == theirs.get(name) and ours.get_all(name) == theirs.get_all(name)


# -- strict reading (requests) and dropping (provider answers) -----------------------------------


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"X: one\r\n two\r\n\r\n", 400),  # obs-fold
        (b"X: a\rb\r\n\r\n", 400),  # bare CR in a value
        (b"X\rY: b\r\n\r\n", 400),  # bare CR in a name
        (b"X: a\x00b\r\n\r\n", 400),
        (b"X Y: b\r\n\r\n", 400),
        (b"X: a\r\r\n\r\n", 400),
        (b"X: cut off", 400),  # the stream ended inside the head
        (b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(17)) + b"\r\n", 431),
    ],
)
def test_strict_reading_refuses_what_others_could_read_differently(raw, status):
    with pytest.raises(HeadError) as err:
        read_head(io.BytesIO(raw), strict=True, max_bytes=MAX_REQUEST_HEAD)
    assert err.value.status == status


def test_strict_reading_keeps_tabs_and_high_bytes_and_strips_only_spaces_and_tabs():
    head = read_head(io.BytesIO(b"X: \ta\tb \r\nY: \xa0caf\xe9\xa0\r\n\r\n"), strict=True)
    assert head["x"] == "a\tb" and head["y"] == "\xa0caf\xe9\xa0"


def test_provider_fields_with_control_characters_are_dropped_not_relayed():
    head = read_head(io.BytesIO(b"X-Ok: 1\r\nX-Bad: 5\rInjected: yes\r\nX-Nul: a\x00\r\nX-Fold: a\r\n b\r\n\r\n"))
    assert head.items() == [("X-Ok", "1"), ("X-Fold", "a b")]


def framing(raw: bytes, version: str = "HTTP/1.1"):
    return body_framing(read_head(io.BytesIO(raw), strict=True), version)


def test_body_framing_reads_length_chunked_and_none():
    assert framing(b"Host: h\r\nContent-Length: 012\r\n\r\n") == 12
    assert framing(b"Host: h\r\nTransfer-Encoding: Chunked\r\n\r\n") is None
    assert framing(b"Host: h\r\n\r\n") == 0
    assert framing(b"\r\n", "HTTP/1.0") == 0
    assert framing(b"Host: h\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n") == 10**18


@pytest.mark.parametrize(
    "raw, version",
    [
        (b"Host: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "HTTP/1.1"),
        (b"Host: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1"),
        (b"Host: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "HTTP/1.1"),
        (b"Host: h\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
        (b"Host: h\r\nContent-Length: +5\r\n\r\n", "HTTP/1.1"),
        (b"Host: h\r\nContent-Length: 5_0\r\n\r\n", "HTTP/1.1"),
        (b"Host: h\r\nContent-Length: \xb2\r\n\r\n", "HTTP/1.1"),  # a digit to str.isdigit, not to HTTP
        (b"Host: h\r\nHost: i\r\n\r\n", "HTTP/1.1"),
        (b"Host: h\r\nAuthorization: a\r\nauthorization: b\r\n\r\n", "HTTP/1.1"),
        (b"Content-Length: 0\r\n\r\n", "HTTP/1.1"),
    ],
)
def test_body_framing_refuses_ambiguity(raw, version):
    with pytest.raises(HeadError) as err:
        framing(raw, version)
    assert err.value.status == 400


field_values = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(names, field_values), max_size=12))
def test_strict_and_provider_reading_agree_on_any_value(fields):
    """A value with a control character is a 400 in a request and a dropped field in an answer;
    any other value is kept in both, spaces and tabs around it stripped (issue 18's fast path
    for the common line must not read a line differently from the careful one)."""
    raw = b"".join(n.encode() + b":" + v + b"\r\n" for n, v in fields) + b"\r\n"
    expected = [(n, v.decode("iso-8859-1").strip(" \t")) for n, v in fields]
    clean = [(n, v) for n, v in expected if not any(c < "\t" or "\t" < c < " " or c == "\x7f" for c in v)]
    assert read_head(io.BytesIO(raw)).items() == clean
    if clean == expected:
        assert read_head(io.BytesIO(raw), strict=True).items() == expected
    else:
        with pytest.raises(HeadError):
            read_head(io.BytesIO(raw), strict=True)


def test_long_lines_that_do_not_match_are_refused_in_linear_time():
    """Lines built to make a backtracking pattern quadratic (runs of blanks before a control
    character) are refused like any other bad line."""
    for line in (b"a:" + b" \t" * 30000 + b"\x01", b"a" * 60000 + b"\x01", b"a:" + b" " * 60000 + b"\r"):
        with pytest.raises(HeadError):
            read_head(io.BytesIO(line + b"\r\n\r\n"), strict=True, max_bytes=MAX_REQUEST_HEAD + 70000)
