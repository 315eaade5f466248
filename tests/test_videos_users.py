"""Video creates and remixes held to end users' limits (``userlimits``) and renamed by ``alias``.

The real pyz against the mock upstream's Videos API (``mock_upstream.VideosState``: a job moves on
one step at each retrieve). An end user (``x-stockyard-user`` or the body's ``user``) with a budget
has a video's worst case (seconds × its rate) held on that budget from the create until the video
is billed, as the key's budget holds it; the bill replaces the hold and counts as the end user's
spend. An aliased model goes out as its target, held and billed at the target's price.
sora-2 is $0.10 a second, sora-2-pro $0.30 at 720x1280. Runs on PostgreSQL too.
"""

from __future__ import annotations

import json

import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import VIDEO_FAIL, video_asset
from module_helpers import ADMIN_KEY, api, disable_all, key_traces, new_key, put_module

SORA_UC, PRO_UC = 10_000_000, 30_000_000  # µ¢ a second

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """Nobody looks but the clients (the batch watch off)."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_BATCH_POLL="off")
    with served(pyz_path, tmp_path_factory, "videos-users", env) as srv:
        yield srv


@pytest.fixture(autouse=True)
def modules_off(server):
    disable_all(server)
    yield
    disable_all(server)


def creates(mock) -> int:
    return len([r for r in mock.requests if r.path == "/v1/videos" and r.method == "POST"])


def make(server: ServerProcess, secret: str, body: dict, user: str | None = None) -> tuple[int, dict]:
    """A JSON create, for ``user`` (by the header) when given: (status, its JSON)."""
    headers = {"Authorization": f"Bearer {secret}", **({"x-stockyard-user": user} if user else {})}
    status, _, raw = server.request("POST", "/v1/videos", body, headers=headers)
    return status, json.loads(raw)


def user_spend(server: ServerProcess, user: str) -> int:
    """What ``/api/costs?by=user`` counts for ``user`` (µ¢), once the rollups have it."""
    status, report = api(server, "GET", "/api/costs?by=user")
    assert status == 200, report
    return sum(r["cost_uc"] for r in report["rows"] if r["user"] == user)


def user_budget(server: ServerProcess, usd: str, **more) -> None:
    put_module(server, "userlimits", {"budget_usd": usd, "budget_period": "total", **more})


def test_an_end_users_budget_holds_a_video_and_counts_its_cost(server, mock):
    """An end user held to $1.00: a $0.40 sora-2 video is made, a $1.20 sora-2-pro one is refused with
    the end user's ``budget_exceeded`` before the provider; a second $0.40 fits beside the first's
    hold, a third does not. Once billed, the videos' cost is the end user's spend (``by=user``, the
    usage traces name the user). Retrieve, content, list and delete are not refused meanwhile."""
    user_budget(server, "1.00")
    secret, name = new_key(server)
    client = server.openai(secret, default_headers={"x-stockyard-user": "eve-videos"})
    first = client.videos.create(prompt="a calf", model="sora-2", seconds="4")
    before = creates(mock)
    with pytest.raises(openai.RateLimitError) as refused:
        client.videos.create(prompt="a dear one", model="sora-2-pro", seconds="4")
    assert refused.value.body["code"] == "budget_exceeded", refused.value.body
    assert "end user 'eve-videos'" in refused.value.body["message"]
    assert creates(mock) == before  # refused before the provider
    second = client.videos.create(prompt="another calf", model="sora-2", seconds="4")
    status, body = make(server, secret, {"prompt": "a third", "seconds": "4"}, user="eve-videos")
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert creates(mock) == before + 1
    other_status, _ = make(server, secret, {"prompt": "someone else's", "seconds": "4"}, user="frank-videos")
    assert other_status == 200  # another end user's budget is their own
    for made in (first, second):  # looks and downloads hold nothing
        assert client.videos.poll(made.id, poll_interval_ms=1).status == "completed"
        assert client.videos.download_content(made.id).content == video_asset(made.id, "video")
    assert {first.id, second.id} <= {v.id for v in client.videos.list()}
    assert client.videos.delete(second.id).deleted
    rows = key_traces(server, name, ("endpoint", "cost_uc", "end_user"))
    bills = [r for r in rows if r["endpoint"] == "videos.usage"]
    assert sorted((b["cost_uc"], b["end_user"]) for b in bills if b["end_user"] == "eve-videos") == [
        (4 * SORA_UC, "eve-videos"),
        (4 * SORA_UC, "eve-videos"),
    ]
    wait_for(lambda: user_spend(server, "eve-videos") == 8 * SORA_UC, what="the end user's spend")
    status, body = make(server, secret, {"prompt": "still over", "seconds": "4"}, user="eve-videos")
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body  # $0.80 spent, $0.40 asked


def test_a_failed_video_gives_the_end_users_hold_back(server, mock):
    """A video the provider fails bills nothing: the end user's hold goes back with the key's, so
    the budget it held is free again. The body's ``user`` names the end user as a chat call's does."""
    user_budget(server, "0.40")
    secret, _ = new_key(server)
    status, failing = make(server, secret, {"prompt": f"no {VIDEO_FAIL}", "seconds": "4", "user": "gail-videos"})
    assert status == 200, failing
    status, body = make(server, secret, {"prompt": "held out", "seconds": "4"}, user="gail-videos")
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body
    client = server.openai(secret)
    assert client.videos.poll(failing["id"], poll_interval_ms=1).status == "failed"
    status, body = make(server, secret, {"prompt": "now it fits", "seconds": "4"}, user="gail-videos")
    assert status == 200, body


def test_a_remix_is_held_to_the_end_users_budget(server, mock):
    """A remix is a new video at its source's terms: held on the end user's budget as a create is."""
    user_budget(server, "0.50")
    secret, _ = new_key(server)
    client = server.openai(secret, default_headers={"x-stockyard-user": "hal-videos"})
    source = client.videos.create_and_poll(prompt="a gate", seconds="4", poll_interval_ms=1)
    remixes = len([r for r in mock.requests if r.path.endswith("/remix")])
    with pytest.raises(openai.RateLimitError) as refused:  # $0.40 spent, $0.40 more asked
        client.videos.remix(source.id, prompt="the gate at night")
    assert refused.value.body["code"] == "budget_exceeded"
    assert len([r for r in mock.requests if r.path.endswith("/remix")]) == remixes
    unlimited = server.openai(secret)  # no end user named: not this module's
    assert unlimited.videos.remix(source.id, prompt="the gate at dawn").status in ("queued", "in_progress")


def test_an_end_users_rpm_counts_video_creates(server, mock):
    """``userlimits`` rpm=2: a third create by the same end user within the minute is a 429."""
    put_module(server, "userlimits", {"rpm": 2})
    secret, _ = new_key(server)
    assert [make(server, secret, {"prompt": f"p{i}"}, user="ian-videos")[0] for i in range(3)] == [200, 200, 429]
    assert make(server, secret, {"prompt": "another user"}, user="jo-videos")[0] == 200
    before = creates(mock)
    status, body = make(server, secret, {"prompt": "a bad user", "user": 5})
    assert status == 400 and body["error"]["param"] == "user", body  # as a chat call's, before the provider
    assert creates(mock) == before


def test_an_aliased_model_goes_out_renamed_and_is_held_at_its_target(server, mock):
    """``alias``: ``house-video`` → ``sora-2-pro``. The create goes out as sora-2-pro (JSON and the
    SDK's form alike), is held at its $0.30 a second (a $2.00 key fits a 4-second video at that
    rate, not an 8-second one, which at sora-2's $0.80 would fit) and billed at it. A target naming
    its provider (``openai/sora-2``) goes to that provider as the bare model."""
    put_module(server, "alias", {"aliases": {"house-video": "sora-2-pro", "plain-video": "openai/sora-2"}})
    put_module(server, "budget")  # the key's budget
    secret, name = new_key(server, budget_usd="2.00", budget_period="total")
    before = creates(mock)
    status, body = make(server, secret, {"prompt": "too long", "model": "house-video", "seconds": "8"})
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert creates(mock) == before
    client = server.openai(secret)
    made = client.videos.create(prompt="short", model="house-video", seconds="4")
    sent = mock.last("/v1/videos")
    assert b'name="model"\r\n\r\nsora-2-pro\r\n' in sent.body and b"house-video" not in sent.body
    assert client.videos.poll(made.id, poll_interval_ms=1).status == "completed"
    status, body = make(server, secret, {"prompt": "json", "model": "plain-video", "seconds": "4"})
    assert status == 200, body
    assert mock.last("/v1/videos").json == {"prompt": "json", "model": "sora-2", "seconds": "4"}

    def created() -> list[str]:
        return [r["model"] for r in key_traces(server, name) if r["endpoint"] == "videos.create" and r["status"] == 200]

    wait_for(lambda: len(created()) == 2, what="the creates' traces")
    assert created() == ["house-video", "plain-video"]  # the trace's model as asked
    assert [r["cost_uc"] for r in key_traces(server, name) if r["endpoint"] == "videos.usage"] == [4 * PRO_UC]


def test_an_end_users_refusal_gives_the_keys_hold_back(server, mock):
    """Under a $1.00 key budget and a $0.40 end-user budget, an $0.80 video for the end user is the
    end user's refusal, and the key's $0.80 held a moment for it comes back: the key then makes an
    $0.80 video for nobody in particular (a kept hold would leave only $0.20)."""
    put_module(server, "budget")
    user_budget(server, "0.40")
    secret, _ = new_key(server, budget_usd="1.00", budget_period="total")
    status, body = make(server, secret, {"prompt": "too long", "seconds": "8"}, user="kim-videos")
    assert status == 429 and "end user 'kim-videos'" in body["error"]["message"], body
    status, body = make(server, secret, {"prompt": "the key's own", "seconds": "8"})
    assert status == 200, body


def test_a_video_bill_names_its_end_user_without_a_budget(server, mock):
    """The end user a create names is the bill's, budget or not: with ``userlimits`` off (``user`` in
    the body) and on with an rpm and no budget (the header), each completed video's cost shows under
    its end user in ``/api/costs?by=user`` and on its ``videos.usage`` trace."""
    secret, name = new_key(server)
    client = server.openai(secret)
    status, off = make(server, secret, {"prompt": "nobody limits", "seconds": "4", "user": "u1"})
    assert status == 200, off
    assert client.videos.poll(off["id"], poll_interval_ms=1).status == "completed"
    wait_for(lambda: user_spend(server, "u1") == 4 * SORA_UC, what="u1's billed video")
    put_module(server, "userlimits", {"rpm": 100})  # on, no budget
    status, rpm_only = make(server, secret, {"prompt": "counted, not held", "seconds": "4"}, user="u2")
    assert status == 200, rpm_only
    assert client.videos.poll(rpm_only["id"], poll_interval_ms=1).status == "completed"
    wait_for(lambda: user_spend(server, "u2") == 4 * SORA_UC, what="u2's billed video")
    rows = key_traces(server, name, ("endpoint", "cost_uc", "end_user"))
    assert sorted((r["end_user"], r["cost_uc"]) for r in rows if r["endpoint"] == "videos.usage") == [
        ("u1", 4 * SORA_UC),
        ("u2", 4 * SORA_UC),
    ]
