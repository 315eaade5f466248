"""The per-key lists as the SDKs' auto-paging walks them, over more objects than a page holds,
with two client keys whose objects are interleaved at the provider (one provider key holds both).

Each list is the provider's pages filtered to the key's own: every one of the key's objects comes
exactly once, in the order asked, none of the other key's, and the last page says ``has_more``
false. A client that deletes each object as the list gives it (``for f in list(): delete(f)``)
still reaches every one.
"""

from __future__ import annotations

import io

import pytest
from conftest import ServerProcess, mock_env
from mock_upstream import GEMINI_FILES
from test_gemini_files import call, upload

GEMINI_KEY = "AIza-pages-0123456789abcdefPROVIDERSECRET"
ANTHROPIC_KEY = "sk-ant-test-pages-0123456789abcdefANTHROPICSECRET"
GEMINI_PROVIDER_PAGE = 100  # what Stockyard asks of Google a page (gemini_cache.PROVIDER_PAGE)


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
    )
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("pages38") / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log
    assert GEMINI_KEY not in srv.log and ANTHROPIC_KEY not in srv.log


# -- Gemini: pageSize, pageToken, nextPageToken ------------------------------------------------


def start_a_provider_page() -> None:
    """Fill the mock's Files list (shared with the other test files of this worker) to a multiple of
    Stockyard's provider page with files no key owns: the next uploads then share one provider page,
    whose own token (an offset at the mock) a deletion on it does not move."""
    with GEMINI_FILES.lock:
        while len(GEMINI_FILES.files) % GEMINI_PROVIDER_PAGE:
            file_id = f"nobodys{len(GEMINI_FILES.files):06d}"
            GEMINI_FILES.files[file_id] = {"name": f"files/{file_id}", "mimeType": "text/plain", "state": "ACTIVE"}


def walk_gemini_files(server: ServerProcess, who: str, size: int, delete: bool) -> list[str]:
    """google-genai's ``for f in client.files.list(config={"page_size": size})``: every page by its
    nextPageToken; ``delete``: each file deleted as it is given (before the next page is asked)."""
    names: list[str] = []
    token = ""
    for _ in range(50):
        status, _, page = call(server, who, "GET", f"/v1beta/files?pageSize={size}&pageToken={token}")
        assert status == 200, page
        given = [f["name"] for f in page.get("files", [])]
        assert len(given) <= size
        names += given
        for name in given if delete else ():
            status, _, doc = call(server, who, "DELETE", f"/v1beta/{name}")
            assert status == 200, doc
        token = page.get("nextPageToken", "")
        if not token:
            return names
    raise AssertionError(f"the list never ended: {names}")


def test_gemini_files_deleted_as_they_are_listed_are_every_one_reached(server) -> None:
    """The token carried how many of the key's files on the provider's page were given already: once
    the client deleted those, the next page skipped as many others (a page of 2 over 7 files deleted
    4 and left 3, never listed). It carries which were given, so none is skipped."""
    start_a_provider_page()
    mine = []
    for n in range(7):
        mine.append(upload(server, "alice", b"a" * (n + 1))["name"])
        if n % 3 == 0:
            upload(server, "bob", b"b")  # another key's between them on the provider's page
    theirs = set(walk_gemini_files(server, "bob", 100, delete=False))

    assert sorted(walk_gemini_files(server, "alice", 2, delete=True)) == sorted(mine)
    assert walk_gemini_files(server, "alice", 2, delete=False) == []  # every one of them deleted
    assert set(walk_gemini_files(server, "bob", 100, delete=False)) == theirs  # and none of bob's
    assert len(theirs) == 3 and not theirs & set(mine)


def test_gemini_files_paged_without_deletes_are_each_given_once(server) -> None:
    start_a_provider_page()
    mine = [upload(server, "alice", b"c" * (n + 1))["name"] for n in range(5)]
    for size in (1, 2, 3, 100):
        walked = walk_gemini_files(server, "alice", size, delete=False)
        assert walked == [name for name in walked if name in mine] and sorted(walked) == sorted(mine), size
    for name in mine:
        call(server, "alice", "DELETE", f"/v1beta/{name}")


# -- OpenAI: limit, after, order, has_more -------------------------------------------------------


def make_files(server: ServerProcess, count: int) -> tuple[list[str], list[str]]:
    """``count`` files of alice's, oldest first, with one of bob's after every other (one purpose
    of their own: the mock's list holds the other test files' too); (alice's ids, bob's ids)."""
    alice, bob = server.openai("alice"), server.openai("bob")
    mine, theirs = [], []
    for n in range(count):
        mine.append(alice.files.create(file=(f"a{n}.jsonl", io.BytesIO(b"{}\n")), purpose="pages38").id)
        if n % 2:
            theirs.append(bob.files.create(file=(f"b{n}.jsonl", io.BytesIO(b"{}\n")), purpose="pages38").id)
    return mine, theirs


def test_openai_files_auto_paging_gives_each_of_the_keys_own_once_in_either_order(server) -> None:
    mine, theirs = make_files(server, 5)
    alice = server.openai("alice")
    assert [f.id for f in alice.files.list(purpose="pages38", limit=2)] == mine[::-1]
    assert [f.id for f in alice.files.list(purpose="pages38", limit=2, order="asc")] == mine
    last = alice.files.list(purpose="pages38", limit=2, order="asc", after=mine[2])
    assert [f.id for f in last.data] == mine[3:] and last.has_more is False
    assert [f.id for f in server.openai("bob").files.list(purpose="pages38", limit=1)] == theirs[::-1]
