"""Review 15 of the day's changes (the pyz's one-archive importer, the erase of stored Responses and
Conversations, the relay's deferred database work), as an attacker and as an operator, with real
parts: zips built in a temp folder, server processes of the built pyz (a --workers group), the mock
upstream, a PostgreSQL cluster.

Found and fixed: a group's worker started again after an upgrade replaced the pyz (renamed over it,
or written in place) failed each start, reading the price table and the migrations from the pyz
after the server's start; a member that is not what the archive's directory says came back as
other bytes, zlib.error, struct.error or a buffer of the size the directory claims; a stream held
for its claim had no timer but the optional deadline (on PostgreSQL it waited for ever while
another session held the write lock). Checked and sound: odd resource paths name no other member,
a zip64 pyz reads."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ServerProcess, base_env, hold_database, mock_env, wait_for
from rawhttp import read_until_close
from test_attack_review14 import held_for_its_claim
from test_leftovers_review import WRITTEN, started
from test_workers import workers_of

from stockyard import pyzimport


def next_version(source: Path, running: Path, how: str) -> None:
    """The next version put over ``running`` as an upgrade may: written ``in place`` over it, or
    ``renamed`` over it. The same members, every one at another offset."""
    target = running if how == "in place" else running.with_name("next.pyz")
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        new.writestr("padding.bin", os.urandom(1 << 20))
        for info in old.infolist():
            new.writestr(info, old.read(info))
    if target != running:
        os.replace(target, running)


def answers_from(server: ServerProcess, worker: str) -> bool:
    """Whether a connection reached the worker of that index and it answered (a worker that is
    not serving leaves connections to its socket waiting: they time out)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        answer.read()
        return answer.status == 200 and answer.getheader("x-stockyard-worker") == worker
    except OSError:
        return False
    finally:
        conn.close()


@pytest.mark.serial
@pytest.mark.parametrize("how", ["in place", "renamed"])
def test_a_worker_started_again_after_an_upgrade_replaced_the_pyz_serves(
    pyz_path: Path, tmp_path: Path, how: str
) -> None:
    """A group's worker started again (it died) reads nothing from the pyz: the migrations and the
    price table it reads at its start were read by the parent before it forked. It read them then:
    the migrations from the open file by the offsets of the directory parsed at start (written
    over in place: 'damaged zip entry'), the prices through zipimport, which opens the path again
    (renamed over: 'bad local file header'). Each restart failed; the group served on one worker less."""
    running = tmp_path / "stockyard.pyz"
    shutil.copy(pyz_path, running)
    env = base_env(tmp_path / "cache")
    group = ServerProcess(running, tmp_path / "s.db", env, ["--workers", "2"], spawned=True).start()
    try:
        first = wait_for(lambda: len(workers_of(group)) == 2 and workers_of(group), 20, "both workers")
        next_version(pyz_path, running, how)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        killed = wait_for(lambda: re.search(rf"worker (\d+) \(pid {victim}\) was killed", group.log), 20, "the kill")
        index = killed.group(1)
        wait_for(lambda: f"worker {index} failed" in group.log or answers_from(group, index), 30, "the new worker")
        assert f"worker {index} failed" not in group.log, group.log
    finally:
        group.stop()


# -- pyzimport.Archive.read: a member that is not what the directory says --------------------------
TEXT = b"the member's own bytes\n" * 40


def small_zip(path: Path, compression: int) -> Path:
    """A zip behind a shebang, as the pyz is: one member before ``m/data.txt`` and one after."""
    with open(path, "wb") as out:
        out.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr(zipfile.ZipInfo("m/first.txt"), b"first\n", compression)
            zf.writestr(zipfile.ZipInfo("m/data.txt"), TEXT, compression)
            zf.writestr(zipfile.ZipInfo("m/last.txt"), b"last\n" * 100, compression)
    return path


def patched(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(data)


def where(path: Path, name: str) -> tuple[int, int, int]:
    """(local header offset, data offset, central directory entry offset) of a member."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    fields = raw[info.header_offset + 4 : info.header_offset + 26]  # version .. sizes, as in the directory
    central = raw.index(fields, info.header_offset + 30) - 6
    return info.header_offset, info.header_offset + 30 + name_len + extra_len, central


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_whose_bytes_changed_is_an_oserror_never_other_bytes(tmp_path: Path, compression: int) -> None:
    """Was: a member's changed bytes came back as its content (stored), or as zlib.error (deflated):
    neither is the OSError an import or a data file read says a damaged archive with."""
    path = small_zip(tmp_path / "a.pyz", compression)
    archive = pyzimport.Archive(str(path))
    assert archive.read("m/data.txt") == TEXT
    _, data_at, _ = where(path, "m/data.txt")
    patched(path, data_at + 3, b"\xff\xfe\xfd\xfc")
    with pytest.raises(OSError, match="damaged zip entry m/data.txt"):
        archive.read("m/data.txt")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_local_header_whose_name_length_lies_is_an_oserror(tmp_path: Path, compression: int) -> None:
    """Was: the data was read from the lie's offset: other bytes, or zlib.error."""
    path = small_zip(tmp_path / "a.pyz", compression)
    header_at, _, _ = where(path, "m/data.txt")
    patched(path, header_at + 26, struct.pack("<H", len("m/data.txt") + 2))
    with pytest.raises(OSError, match="damaged zip entry m/data.txt"):
        pyzimport.Archive(str(path)).read("m/data.txt")


def test_a_directory_whose_sizes_lie_is_an_oserror_without_reading_past_the_file(tmp_path: Path) -> None:
    """Was: a compressed size past the end of the file was read as far as the file went (the
    member's bytes and the directory's, as its content), after asking ``os.pread`` for a buffer of
    the size the directory claims (4 GB here)."""
    path = small_zip(tmp_path / "a.pyz", zipfile.ZIP_STORED)
    _, _, central = where(path, "m/data.txt")
    patched(path, central + 20, struct.pack("<I", 0xFFFF_FFF0))  # compressed size
    with pytest.raises(OSError, match="damaged zip entry m/data.txt"):
        pyzimport.Archive(str(path)).read("m/data.txt")


def test_a_pyz_cut_short_under_the_open_archive_is_an_oserror(tmp_path: Path) -> None:
    """Was: struct.error (the local header read past the end was too short to unpack)."""
    path = small_zip(tmp_path / "a.pyz", zipfile.ZIP_DEFLATED)
    archive = pyzimport.Archive(str(path))
    header_at, _, _ = where(path, "m/last.txt")
    os.truncate(path, header_at + 10)
    with pytest.raises(OSError, match="damaged zip entry m/last.txt"):
        archive.read("m/last.txt")


def test_odd_resource_paths_name_no_other_member_and_a_zip64_archive_reads(tmp_path: Path) -> None:
    """Checked: a path with ``..``, an absolute part, an empty segment or another archive's prefix
    names no member (the names are the directory's, compared whole, never resolved as paths); a
    pyz whose members carry zip64 headers reads as any other."""
    path = tmp_path / "z64.pyz"
    with open(path, "wb") as out:
        out.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in (("pk/__init__.py", b"X = 1\n"), ("pk/d.txt", TEXT), ("top.txt", b"top\n")):
                with zf.open(name, "w", force_zip64=True) as member:
                    member.write(data)
    archive = pyzimport.Archive(str(path))
    finder = pyzimport.Finder(archive)
    root = finder.get_resource_reader("pk").files()
    assert root.joinpath("d.txt").read_bytes() == TEXT
    for parts in (("..", "top.txt"), ("/top.txt",), ("", "d.txt"), ("./d.txt",), ("d.txt/",)):
        entry = root.joinpath(*parts)
        assert not entry.is_file()
        with pytest.raises(FileNotFoundError):
            entry.read_bytes()
    for odd in (f"{path}/pk/../top.txt", f"{path}//top.txt", f"{path}x/top.txt", "top.txt", str(path)):
        with pytest.raises(FileNotFoundError):
            finder.get_data(odd)
    assert finder.get_data(f"{path}/top.txt") == b"top\n"
    assert finder.find_spec("pk..d") is None and finder.find_spec("pk/d") is None


# -- the relay's held streams ----------------------------------------------------------------------
def test_a_held_stream_waits_for_its_claim_no_longer_than_its_providers_read_timeout(
    pyz_path, cache_home, mock, tmp_path
) -> None:
    """Was: a stream whose bytes wait for a claim is not read, so no timer but the request's deadline
    (the timeout module's, off by default) ran for it: its client got nothing for as long as the
    writer took (here the 10 s busy timeout; on PostgreSQL, whose writer waits for a lock with no
    timeout, for ever). It now ends at the provider's read timeout (2 s here), as a stream whose
    provider stalls does, cut as a claim the database refused."""
    gen = started(pyz_path, cache_home, mock, tmp_path, STOCKYARD_UPSTREAM_TIMEOUT="2")
    server = next(gen)
    try:
        with held_for_its_claim(server, mock) as (sock, got):
            began = time.monotonic()
            got += read_until_close(sock, timeout=15)  # cut: the connection closes
            took = time.monotonic() - began
        assert took < 6, f"the held stream ended {took:.1f} s after its claim began waiting"
        assert WRITTEN.encode() not in got  # the event naming the unclaimed file never went out
        sql = "SELECT outcome, error_message FROM traces WHERE endpoint = 'messages'"
        rows = wait_for(lambda: server.db_rows(sql), 15)
        assert [row["outcome"] for row in rows] == ["stream_broken"], rows
        assert "did not commit what the stream waits for in 2 s" in rows[0]["error_message"], rows
    finally:
        next(gen, None)


def test_on_postgresql_a_held_stream_ends_while_another_session_holds_the_write_lock(
    pyz_path, cache_home, mock, pg_url
) -> None:
    """Was: on PostgreSQL a write waits for the one write lock with no timeout (there is no busy
    timeout there), so a stream held for its claim while another session held the lock waited as
    long as that session did: for ever, without the timeout module's deadline. It ends at the
    provider's read timeout (2 s here) now, its trace written once the lock is let go."""
    secret = "sk-ant-test-review15-0123456789abcdef"
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY=secret, ANTHROPIC_BASE_URL=mock.url, STOCKYARD_UPSTREAM_TIMEOUT="2"
    )
    server = ServerProcess(pyz_path, pg_url, env)
    server.keys = server.create_keys({"alice": []})
    server.start()
    try:
        with held_for_its_claim(server, mock, lambda server: hold_database(pg_url)) as (sock, got):
            began = time.monotonic()
            got += read_until_close(sock, timeout=15)  # cut: the connection closes
            took = time.monotonic() - began
        assert took < 6, f"the held stream ended {took:.1f} s after its claim began waiting"
        assert WRITTEN.encode() not in got
        sql = "SELECT outcome FROM traces WHERE endpoint = 'messages'"
        assert wait_for(lambda: server.db_rows(sql), 15) == [{"outcome": "stream_broken"}]
    finally:
        server.stop()
    assert "Traceback" not in server.log and secret not in server.log
