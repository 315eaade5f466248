"""An attacker's review, part 7: OpenAI's Conversations API that Stockyard serves
(``stockyard.conversations_api``, ``Conversations.join``/``_append``) — another key's conversation,
a turn costing less than it should, growth, amplification, malformed input, and what the ``redact``
module keeps out of a conversation. Each test failed on the code it was written against."""

from __future__ import annotations

import io
import json
import time

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from module_helpers import ADMIN_KEY, put_module

MAX_BODY = 32 * 1024 * 1024  # the default: a conversation as large as Stockyard keeps one
CLAUDE = "claude-haiku-4-5"
OPENAI_SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-review7",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_MAX_BODY_BYTES=str(MAX_BODY),
        STOCKYARD_ADMIN_KEY=ADMIN_KEY,
    )
    budget = ["--budget-usd", "0.15", "--budget-period", "day"]
    keys = {
        "alice": [],
        "bob": [],
        "spent": ["--budget-usd", "1", "--budget-period", "total"],
        "budgeted": budget,
        "budgeted2": budget,
        "budgeted3": budget,
        "rpm": ["--rpm", "30"],
        "tpm": ["--tpm", "100000"],
    }
    with served(pyz_path, tmp_path_factory, "attack7", env, keys) as srv:
        yield srv


def call(server: ServerProcess, who: str, method: str, path: str, body=None) -> tuple[int, dict]:
    status, _, raw = server.request(method, path, body, headers=server.auth(who))
    return status, json.loads(raw) if raw else {}


def new_conversation(server: ServerProcess, who: str, items: list | None = None) -> str:
    status, made = call(server, who, "POST", "/v1/conversations", {"items": items or []})
    assert status == 200, made
    return made["id"]


def listed(server: ServerProcess, who: str, conversation: str) -> list[dict]:
    status, page = call(server, who, "GET", f"/v1/conversations/{conversation}/items?order=asc&limit=100")
    assert status == 200, page
    return page["data"]


# -- 1. a turn costs less than it should -----------------------------------------------------------


def test_images_a_conversation_names_are_held_as_images(server, mock):
    """The budget walks a body for images named by URL only when the client's bytes show a part's
    type: a conversation's items are put in front of the input by Stockyard, so a turn of a few
    bytes ("hi") naming a conversation of 200 image URLs (added free with items.create, ~320,000
    input tokens on Claude, $0.32) passed a $0.15 budget held as ~5,000 tokens."""
    image = {"type": "input_image", "image_url": "https://example.com/cat.png"}
    conversation = new_conversation(server, "budgeted", [{"role": "user", "content": [image] * 200}])
    before = len(mock.requests)
    body = {"model": CLAUDE, "conversation": conversation, "input": "hi", "max_output_tokens": 1}
    status, answer = call(server, "budgeted", "POST", "/v1/responses", body)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", (status, answer)
    assert len(mock.requests) == before


def test_images_a_previous_response_names_are_held_as_images(server, mock):
    """The same for a translated ``previous_response_id``: each turn's 40 image URLs were held
    when sent, but the history rebuilt for every later turn sends them all again (the provider
    bills them each time) and was held as its bytes: six turns sent 200 images in their last
    one, 600 in all (~960,000 input tokens, ~$0.96), each passing a $0.15 budget."""
    image = {"type": "input_image", "image_url": "https://example.com/dog.png"}
    previous, refused = None, None
    for turn in range(6):
        content = [image] * 40 if turn < 5 else "hi"
        body = {"model": CLAUDE, "input": [{"role": "user", "content": content}], "max_output_tokens": 1}
        status, answer = call(server, "budgeted2", "POST", "/v1/responses", {**body, "previous_response_id": previous})
        if status != 200:
            refused = (turn, status, answer["error"]["code"])
            break
        previous = answer["id"]
    assert refused is not None and refused[1:] == (429, "budget_exceeded"), refused
    assert refused[0] < 5  # held as its images before the history reached 200 of them


# -- 2. amplification ------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["rpm", "tpm"])
def test_a_refused_turn_does_not_read_its_conversation(server, mock, who):
    """The conversation was read (decoded, encoded again to count it) before the rate limit ran,
    and a refusal counts nothing: a key past its rpm (or a turn past its tpm) sending "hi" naming
    a 28 MB conversation of 28,000 items cost the server ~0.4 s of CPU per 100-byte request, for
    ever. The rate limit's refusal now comes before the read."""
    conversation = new_conversation(server, who)
    for _ in range(28):  # 29 of the rpm key's 30 requests this minute
        items = [{"role": "user", "content": "w" * 1000}] * 1000
        assert call(server, who, "POST", f"/v1/conversations/{conversation}/items", {"items": items})[0] == 200
    body = {"model": CLAUDE, "conversation": conversation, "input": "hi", "max_output_tokens": 1}
    refusals, elapsed = 0, 0.0
    while refusals < 8:
        started = time.monotonic()
        status, answer = call(server, who, "POST", "/v1/responses", body)
        if status == 200 and who == "rpm":  # the minute's last request
            continue
        assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded", (status, answer)
        refusals, elapsed = refusals + 1, elapsed + time.monotonic() - started
    assert elapsed < 1.0, f"8 refusals took {elapsed:.2f} s"


@pytest.mark.parametrize("route", ["create", "items.create"])
def test_one_call_adds_a_bounded_number_of_items(server, mock, route):
    """Each item costs its normalizing, encoding and compressing (twice), and a row the writer
    inserts: 300,000 empty messages (a 10 MB body) took ~5.5 s of CPU before the size bound
    refused them, and as many that fit (~8 MB) held the writer, which every trace waits on, for
    seconds more. At most 1,000 items a call now (OpenAI takes 20)."""
    conversation = new_conversation(server, "alice")
    path = "/v1/conversations" if route == "create" else f"/v1/conversations/{conversation}/items"
    many = [{"role": "user", "content": ""}] * 1_001
    status, answer = call(server, "alice", "POST", path, {"items": many})
    assert status == 400 and answer["error"]["param"] == "items", (status, answer)
    status, answer = call(server, "alice", "POST", path, {"items": many[:1_000]})
    assert status == 200, answer


# -- 3. what a conversation keeps ----------------------------------------------------------------------


def test_a_turns_item_reference_is_kept_as_the_item_it_names(server, mock):
    """A turn's ``item_reference`` to a stored answer's item was resolved for the provider but kept
    in the conversation as the reference (what items.create refuses): once that response was
    deleted, every later turn on a translated model was a 400 (a reference no provider resolves)."""
    status, first = call(server, "alice", "POST", "/v1/responses", {"model": CLAUDE, "input": "remember 42"})
    assert status == 200, first
    named = first["output"][0]["id"]
    conversation = new_conversation(server, "alice")
    turn = {"model": CLAUDE, "conversation": conversation, "input": [{"type": "item_reference", "id": named}]}
    status, answer = call(server, "alice", "POST", "/v1/responses", turn)
    assert status == 200, answer
    assert [item["type"] for item in listed(server, "alice", conversation)] == ["message", "message"]
    assert call(server, "alice", "DELETE", f"/v1/responses/{first['id']}")[0] == 200
    later = {"model": CLAUDE, "conversation": conversation, "input": "and now?"}
    status, answer = call(server, "alice", "POST", "/v1/responses", later)
    assert status == 200, answer


def test_guards_max_input_bytes_counts_the_conversation_sent(server, mock):
    """guard's ``max_input_bytes`` ("largest request body") measured the client's bytes alone: a
    turn of "hi" naming a conversation sent the provider a prompt of any size the conversation
    held (here 60 KB past a 10 KB policy), as did a translated ``previous_response_id``; while
    ``max_messages`` counted the conversation's items. Both now count what goes upstream."""
    put_module(server, "guard", {"max_input_bytes": 10_000})
    try:
        conversation = new_conversation(server, "alice", [{"role": "user", "content": "z" * 60_000}])
        body = {"model": CLAUDE, "conversation": conversation, "input": "hi"}
        status, answer = call(server, "alice", "POST", "/v1/responses", body)
        assert status == 413 and answer["error"]["code"] == "request_too_large", (status, answer)
        put_module(server, "guard", {}, enabled=False)
        status, first = call(server, "alice", "POST", "/v1/responses", {"model": CLAUDE, "input": "z" * 60_000})
        assert status == 200, first
        put_module(server, "guard", {"max_input_bytes": 10_000})
        body = {"model": CLAUDE, "previous_response_id": first["id"], "input": "hi"}
        status, answer = call(server, "alice", "POST", "/v1/responses", body)
        assert status == 413 and answer["error"]["code"] == "request_too_large", (status, answer)
    finally:
        put_module(server, "guard", {}, enabled=False)


# -- 4. the redact module and a conversation --------------------------------------------------------


def test_upstream_redaction_keeps_the_secret_out_of_the_conversation(server, mock):
    """``mode=upstream`` promises the finding is "stored and cached redacted too": a stored
    response keeps the redacted input, yet a conversation kept this turn's input as the client
    sent it (and listed it back), and the turn's stored response kept it the same way."""
    put_module(server, "redact", {"mode": "upstream"})
    try:
        conversation = new_conversation(server, "alice")
        body = {"model": CLAUDE, "conversation": conversation, "input": f"my key is {OPENAI_SECRET}"}
        status, answer = call(server, "alice", "POST", "/v1/responses", body)
        assert status == 200, answer
        assert OPENAI_SECRET not in json.dumps(mock.last("/v1/messages").json)  # as before: never upstream
        kept = listed(server, "alice", conversation)
        status, stored = call(server, "alice", "GET", f"/v1/responses/{answer['id']}/input_items")
    finally:
        put_module(server, "redact", {}, enabled=False)
    assert OPENAI_SECRET not in json.dumps(kept) and "[REDACTED:openai_key]" in json.dumps(kept[0]), kept
    assert status == 200 and OPENAI_SECRET not in json.dumps(stored), stored


@pytest.mark.parametrize("route", ["create", "items.create"])
def test_items_added_directly_are_redacted_as_a_turns_input(server, mock, route):
    """conversations.create and items.create store items without the module chain: under
    ``mode=upstream`` a secret was stored as sent (what a turn's input never is), under
    ``mode=block`` it was stored where a turn holding it is refused."""
    item = {"role": "user", "content": f"my key is {OPENAI_SECRET}"}

    def add(mode: str) -> tuple[int, dict, str | None]:
        put_module(server, "redact", {"mode": mode})
        try:
            if route == "create":
                status, made = call(server, "alice", "POST", "/v1/conversations", {"items": [item]})
                return status, made, made.get("id")
            conversation = new_conversation(server, "alice")
            status, added = call(server, "alice", "POST", f"/v1/conversations/{conversation}/items", {"items": [item]})
            return status, added, conversation
        finally:
            put_module(server, "redact", {}, enabled=False)

    status, answer, conversation = add("upstream")
    assert status == 200, answer
    kept = listed(server, "alice", conversation)
    assert OPENAI_SECRET not in json.dumps([answer, kept]) and "[REDACTED:openai_key]" in json.dumps(kept), kept
    status, answer, conversation = add("block")
    assert status == 400 and answer["error"]["code"] == "sensitive_data", answer
    assert OPENAI_SECRET not in json.dumps(answer)
    if route == "items.create":
        assert listed(server, "alice", conversation) == []
    status, kept_as_sent, conversation = add("store")  # as a turn's input (and a stored response's) is
    assert status == 200 and OPENAI_SECRET in json.dumps(listed(server, "alice", conversation))


def test_upstream_redaction_counts_a_conversation_once(server, mock):
    """``mode=upstream`` made the request's bytes anew from the rewritten body, which holds the
    conversation's items: the budget, which counts them apart, counted them twice, so a turn of
    ~110,000 tokens ($0.14 at Claude's cache-write rate) holding a secret was refused a $0.15 budget."""
    conversation = new_conversation(server, "budgeted3", [{"role": "user", "content": "z " * 220_000}])
    body = {"model": CLAUDE, "conversation": conversation, "input": f"key {OPENAI_SECRET}", "max_output_tokens": 1}
    put_module(server, "redact", {"mode": "upstream"})
    try:
        status, answer = call(server, "budgeted3", "POST", "/v1/responses", body)
    finally:
        put_module(server, "redact", {}, enabled=False)
    assert status == 200, answer
    assert OPENAI_SECRET not in json.dumps(mock.last("/v1/messages").json)


def test_a_conversation_cannot_carry_another_keys_file_to_the_provider(server, mock):
    """Was: the ownership check of file ids ran on the client's own body, before the conversation's
    items were put in front of ``input`` (and ``conversations.create`` keeps items as sent), so a
    key could send another key's file to the provider — which holds every key's files under the
    one provider key — by naming it inside a conversation: a direct request with it is a 404."""
    alice = server.openai("alice")
    secret = alice.files.create(file=("notes.txt", io.BytesIO(b"alice's notes")), purpose="user_data").id
    part = {"type": "input_file", "file_id": secret}
    direct = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [part]}]}
    assert call(server, "bob", "POST", "/v1/responses", direct)[0] == 404
    conversation = new_conversation(server, "bob", [{"type": "message", "role": "user", "content": [part]}])
    mock.clear()
    turn = {"model": "gpt-4o-mini", "input": "summarise", "conversation": conversation}
    status, answer = call(server, "bob", "POST", "/v1/responses", turn)
    assert status == 404, answer
    assert answer["error"]["param"] == "file_id"
    assert mock.last("/responses") is None  # nothing reached the provider
    own = new_conversation(server, "alice", [{"type": "message", "role": "user", "content": [part]}])
    assert call(server, "alice", "POST", "/v1/responses", {**turn, "conversation": own})[0] == 200  # her own file


def test_a_key_with_no_budget_left_is_refused_before_its_conversation_is_read(server, mock):
    """Like the rate limit's refusal (above), a used-up budget's came only after the conversation
    was read (up to the body limit, decoded), so a key with nothing left repeating a request naming
    a large conversation cost that read each time. Told apart by the answer: a body that leaves the
    conversation no room is a 400 once the conversation is read; refused first, the 429 says the budget."""
    body = {"model": CLAUDE, "input": "hi", "max_output_tokens": 1}
    assert call(server, "spent", "POST", "/v1/responses", body)[0] == 200
    done = server.cli("keys", "update", "spent", "--budget-usd", "0.000001")  # below what it spent: used up
    assert done.returncode == 0, done.stderr
    wait_for(lambda: call(server, "spent", "POST", "/v1/responses", body)[0] == 429)  # the server reloaded
    conversation = new_conversation(server, "spent", [{"role": "user", "content": "w" * 4000}])
    turn = {**body, "conversation": conversation, "input": ""}
    turn["input"] = "x" * (MAX_BODY - 1000 - len(json.dumps(turn)))  # 1,000 bytes of room: less than the conversation
    status, answer = call(server, "spent", "POST", "/v1/responses", turn)
    assert (status, answer["error"]["code"]) == (429, "budget_exceeded"), answer


def test_an_end_user_past_its_rpm_is_refused_before_its_conversation_is_read(server, mock):
    """The userlimits module's refusal too came only after the conversation was read (see above)."""
    put_module(server, "userlimits", {"rpm": 1}, enabled=True)
    try:
        headers = {**server.auth("bob"), "x-stockyard-user": "carol"}
        body = {"model": CLAUDE, "input": "hi", "max_output_tokens": 1}
        assert server.request("POST", "/v1/responses", body, headers=headers)[0] == 200  # carol's one this minute
        conversation = new_conversation(server, "bob", [{"role": "user", "content": "w" * 4000}])
        turn = {**body, "conversation": conversation, "input": ""}
        turn["input"] = "x" * (MAX_BODY - 1000 - len(json.dumps(turn)))  # leaves the conversation no room
        status, _, raw = server.request("POST", "/v1/responses", turn, headers=headers)
        assert (status, json.loads(raw)["error"]["code"]) == (429, "rate_limit_exceeded"), raw[:300]
    finally:
        put_module(server, "userlimits", {}, enabled=False)
