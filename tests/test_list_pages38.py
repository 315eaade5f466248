"""The per-key lists as the SDKs' auto-paging walks them, over more objects than a page holds,
with two client keys whose objects are interleaved at the provider (one provider key holds both).

Each list is the provider's pages filtered to the key's own: every one of the key's objects comes
exactly once, in the order asked, none of the other key's, and the last page says ``has_more``
false. A client that deletes each object as the list gives it (``for f in list(): delete(f)``)
still reaches every one.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import ANTHROPIC_FILES, FILES, GEMINI_FILES
from test_gemini_files import call, upload

from stockyard.files_api import MAX_SEARCH_PAGES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated

GEMINI_KEY = "AIza-pages-0123456789abcdefPROVIDERSECRET"
ANTHROPIC_KEY = "sk-ant-test-pages-0123456789abcdefANTHROPICSECRET"
GEMINI_PROVIDER_PAGE = 100  # what Stockyard asks of Google a page (gemini_cache.PROVIDER_PAGE)
HI = [{"role": "user", "content": "hi"}]
FAR = 2_100  # objects of no key's at the provider: more than one list request read (20 pages of 100)


class StuckLists(BaseHTTPRequestHandler):
    """An OpenAI-compatible provider whose file list ignores ``after``: the same page of another's
    file, saying ``has_more``, however it is asked (a file made here is ``file-stuck-mine``)."""

    lists = 0  # list calls answered

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._answer({"id": "file-stuck-mine", "object": "file", "bytes": 3, "created_at": 1, "filename": "a"})

    def do_GET(self) -> None:
        StuckLists.lists += 1
        after = parse_qs(urlsplit(self.path).query).get("after", ["file-endless-0"])[0]
        if "purpose=endless" in self.path:  # a list that never ends, none of it the key's: ids go on
            next_id = f"file-endless-{int(after.rsplit('-', 1)[1]) + 1}"
            self._answer({"object": "list", "data": [{"id": next_id, "object": "file"}], "has_more": True})
            return
        page = {"object": "list", "data": [{"id": "file-stuck-theirs", "object": "file"}], "has_more": True}
        self._answer(page)

    def _answer(self, doc: dict) -> None:
        data = json.dumps({**doc, "first_id": None, "last_id": None} if "data" in doc else doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stuck():
    """The ``StuckLists`` provider, on a port of its own."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StuckLists)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory, stuck) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GROQ_API_KEY="gsk-pages-0123456789abcdef",
        GROQ_BASE_URL=stuck,
    )
    keys = {"alice": [], "bob": [], "carol": []}
    with served(pyz_path, tmp_path_factory, "pages38", env, keys, never_logged=(GEMINI_KEY, ANTHROPIC_KEY)) as srv:
        yield srv


# -- Gemini: pageSize, pageToken, nextPageToken ------------------------------------------------


@pytest.fixture
def start_a_provider_page():
    """A call that fills the mock's Files list (shared with the other test files of this worker) to a
    multiple of Stockyard's provider page with files no key owns: the next uploads then share one
    provider page, whose own token (an offset at the mock) a deletion on it does not move. The
    fillers go after the test."""
    made: list[str] = []

    def fill() -> None:
        with GEMINI_FILES.lock:
            while len(GEMINI_FILES.files) % GEMINI_PROVIDER_PAGE:
                file_id = f"nobodys{len(GEMINI_FILES.files):06d}"
                GEMINI_FILES.files[file_id] = {"name": f"files/{file_id}", "mimeType": "text/plain"}
                made.append(file_id)

    yield fill
    with GEMINI_FILES.lock:
        for file_id in made:
            GEMINI_FILES.files.pop(file_id, None)


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


def test_gemini_files_deleted_as_they_are_listed_are_every_one_reached(server, start_a_provider_page) -> None:
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


def test_gemini_files_paged_without_deletes_are_each_given_once(server, start_a_provider_page) -> None:
    start_a_provider_page()
    mine = [upload(server, "alice", b"c" * (n + 1))["name"] for n in range(5)]
    for size in (1, 2, 3, 100):
        walked = walk_gemini_files(server, "alice", size, delete=False)
        assert walked == [name for name in walked if name in mine] and sorted(walked) == sorted(mine), size
    for name in mine:
        call(server, "alice", "DELETE", f"/v1beta/{name}")


def test_a_gemini_page_token_always_leads_to_more_of_the_keys(server, start_a_provider_page) -> None:
    """google-genai's Pager reads the page a nextPageToken names and takes its first item: an empty
    page there raises IndexError out of the client's ``for`` loop. A page filled by the key's last
    files at the end of the provider's page, with more of others after, said nextPageToken and led
    to an empty page; the token now comes only once one more of the key's is known to follow."""
    start_a_provider_page()
    mine = [upload(server, "alice", b"d" * (n + 1))["name"] for n in range(2)]
    others = [f"nobodyafter{n:06d}" for n in range(GEMINI_PROVIDER_PAGE + 5)]
    with GEMINI_FILES.lock:  # a full provider page and more, of no key's, after them
        GEMINI_FILES.files.update({i: {"name": f"files/{i}", "mimeType": "text/plain"} for i in others})
    try:
        walk_past_others(server, mine)
    finally:
        with GEMINI_FILES.lock:
            for file_id in others:
                del GEMINI_FILES.files[file_id]


def walk_past_others(server: ServerProcess, mine: list[str]) -> None:
    """alice's ``mine`` fill a page of 2, a provider page of others' after them: no token; then one
    more of hers after those, and the token leads to it."""
    status, _, page = call(server, "alice", "GET", "/v1beta/files?pageSize=2")
    assert status == 200 and [f["name"] for f in page["files"]] == mine and "nextPageToken" not in page, page
    extra = upload(server, "alice", b"e")["name"]  # one more of the key's, past the others
    status, _, page = call(server, "alice", "GET", "/v1beta/files?pageSize=2")
    assert [f["name"] for f in page["files"]] == mine and page.get("nextPageToken"), page
    status, _, rest = call(server, "alice", "GET", f"/v1beta/files?pageSize=2&pageToken={page['nextPageToken']}")
    assert status == 200 and [f["name"] for f in rest["files"]] == [extra] and "nextPageToken" not in rest, rest
    for name in [*mine, extra]:
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


@pytest.fixture
def newer_of_no_key():
    """A call that adds ``FAR`` OpenAI files (purpose ``pages38-far``) and Anthropic files no key
    owns, newer than any made before it; gone after the test (the mock's lists are the other test
    files' too)."""
    made: list[str] = []
    theirs: list[str] = []

    def fill() -> None:
        with FILES.lock:
            made.extend(FILES.add_file("far.jsonl", "pages38-far", b"{}\n")["id"] for _ in range(FAR))
        with ANTHROPIC_FILES.lock:
            theirs.extend(ANTHROPIC_FILES.add("far.txt", "text/plain", b"x", False)["id"] for _ in range(FAR))

    yield fill
    with FILES.lock:
        for file_id in made:
            del FILES.files[file_id], FILES.contents[file_id]
    with ANTHROPIC_FILES.lock:
        for file_id in theirs:
            del ANTHROPIC_FILES.files[file_id], ANTHROPIC_FILES.contents[file_id]


def test_a_keys_objects_past_many_of_others_are_listed_not_an_empty_page_saying_has_more(
    server, newer_of_no_key
) -> None:
    """One list request read 20 provider pages at most: past 2,000 newer objects of others, the key's
    own came as an empty page with ``has_more`` true and no ``last_id`` — the SDKs stopped there (the
    key's files never listed), and a client asking again with the ``last_id`` it got asked for the
    first page again, for ever. A page now goes on reading until it holds one of the key's, so it
    always has a cursor to go on from."""
    openai_files = server.openai("alice").files
    anthropic_files = server.anthropic("alice").beta.files
    oldest = [
        openai_files.create(file=(f"old{n}.jsonl", io.BytesIO(b"{}\n")), purpose="pages38-far").id for n in range(3)
    ]
    uploaded = [anthropic_files.upload(file=(f"old{n}.txt", b"x", "text/plain")).id for n in range(3)]
    newer_of_no_key()

    page = openai_files.list(purpose="pages38-far", limit=2)
    assert [f.id for f in page.data] == oldest[:0:-1] and page.has_more is True
    assert [f.id for f in openai_files.list(purpose="pages38-far", limit=2)] == oldest[::-1]
    assert [f.id for f in openai_files.list(purpose="pages38-far", limit=2, order="asc")] == oldest

    page = anthropic_files.list(limit=2)
    assert [f.id for f in page.data] == uploaded[:0:-1] and page.has_more is True
    assert [f.id for f in anthropic_files.list(limit=2)] == uploaded[::-1]


def test_a_key_holding_none_of_a_list_gets_the_empty_page_without_the_provider_read(server, mock) -> None:
    """A page reads on until it holds one of the key's: a key that holds none of that kind at the
    provider would have every list read the provider's whole; its empty page is answered unasked."""
    server.openai("bob").files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="pages38")
    before = len(mock.requests)
    carol = server.openai("carol")
    lists = (carol.files.list, carol.batches.list, carol.containers.list, carol.videos.list, carol.vector_stores.list)
    for listed in (each(limit=2) for each in lists):
        assert listed.data == [] and listed.has_more is False
    anthropic = server.anthropic("carol")
    for page in (anthropic.beta.files.list(limit=2), anthropic.messages.batches.list(limit=2)):
        assert page.data == [] and page.has_more is False
    for path, field in (("/v1beta/files?pageSize=2", "files"), ("/v1beta/cachedContents", "cachedContents")):
        status, _, doc = call(server, "carol", "GET", path)
        assert status == 200 and doc == {field: []}, doc
    assert [r.path for r in mock.requests[before:]] == []
    assert [f.id for f in server.openai("bob").files.list(purpose="pages38", limit=1)]  # bob's are read


def test_a_provider_list_that_never_moves_on_ends_the_page_not_the_server(server) -> None:
    """A page reads on until it holds one of the key's: a provider answering the same page whatever
    ``after`` says (has_more, none of the key's) would be read for ever; its page comes once more at
    most, and the client gets the page read so far, ``has_more`` false."""
    alice = server.openai("alice", default_headers={"x-stockyard-provider": "groq"})
    assert alice.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id == "file-stuck-mine"
    before = StuckLists.lists
    page = alice.files.list(limit=2)
    assert page.data == [] and page.has_more is False and StuckLists.lists - before == 2


def test_a_provider_list_of_none_of_the_keys_is_read_within_a_bound(server) -> None:
    """A key whose objects all went at the provider (expired, deleted elsewhere) holds rows still, so a
    page reads on looking for one: within MAX_SEARCH_PAGES provider pages, then the empty page says
    ``has_more`` (ask again), as past MAX_LIST_PAGES once one is found — one list request never reads a
    provider's whole list, however long."""
    alice = server.openai("alice", default_headers={"x-stockyard-provider": "groq"})
    alice.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    before = StuckLists.lists
    page = alice.files.list(limit=2, purpose="endless")
    assert page.data == [] and page.has_more is True
    assert StuckLists.lists - before == MAX_SEARCH_PAGES


def test_input_items_with_a_repeated_id_are_each_walked_once(server) -> None:
    """A response Stockyard keeps (one translated for Claude) lists its input items itself, ``after``
    an item id: an input naming one id twice (OpenAI refuses it; Claude never sees the ids) had the
    SDK's walk come back to the first of them for ever. A repeated id is given a new one when kept."""
    client = server.openai("alice")
    texts = ["one", "two", "three", "four"]
    ids = ["msg_same", "msg_same", "msg_other", "msg_same"]
    made = client.responses.create(
        model="claude-pages-model",
        input=[{"type": "message", "role": "user", "content": t, "id": i} for t, i in zip(texts, ids)],
    )
    for order, expected in (("asc", texts), ("desc", texts[::-1])):
        walked = list(itertools.islice(client.responses.input_items.list(made.id, limit=1, order=order), 10))
        assert [item.content[0].text for item in walked] == expected, order
        assert len({item.id for item in walked}) == 4 and walked[0 if order == "asc" else 3].id == "msg_same"


# -- Anthropic: limit, after_id, before_id, has_more ------------------------------------------------


def test_message_batches_walked_newer_with_before_id_give_each_of_the_keys_once(server) -> None:
    """The SDK walks ``before_id`` pages by each page's ``first_id``: every batch of the key's newer
    than the cursor comes once (each page the ``limit`` nearest it, newest first), none of another's."""
    alice, bob = server.anthropic("alice").messages.batches, server.anthropic("bob").messages.batches
    request = {"custom_id": "one", "params": {"model": "claude-pages-model", "max_tokens": 8, "messages": HI}}
    mine = []
    for n in range(5):
        mine.append(alice.create(requests=[request]).id)
        if n % 2 == 0:
            bob.create(requests=[request])
    first = alice.list(before_id=mine[0], limit=2)
    assert [b.id for b in first.data] == [mine[2], mine[1]] and first.has_more is True
    assert [b.id for b in alice.list(before_id=mine[0], limit=2)] == [mine[2], mine[1], mine[4], mine[3]]
    last = alice.list(before_id=mine[3], limit=2)
    assert [b.id for b in last.data] == [mine[4]] and last.has_more is False
    assert [b.id for b in alice.list(after_id=mine[4], limit=3)] == mine[3::-1]
