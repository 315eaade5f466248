"""OpenAI's Videos API (Sora, ``/v1/videos``) through Stockyard with the official openai SDK.

The real pyz against the mock upstream, whose jobs move on one step at each retrieve
(``mock_upstream.VideosState``: queued, in_progress, then completed — or failed for a prompt holding
``VIDEO_FAIL``). A video is the key's that made it (another key gets OpenAI's 404, the provider
unasked); its budget holds the worst case (seconds × the model's and size's rate per second) from
the create until Stockyard sees the job end, when one ``videos.usage`` trace bills what the provider
bills. sora-2 is $0.10 a second (10,000,000 µ¢), sora-2-pro $0.30, or $0.50 at 1024x1792/1792x1024.
Runs on PostgreSQL too (``STOCKYARD_TEST_STORE=postgresql``).
"""

from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, served, wait_for
from mock_upstream import VIDEO_BYTES, VIDEO_FAIL, VIDEOS, Reply, video_asset
from module_helpers import key_traces, new_key

ADMIN = "admin-secret-for-video-tests-0123456789"
SORA_UC = 10_000_000  # sora-2: $0.10 a second
PRO_UC, PRO_HD_UC = 30_000_000, 50_000_000  # sora-2-pro at 720p, and at 1024x1792 / 1792x1024

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """Nobody looks but the clients (the batch watch off)."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off")
    with served(pyz_path, tmp_path_factory, "videos", env) as srv:
        yield srv


def bills(server: ServerProcess, name: str) -> list[dict]:
    return [row for row in key_traces(server, name) if row["endpoint"] == "videos.usage"]


def calls_to(mock, video_id: str) -> list:
    return [r for r in mock.requests if r.path.startswith(f"/v1/videos/{video_id}")]


def make(server: ServerProcess, secret: str, body: dict) -> tuple[int, dict, bytes]:
    """A create as JSON (the raw wire), for bursts and bad input."""
    return server.request("POST", "/v1/videos", body, headers={"Authorization": f"Bearer {secret}"})


def poll(client: openai.OpenAI, video_id: str):
    return client.videos.poll(video_id, poll_interval_ms=1)


def test_the_sdk_makes_polls_lists_downloads_and_deletes_a_video(server, mock):
    """``create_and_poll`` through Stockyard (the SDK's multipart create), the assets streamed through
    byte for byte, and the video billed once, when Stockyard first sees it completed: 8 seconds of
    sora-2 at 1280x720. The create's own trace costs 0 and names the model."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    video = client.videos.create_and_poll(
        prompt="a calf in a stockyard", model="sora-2", seconds="8", size="1280x720", poll_interval_ms=1
    )
    assert video.status == "completed" and video.seconds == "8" and video.size == "1280x720"
    assert client.videos.retrieve(video.id).status == "completed"
    assert video.id in [v.id for v in client.videos.list()]
    content = client.videos.download_content(video.id)
    assert len(content.content) == VIDEO_BYTES and content.content == video_asset(video.id, "video")
    assert content.response.headers["content-type"] == "video/mp4"
    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    assert thumbnail.content == video_asset(video.id, "thumbnail")
    sent = [r for r in mock.requests if r.path == f"/v1/videos/{video.id}/content"]
    assert [r.query.get("variant") for r in sent] == [None, "thumbnail"]
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    (bill,) = bills(server, name)
    assert bill["cost_uc"] == 8 * SORA_UC and bill["cost_status"] == "exact" and bill["model"] == "sora-2"
    rows = wait_for(lambda: (r := key_traces(server, name)) and "videos.delete" in {t["endpoint"] for t in r} and r)
    create = rows[0]
    assert create["endpoint"] == "videos.create" and create["model"] == "sora-2"
    assert (create["cost_uc"], create["cost_status"]) == (0, "exact")
    endpoints = {r["endpoint"] for r in rows}
    assert {r["model"] for r in rows if r["endpoint"] == "videos.retrieve" and r["status"] == 200} == {"sora-2"}
    assert {"videos.retrieve", "videos.list", "videos.content", "videos.delete"} <= endpoints
    assert sum(r["cost_uc"] or 0 for r in rows) == 8 * SORA_UC  # a 404 has no cost


def test_a_create_with_an_input_reference_file_and_a_json_create_reach_the_provider(server, mock):
    """The SDK's form with an ``input_reference`` image goes on as a form with the file; a JSON body
    goes on as JSON, its defaults (sora-2, 4 seconds, 720x1280) billed once it completed."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    made = client.videos.create(prompt="animate this", input_reference=("ref.png", image, "image/png"))
    sent = mock.last("/v1/videos")
    assert sent.method == "POST" and image in sent.body and b'name="input_reference"' in sent.body
    status, _, raw = make(server, secret, {"prompt": "plain json"})
    assert status == 200, raw
    plain = json.loads(raw)
    assert mock.last("/v1/videos").json == {"prompt": "plain json"}
    assert poll(client, made.id).status == "completed" and poll(client, plain["id"]).status == "completed"
    assert sorted(b["cost_uc"] for b in bills(server, name)) == [4 * SORA_UC, 4 * SORA_UC]


def test_another_keys_video_is_404_and_never_reaches_the_provider(server, mock):
    """Key B cannot retrieve, download, remix or delete key A's video (OpenAI's 404, the same as for
    an unknown id), nor see it listed; none of it reaches the provider."""
    alice, _ = new_key(server, ADMIN)
    bob, bob_name = new_key(server, ADMIN)
    video = poll(server.openai(alice), server.openai(alice).videos.create(prompt="alice's").id)
    before = len(calls_to(mock, video.id))
    them = server.openai(bob)
    for call in (
        lambda: them.videos.retrieve(video.id),
        lambda: them.videos.download_content(video.id),
        lambda: them.videos.remix(video.id, prompt="mine now"),
        lambda: them.videos.delete(video.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.body["message"] == f"Video with id '{video.id}' not found."
    assert len(calls_to(mock, video.id)) == before
    assert video.id not in [v.id for v in them.videos.list()]
    assert them.videos.list(after=video.id).data == []  # another key's cursor: an empty page, unasked
    assert bills(server, bob_name) == []
    assert server.openai(alice).videos.retrieve(video.id).status == "completed"


def test_a_budgeted_keys_burst_of_videos_cannot_overspend(server, mock):
    """Each create holds its worst case (4 s × $0.10 = $0.40) until its job ends: of 20 sent at once
    against $2.00 only 5 reach the provider, the rest are 429 ``budget_exceeded``. A failed job bills
    what the provider bills for it (nothing), so its hold comes back; the completed ones' real costs
    replace theirs."""
    secret, name = new_key(server, ADMIN, budget_usd="2.00", budget_period="total")
    body = {"prompt": "a herd", "model": "sora-2", "seconds": "4"}
    before = len([r for r in mock.requests if r.path == "/v1/videos" and r.method == "POST"])
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: make(server, secret, body), range(20)))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 5 and statuses.count(429) == 15, statuses
    assert {json.loads(raw)["error"]["code"] for status, _, raw in answers if status == 429} == {"budget_exceeded"}
    assert len([r for r in mock.requests if r.path == "/v1/videos" and r.method == "POST"]) - before == 5
    assert make(server, secret, body)[0] == 429  # the five still hold their worst cases
    client = server.openai(secret)
    made = [json.loads(raw)["id"] for status, _, raw in answers if status == 200]
    assert poll(client, made[0]).status == "completed"  # $0.40 billed: its hold was exactly that
    assert make(server, secret, body)[0] == 429
    status, _, raw = make(server, secret, {**body, "model": "sora-2-pro", "size": "1792x1024"})
    assert status == 429, raw  # $2.00 of worst cases against $2.00 spent and held: a pro HD video never fits
    for video_id in made[1:]:
        assert poll(client, video_id).status == "completed"
    assert sum(b["cost_uc"] for b in bills(server, name)) == 5 * 4 * SORA_UC
    assert make(server, secret, body)[0] == 429  # $2.00 spent


def test_a_failed_video_bills_nothing_and_gives_its_hold_back(server, mock):
    """A job the provider fails (moderation) is not billed by it: its bill costs 0 and its hold
    goes back, so the budget it held is free again."""
    secret, name = new_key(server, ADMIN, budget_usd="0.40", budget_period="total")
    client = server.openai(secret)
    failing = client.videos.create(prompt=f"forbidden {VIDEO_FAIL}", seconds="4")
    assert make(server, secret, {"prompt": "another"})[0] == 429  # $0.40 held
    done = poll(client, failing.id)
    assert done.status == "failed" and done.error.code == "moderation_blocked"
    (bill,) = bills(server, name)
    assert (bill["cost_uc"], bill["cost_status"]) == (0, "exact")
    status, _, raw = make(server, secret, {"prompt": "another"})
    assert status == 200, raw


def test_a_video_is_billed_once_across_racing_retrieves_lists_and_a_delete(server, mock):
    """Many retrieves, lists and a delete race to see one job end: one bill, whoever saw it first."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.videos.create(prompt="a race", model="sora-2-pro", size="1024x1792", seconds="12")
    assert client.videos.retrieve(made.id).status == "in_progress"

    def look(i: int) -> str:
        try:
            if i % 3 == 0:
                return client.videos.retrieve(made.id).status
            if i % 3 == 1:
                return ",".join(v.status for v in client.videos.list() if v.id == made.id)
            return "deleted" if i == 17 and client.videos.delete(made.id).deleted else "skipped"
        except openai.NotFoundError:
            return "gone"

    with ThreadPoolExecutor(max_workers=12) as pool:
        seen = list(pool.map(look, range(24)))
    assert "deleted" in seen, seen
    (bill,) = bills(server, name)
    assert bill["cost_uc"] == 12 * PRO_HD_UC and bill["model"] == "sora-2-pro"


def test_a_video_that_ended_unseen_is_billed_before_its_delete(server, mock):
    """A delete takes the job away at the provider: one that ended since its key last looked is
    retrieved and billed first."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.videos.create(prompt="to forget", model="sora-2-pro", seconds="4", size="1280x720")
    assert client.videos.retrieve(made.id).status == "in_progress"
    client.videos.delete(made.id)
    (bill,) = bills(server, name)
    assert bill["cost_uc"] == 4 * PRO_UC


def test_a_remix_is_a_new_video_of_the_key_billed_at_its_sources_terms(server, mock):
    """A remix of the key's completed video is a new video, the key's, held and billed as the source's
    model, size and seconds are priced."""
    secret, name = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    client = server.openai(secret)
    source = client.videos.create_and_poll(prompt="a calf", seconds="12", poll_interval_ms=1)
    remixed = client.videos.remix(source.id, prompt="a calf, at dusk")
    assert remixed.remixed_from_video_id == source.id and remixed.id != source.id
    assert poll(client, remixed.id).status == "completed"
    assert client.videos.retrieve(remixed.id).seconds == "12"
    assert sorted(b["cost_uc"] for b in bills(server, name)) == [12 * SORA_UC, 12 * SORA_UC]
    other, _ = new_key(server, ADMIN)
    with pytest.raises(openai.NotFoundError):
        server.openai(other).videos.retrieve(remixed.id)


def test_the_keys_model_list_and_guard_hold_a_create(server, mock):
    """A key held to other models, or a model guard denies, is refused before the provider is asked."""
    secret, _ = new_key(server, ADMIN, models=["gpt-4o-mini"])
    before = len(mock.requests)
    status, _, raw = make(server, secret, {"prompt": "not for me", "model": "sora-2"})
    assert status == 403 and json.loads(raw)["error"]["code"] == "model_not_allowed", raw
    admin = {"Authorization": f"Bearer {ADMIN}"}
    status, _, raw = server.request(
        "PUT", "/api/modules/guard", {"enabled": True, "config": {"deny_models": ["sora-2-pro"]}}, headers=admin
    )
    assert status == 200, raw
    try:
        anyone, _ = new_key(server, ADMIN)
        status, _, raw = make(server, anyone, {"prompt": "denied", "model": "sora-2-pro"})
        assert status == 403 and json.loads(raw)["error"]["code"] == "model_not_allowed", raw
    finally:
        server.request("PUT", "/api/modules/guard", {"enabled": False, "config": {}}, headers=admin)
    assert not [r for r in mock.requests[before:] if r.path.startswith("/v1/videos")]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "seconds": "ten"}, "seconds"),
        ({"prompt": "x", "seconds": -4}, "seconds"),
        ({"prompt": "x", "seconds": "99999999999999999999"}, "seconds"),
        ({"prompt": "x", "model": 7}, "model"),
        ({"prompt": "x", "size": ["720x1280"]}, "size"),
    ],
)
def test_bad_create_terms_are_a_400_that_never_reaches_the_provider(server, mock, body, param):
    secret, _ = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    before = len(mock.requests)
    status, _, raw = make(server, secret, body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param, raw
    assert len(mock.requests) == before


def test_bad_requests_get_clear_errors(server, mock):
    """Malformed JSON, an unknown variant, a method a path does not take: the client's shape, never a 500."""
    secret, _ = new_key(server, ADMIN)
    auth = {"Authorization": f"Bearer {secret}"}
    status, _, raw = server.request("POST", "/v1/videos", raw=b"{not json", headers=auth)
    assert status == 400 and "error" in json.loads(raw)
    client = server.openai(secret)
    video = client.videos.create(prompt="bad asks")
    status, _, raw = server.request("GET", f"/v1/videos/{video.id}/content?variant=poster", headers=auth)
    assert status == 400 and json.loads(raw)["error"]["param"] == "variant", raw
    status, _, raw = server.request("PUT", f"/v1/videos/{video.id}", headers=auth)
    assert status == 405, raw
    status, _, raw = server.request("GET", "/v1/videos", headers={"Authorization": "Bearer sk-sy-wrong"})
    assert status == 401, raw


def test_a_video_nobody_retrieves_is_billed_by_the_watch(pyz_path, cache_home, mock, tmp_path):
    """The batch watch looks at unbilled videos every ``STOCKYARD_BATCH_POLL`` as their owner would:
    one whose client never asks again is still billed, once."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="1s")
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        secret, name = new_key(srv, ADMIN)
        made = srv.openai(secret).videos.create(prompt="fire and forget", seconds="8")
        (bill,) = wait_for(lambda: bills(srv, name), timeout=20, what="the watch's bill")
        assert bill["cost_uc"] == 8 * SORA_UC
        assert srv.openai(secret).videos.retrieve(made.id).status == "completed"
        assert len(bills(srv, name)) == 1
    finally:
        srv.stop()


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="replicas share a PostgreSQL store")
def test_two_replicas_retrieving_one_video_bill_it_once(server, mock):
    """A second replica on the same database: both see the job end at once, many times over; the
    bill is written by whichever marks it billed first, and the budget hold follows across them."""
    replica = ServerProcess(server.pyz, server.db, server.env).start()
    try:
        secret, name = new_key(server, ADMIN, budget_usd="0.80", budget_period="total")
        made = server.openai(secret).videos.create(prompt="a shared job", seconds="8")
        assert make(replica, secret, {"prompt": "no room"})[0] == 429  # the hold is seen by the replica too
        server.openai(secret).videos.retrieve(made.id)  # in progress
        with ThreadPoolExecutor(max_workers=8) as pool:
            looks = [
                pool.submit(lambda s=s: s.openai(secret).videos.retrieve(made.id).status)
                if i % 2
                else pool.submit(lambda s=s: [v.status for v in s.openai(secret).videos.list()])
                for i, s in enumerate([server, replica] * 4)
            ]
            [f.result() for f in looks]
        (bill,) = bills(server, name)
        assert bill["cost_uc"] == 8 * SORA_UC
    finally:
        replica.stop()


def test_a_video_deleted_while_it_runs_is_billed_its_whole_length_as_an_estimate(server, mock):
    """A delete of a job still running takes away what it made, which nothing here would then see: it
    is billed its whole length (an estimate), once, before the delete goes on."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.videos.create(prompt="to drop", seconds="8")
    assert client.videos.delete(made.id).deleted
    (bill,) = bills(server, name)
    assert (bill["cost_uc"], bill["cost_status"]) == (8 * SORA_UC, "estimate")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(made.id)


def test_a_lost_create_answer_finds_its_video_or_tells_the_client_not_to_retry(server, mock):
    """The provider made the video but its answer was lost: the one video of the create's terms no key
    owns becomes the key's, with its hold. One the provider never made: a 502 the SDKs do not retry."""
    secret, name = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    client = server.openai(secret)
    prompt = f"lost answer {secrets.token_hex(4)}"
    before = len(mock.requests)
    mock.enqueue(Reply(lost=True))
    found = client.videos.create(prompt=prompt, seconds="4")
    assert found.status == "queued" and found.prompt == prompt
    sent = [r.method for r in mock.requests[before:] if r.path == "/v1/videos"]
    assert sent == ["POST", "GET"]  # found among the provider's videos, never sent again
    assert [v["id"] for v in VIDEOS.videos.values() if v["prompt"] == prompt] == [found.id]
    assert poll(client, found.id).status == "completed"
    (bill,) = bills(server, name)
    assert bill["cost_uc"] == 4 * SORA_UC
    mock.enqueue(Reply(reset=True), Reply(reset=True))  # a reset at once: sent once more on a new connection
    with pytest.raises(openai.APIStatusError) as err:
        client.videos.create(prompt=f"never made {secrets.token_hex(4)}")
    assert err.value.status_code == 502 and err.value.response.headers["x-should-retry"] == "false"
    assert "the video may have been created" in err.value.message


def test_an_input_reference_naming_another_keys_file_is_404(server, mock):
    """``input_reference`` by ``file_id`` (JSON, or the form's ``input_reference[file_id]``) must be the
    key's own file: the provider would read any key's."""
    alice, _ = new_key(server, ADMIN)
    bob, _ = new_key(server, ADMIN)
    theirs = server.openai(alice).files.create(file=("ref.png", b"\x89PNG not really"), purpose="vision")
    before = len(mock.requests)
    status, _, raw = make(server, bob, {"prompt": "x", "input_reference": {"file_id": theirs.id}})
    assert status == 404 and json.loads(raw)["error"]["param"] == "input_reference", raw
    boundary = "videos-test-boundary"
    form = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in (("prompt", "x"), ("input_reference[file_id]", theirs.id))
    )
    status, _, raw = server.request(
        "POST",
        "/v1/videos",
        raw=f"{form}--{boundary}--\r\n".encode(),
        headers={"Authorization": f"Bearer {bob}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 404 and json.loads(raw)["error"]["param"] == "input_reference", raw
    assert len(mock.requests) == before
    status, _, raw = make(server, alice, {"prompt": "mine", "input_reference": {"file_id": theirs.id}})
    assert status == 200, raw


def test_openais_other_video_routes_are_a_clear_404(server, mock):
    secret, _ = new_key(server, ADMIN)
    auth = {"Authorization": f"Bearer {secret}"}
    for route in ("edits", "extensions", "characters"):
        status, _, raw = server.request("POST", f"/v1/videos/{route}", {"prompt": "x"}, headers=auth)
        assert status == 404 and "not served through Stockyard" in json.loads(raw)["error"]["message"], raw


def test_a_dated_snapshot_is_priced_as_its_model_and_an_unpriced_size_is_refused_under_a_budget(server, mock):
    """sora-2-2025-10-06 bills at sora-2's rate; a size the price table has no price for cannot be held,
    so a budgeted key is refused it (403 ``model_not_priced``) before the provider is asked."""
    secret, name = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    status, _, raw = make(server, secret, {"prompt": "dated", "model": "sora-2-2025-10-06", "seconds": 8})
    assert status == 200, raw
    assert poll(server.openai(secret), json.loads(raw)["id"]).status == "completed"
    (bill,) = bills(server, name)
    assert bill["cost_uc"] == 8 * SORA_UC and bill["model"] == "sora-2-2025-10-06"
    before = len(mock.requests)
    status, _, raw = make(server, secret, {"prompt": "wide", "model": "sora-2-pro", "size": "1920x1080"})
    assert status == 403 and json.loads(raw)["error"]["code"] == "model_not_priced", raw
    assert len(mock.requests) == before


def test_a_videos_hold_outlives_a_restart(pyz_path, cache_home, mock, tmp_path):
    """What a running video holds is in the database with it (``owned_objects.held_uc``), so a restart
    loads it again; billing it after the restart (a failed job: nothing) replaces the hold."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off")
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        secret, _ = new_key(srv, ADMIN, budget_usd="0.40", budget_period="total")
        status, _, raw = make(srv, secret, {"prompt": f"held over {VIDEO_FAIL}"})
        assert status == 200, raw
        assert make(srv, secret, {"prompt": "no room"})[0] == 429
    finally:
        srv.stop()
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        assert make(srv, secret, {"prompt": "no room"})[0] == 429  # the hold, loaded again
        assert poll(srv.openai(secret), json.loads(raw)["id"]).status == "failed"  # billed 0: the hold goes
        assert make(srv, secret, {"prompt": "room again"})[0] == 200
    finally:
        srv.stop()


def test_a_lost_create_never_takes_another_keys_video_whose_answer_is_on_its_way(server, mock):
    """Two keys create the same prompt at once. Bob's video is made and its answer is on its way back;
    Alice's create breaks after the provider read it, making nothing. Her lost-answer search sees one
    unowned video of her terms — Bob's, not recorded yet — and must not take it: she gets the 502 that
    says not to retry, and Bob's video is Bob's (Alice gets its 404)."""
    alice, _ = new_key(server, ADMIN)
    bob, _ = new_key(server, ADMIN)
    prompt = f"same prompt {secrets.token_hex(4)}"
    made, answer = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=answer, hang_started=made))
    with ThreadPoolExecutor(1) as pool:
        bobs = pool.submit(make, server, bob, {"prompt": prompt})
        assert made.wait(10)
        mock.enqueue(Reply(reset=True), Reply(reset=True))  # at once: sent once more (the keep-alive race), then lost
        status, headers, raw = make(server, alice, {"prompt": prompt})
        answer.set()
        bob_status, _, bob_raw = bobs.result(10)
    assert bob_status == 200, bob_raw
    video_id = json.loads(bob_raw)["id"]
    assert status == 502 and headers.get("x-should-retry") == "false", raw
    with pytest.raises(openai.NotFoundError):
        server.openai(alice).videos.retrieve(video_id)
    assert server.openai(bob).videos.retrieve(video_id).id == video_id


def test_a_delete_whose_look_fails_is_refused_not_left_unbilled(server, mock):
    """A completed video nobody retrieved through Stockyard (its content downloaded: that bills
    nothing) is deleted while the provider fails the look the delete makes first (a 500, a 429):
    the delete went on, its hold went back and the video was never billed. Now the delete is refused
    (nothing deleted, the SDK may retry) and the next one bills it once."""
    secret, name = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    client = server.openai(secret)
    made = client.videos.create(prompt=f"downloaded then deleted {secrets.token_hex(4)}", seconds="8")
    with VIDEOS.lock:
        VIDEOS.videos[made.id].update(status="completed", progress=100)  # it ran to its end at the provider
    assert client.videos.download_content(made.id).content == video_asset(made.id, "video")
    mock.enqueue(Reply(status=500))
    status, _, raw = server.request("DELETE", f"/v1/videos/{made.id}", headers={"Authorization": f"Bearer {secret}"})
    assert status >= 500 and json.loads(raw)["error"]["code"], raw
    assert made.id in VIDEOS.videos and bills(server, name) == []
    assert client.videos.delete(made.id).deleted
    (bill,) = bills(server, name)
    assert (bill["cost_uc"], bill["cost_status"]) == (8 * SORA_UC, "exact")
