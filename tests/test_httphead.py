"""Message heads read without the email package: same answers as http.client's parser."""

from __future__ import annotations

import http.client
import io

import pytest
from hypothesis import given, strategies as st

from stockyard.httphead import MAX_HEADERS, HeadError, read_head


def test_case_insensitive_first_value_wins_and_order_is_kept():
    head = read_head(io.BytesIO(b"Content-Type: a\r\nX-Two: 1\r\nx-two: 2\r\n\r\nBODY"))
    assert head.get("content-type") == "a" and head["X-TWO"] == "1" and head.get_all("x-two") == ["1", "2"]
    assert head.items() == [("Content-Type", "a"), ("X-Two", "1"), ("x-two", "2")]
    assert "x-two" in head and head.get("missing") is None and head.get("missing", "d") == "d"


def test_folded_lines_are_joined():
    assert read_head(io.BytesIO(b"X: one\r\n two\r\n\r\n")).get("x") == "one two"


@pytest.mark.parametrize("raw, status", [
    (b"no colon here\r\n\r\n", 400),
    (b" starts folded\r\n\r\n", 400),
    (b"Bad Name : x\r\n\r\n", 400),
    (b"X: " + b"y" * 70000 + b"\r\n\r\n", 431),
    (b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", 431),
])
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
