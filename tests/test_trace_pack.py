"""Trace bodies as stored: zlib streams, a short one as a stored block made without deflate."""

from __future__ import annotations

import zlib

from stockyard.store.traces import STORED_BELOW, _pack, _unpack


def test_a_short_body_is_the_stream_zlib_makes_at_level_0_and_a_longer_one_is_compressed():
    """Byte for byte what `zlib.compress(body, 0)` makes, so every reader (older versions too)
    decompresses it as before; deflate, which lets go of the GIL, runs only for longer bodies."""
    for n in range(STORED_BELOW):
        body = bytes((i * 7 + n) % 256 for i in range(n))
        assert _pack(body) == zlib.compress(body, 0), n
    long = b'{"role": "user", "content": "hello"}' * 30
    assert len(long) >= STORED_BELOW and len(_pack(long) or b"") < len(long) // 4
    for body in (b"", "héllo".encode(), long):
        assert _unpack(_pack(body)) == body.decode()
    assert _pack(None) is None
