"""A streamed Images API request (``stream: true`` on a gpt-image model: generations and edits) is
relayed as a stream, event by event as the provider draws, with the official SDK as the client.

Was: the provider's events were read whole and handed over once every image was done, so a client
showing partial images saw nothing until the end (and a long draw could pass its read timeout).
Billing: a whole stream is its completed events' usage; a stream cut before its last image (the
provider broke, the client left) adds the image being drawn as the request asked for it (its quality
and size in its model's table) and 100 tokens for each of its partial images relayed, an estimate.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import openai
import pytest
from conftest import ServerProcess, leave_stream, mock_env, served, wait_for
from mock_upstream import IMAGE_USAGE, PNG_1PX, Reply, image_stream, multipart_form
from openai import OpenAI

ADMIN = "admin-key-for-image-stream-0123456789"
# gpt-image-1 in µ¢ a token (prices.json: text in $5, image in $10, output $40 per 1M)
TEXT_IN, IMAGE_IN, IMAGE_OUT = 500, 1000, 4000
PNG = b"\x89PNG\r\n\x1a\n" + b"p" * 3000
MEDIUM_TALL = 1584  # gpt-image-1 medium 1024x1536 (imagegen.GPT_IMAGE_1_TOKENS)


def image_cost(partials: int) -> int:
    """µ¢ of one image as the mock reports it (its usage: 10 text and 40 image tokens in, 4,160
    out) with ``partials`` partial images (100 output tokens each)."""
    details = IMAGE_USAGE["input_tokens_details"]
    out = IMAGE_USAGE["output_tokens"] + 100 * partials
    return details["text_tokens"] * TEXT_IN + details["image_tokens"] * IMAGE_IN + out * IMAGE_OUT


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    keys = {"free": [], "budget": ["--budget-usd", "5", "--budget-period", "total"]}
    with served(pyz_path, tmp_path_factory, "imgstream", env, keys) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh_mock(mock):
    mock.clear_replies()
    yield
    mock.clear_replies()


def sdk(server: ServerProcess, who: str = "free") -> OpenAI:
    """The official client; a read that waits 10 s fails the test instead of hanging it."""
    return server.openai(who, timeout=10)


def draw(client: OpenAI, route: str, **fields):
    """``images.generate`` or ``images.edit`` with ``stream=True``: the SDK's event stream."""
    if route == "edit":
        image = ("in.png", PNG, "image/png")
        return client.images.edit(model="gpt-image-1", image=image, prompt="add a boat", **fields)
    return client.images.generate(model="gpt-image-1", prompt="a cat", **fields)


def post(server: ServerProcess, body: dict) -> tuple[int, dict, bytes]:
    return server.request("POST", "/v1/images/generations", body, server.auth("free"))


def admin(server: ServerProcess, path: str) -> dict:
    status, _, data = server.request("GET", path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, data[:300]
    return json.loads(data)


@pytest.mark.parametrize("route,kind", [("generate", "image_generation"), ("edit", "image_edit")])
def test_partial_images_reach_the_client_while_the_provider_still_draws(server, mock, route, kind):
    """The provider holds its stream after the first partial image until the test has read it:
    read whole, the client would see nothing (its 10 s read timeout fails the test)."""
    gate = threading.Event()
    mock.enqueue(Reply(held=gate, held_after=1))
    try:
        stream = draw(sdk(server), route, stream=True, partial_images=2)
        events = iter(stream)
        first = next(events)
        assert (first.type, first.partial_image_index, first.b64_json) == (f"{kind}.partial_image", 0, PNG_1PX)
        assert not gate.is_set()  # read while the provider is still drawing
        gate.set()
        rest = list(events)
    finally:
        gate.set()
    assert [e.type for e in rest] == [f"{kind}.partial_image", f"{kind}.completed"]
    assert rest[-1].usage.output_tokens == IMAGE_USAGE["output_tokens"] + 200 and rest[-1].size == "1024x1024"
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["outcome"], trace["status"]) == (1, "ok", 200), trace
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", image_cost(2)), trace


def test_a_streamed_edit_sends_its_form_as_asked(server, mock):
    """The form's ``stream`` and ``partial_images`` reach the provider as the client sent them."""
    events = list(draw(sdk(server), "edit", stream=True, partial_images=1, n=2))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"] * 2
    fields, files = multipart_form(mock.last("/v1/images/edits"))
    assert (fields["stream"], fields["partial_images"], fields["n"]) == ("true", "1", "2")
    assert files == [("image", "in.png", PNG)]


def test_a_stream_of_several_images_is_billed_each_completed_images_usage(server, mock):
    stream = draw(sdk(server), "generate", stream=True, partial_images=1, n=3)
    assert [e.type for e in stream].count("image_generation.completed") == 3
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["cost_status"], trace["cost_uc"], trace["usage_estimated"]) == ("exact", 3 * image_cost(1), 0)
    assert trace["completion_tokens"] == 3 * (IMAGE_USAGE["output_tokens"] + 100), trace


def test_a_stream_the_provider_breaks_ends_with_an_error_event_and_bills_the_image_being_drawn(server, mock):
    """Two partial images went out, then the provider's connection broke: the client gets OpenAI's
    error event (the SDK raises it), never a hang; the image is billed as asked (medium 1024x1536:
    1,584 tokens) and its two partials 100 each, an estimate (no usage ever came)."""
    mock.enqueue(Reply(cut_after=2))
    seen = []
    stream = draw(sdk(server), "generate", stream=True, partial_images=3, quality="medium", size="1024x1536")
    with pytest.raises(openai.APIError) as err:
        for event in stream:
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"] * 2
    assert "stream broke" in err.value.message and err.value.body["code"].startswith("upstream_"), err.value.body
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["status"], trace["error_type"]) == ("stream_broken", 200, err.value.body["code"])
    assert (trace["cost_status"], trace["usage_estimated"]) == ("estimate", 1), trace
    assert trace["cost_uc"] == (MEDIUM_TALL + 200) * IMAGE_OUT, trace


def put_timeout(server: ServerProcess, enabled: bool) -> None:
    """The request deadline (the timeout module: 1 s) on or off, in effect on return."""
    config = {"deadline_s": 1} if enabled else {}
    status, _, data = server.request(
        "PUT",
        "/api/modules/timeout",
        {"enabled": enabled, "config": config},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert status == 200, data[:300]


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_bills_the_image_being_drawn(server, mock):
    """The provider goes quiet after the first partial image and the request's deadline passes:
    the client gets the deadline's error event at once (not at the provider's pace), and the image
    being drawn is billed as asked with its partial image."""
    gate = threading.Event()
    mock.enqueue(Reply(held=gate, held_after=1))
    put_timeout(server, True)
    seen = []
    try:
        stream = draw(sdk(server), "generate", stream=True, partial_images=2, quality="low", size="1536x1024")
        with pytest.raises(openai.APIError) as err:
            for event in stream:
                seen.append(event.type)
    finally:
        gate.set()
        put_timeout(server, False)
    assert seen == ["image_generation.partial_image"] and err.value.body["code"] == "deadline_exceeded"
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["error_type"]) == ("stream_broken", "deadline_exceeded"), trace
    assert (trace["cost_status"], trace["cost_uc"]) == ("estimate", (400 + 100) * IMAGE_OUT), trace


def test_a_cut_after_some_images_bills_their_usage_and_estimates_the_next(server, mock):
    """One image completed (its usage reported), the second had one partial image out: the first is
    billed its usage, the second as asked with its partial image."""
    mock.enqueue(Reply(cut_after=3))  # partial, completed, partial of the second
    body = {"model": "gpt-image-1", "prompt": "a cat", "stream": True, "n": 2, "partial_images": 1}
    status, headers, raw = post(server, {**body, "quality": "medium", "size": "1024x1536"})
    assert status == 200 and raw.count(b"event: image_generation.completed") == 1, raw[:300]
    last = raw.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    error = json.loads(last.split(b"data:", 1)[1])["error"]  # OpenAI's error event ends it
    assert error["code"].startswith("upstream_") and "stream broke" in error["message"], error
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["cost_status"]) == ("stream_broken", "estimate"), trace
    assert trace["cost_uc"] == image_cost(1) + (MEDIUM_TALL + 100) * IMAGE_OUT, trace


def test_an_error_event_from_the_provider_is_relayed_and_traced(server, mock):
    """The provider says in its stream that the draw failed: the client gets its error event as
    sent, the trace says the answer broke and why, the partial image relayed is billed."""
    failed = {"error": {"message": "The image could not be finished.", "type": "server_error", "code": "server_error"}}
    events = image_stream("gpt-image-1", 1, {"partial_images": 2})[:1] + [f"event: error\ndata: {json.dumps(failed)}"]
    mock.enqueue(Reply(sse=events))
    stream = draw(sdk(server), "generate", stream=True, partial_images=2, quality="low", size="1024x1024")
    with pytest.raises(openai.APIError) as err:
        list(stream)
    assert err.value.message == "The image could not be finished."
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["error_type"]) == ("stream_broken", "upstream_server_error"), trace
    assert trace["error_message"] == "The image could not be finished."
    assert (trace["cost_status"], trace["cost_uc"]) == ("estimate", (272 + 100) * IMAGE_OUT), trace


def test_a_client_leaving_on_the_providers_error_event_keeps_the_providers_failure(server, mock):
    """The SDK raises on the provider's error event and closes the stream; the relay, watching the
    client, may see it leave before the provider's stream ends (here the provider stalls after the
    event). Was: a CI flake, the trace said ``client_disconnected`` and hid the provider's failure.
    The provider's error reached the client first: the trace keeps it (``stream_broken``)."""
    failed = {"error": {"message": "The image could not be finished.", "type": "server_error", "code": "server_error"}}
    events = image_stream("gpt-image-1", 1, {"partial_images": 2})[:1] + [f"event: error\ndata: {json.dumps(failed)}"]
    hung_up = threading.Event()
    mock.enqueue(Reply(sse=[*events, ": still thinking"], hang_after=2, hang_s=30, hung_up=hung_up))
    stream = draw(sdk(server), "generate", stream=True, partial_images=2, quality="low", size="1024x1024")
    with pytest.raises(openai.APIError) as err:
        list(stream)
    stream.close()
    assert err.value.message == "The image could not be finished."
    assert hung_up.wait(15), "the provider's connection closed once the client left"
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["error_type"]) == ("stream_broken", "upstream_server_error"), trace
    assert trace["error_message"] == "The image could not be finished."


def test_an_image_completed_without_its_usage_is_billed_as_asked(server, mock):
    """A provider that leaves the count out of its completed event (the spec says it is there for
    GPT image models): the image is billed as the request asked for it, with its partial image, an
    estimate, as the image tool's are; never 0 as if it were free."""
    events = image_stream("gpt-image-1", 1, {"partial_images": 1})
    done = json.loads(events[-1].split("data: ", 1)[1])
    del done["usage"]
    mock.enqueue(Reply(sse=[events[0], f"event: image_generation.completed\ndata: {json.dumps(done)}"]))
    stream = draw(sdk(server), "generate", stream=True, partial_images=1, quality="low", size="1024x1024")
    assert [e.type for e in stream] == ["image_generation.partial_image", "image_generation.completed"]
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["cost_status"]) == ("ok", "estimate"), trace
    assert trace["cost_uc"] == (272 + 100) * IMAGE_OUT, trace


def test_a_client_that_leaves_after_a_partial_image_pays_for_the_image(server, mock):
    """The client closes its socket once the first partial image arrived: the image being drawn is
    billed as asked, with the partial images relayed, to the key's budget too."""
    gate, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=gate, held_after=1, hang_s=60, hang_after=2, hung_up=hung_up))
    before = spend(server)
    body = {"model": "gpt-image-1", "prompt": "a cat", "stream": True, "partial_images": 2}
    body |= {"quality": "medium", "size": "1024x1536"}
    try:
        seen = b'"partial_image_index":0'
        trace_id = leave_stream(server, "/v1/images/generations", body, seen, server.keys["budget"])
    finally:
        gate.set()
    assert hung_up.wait(15), "the provider's connection was closed when the client's was found gone"
    trace = wait_for(lambda: server.trace(trace_id), 15, "the trace")
    assert (trace["outcome"], trace["cost_status"]) == ("client_disconnected", "estimate"), trace
    # the second partial may have been read from the provider before the write to the client failed
    assert (MEDIUM_TALL + 100) * IMAGE_OUT <= trace["cost_uc"] <= (MEDIUM_TALL + 200) * IMAGE_OUT, trace
    assert wait_for(lambda: spend(server) - before == trace["cost_uc"] or None, 10, "the budget settled")


def spend(server: ServerProcess) -> int:
    return next(k["spend_uc"] for k in admin(server, "/api/keys")["keys"] if k["name"] == "budget")


def test_a_model_that_answers_whole_is_answered_whole_as_before(server, mock):
    """``stream: true`` on a model that does not stream (DALL·E: the provider answers JSON) passes
    as it did: the JSON answer, billed by its images."""
    body = {"model": "dall-e-2", "prompt": "a cat", "stream": True}
    status, headers, raw = post(server, body)
    assert status == 200 and headers["content-type"].startswith("application/json"), raw[:300]
    assert len(json.loads(raw)["data"]) == 1
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", 2_000_000), trace  # $0.02 a 1024x1024 image


def test_a_streamed_answers_big_images_are_traced_only_up_to_the_body_cap(server, mock):
    """The trace keeps a stream's first 256 KB, as it does a whole answer's; the client gets all."""
    big = {"partial_images": 1}
    events = [e.replace(PNG_1PX, "QUJD" * 150_000) for e in image_stream("gpt-image-1", 1, big)]
    mock.enqueue(Reply(sse=events))
    stream = draw(sdk(server), "generate", stream=True, partial_images=1)
    got = list(stream)
    assert [len(e.b64_json) for e in got] == [600_000, 600_000]
    trace_id = stream.response.headers["x-stockyard-trace-id"]
    server.trace(trace_id)
    detail = admin(server, f"/api/traces/{trace_id}")
    assert detail["response_truncated"] is True and len(detail["response_body"]) <= 256 * 1024
    assert detail["response_body"].startswith("event: image_generation.partial_image")
    assert (detail["cost_status"], detail["cost_uc"]) == ("exact", image_cost(1))


def test_the_answer_is_server_sent_events_as_the_provider_named_them(server, mock):
    """The client gets Server-Sent Events, each under the event name the provider gave it."""
    req = urllib.request.Request(
        server.url + "/v1/images/generations",
        data=json.dumps({"model": "gpt-image-1", "prompt": "x", "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {server.keys['free']}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read()
    assert raw.startswith(b"event: image_generation.completed\ndata: ")


def test_a_cut_stream_of_a_model_without_its_own_table_bills_no_more_than_it_held(server, mock):
    """An image model priced by the operator (no token table of its own: its hold is its largest
    image, ``imagegen.images_api_tokens``), asked for a size past gpt-image-1's. Was: the image being
    drawn when the stream broke was estimated by gpt-image-1's table scaled to that size (3072x3072:
    37,440 tokens), six times what its budget held for it (6,240), so the bill passed the hold. Now the
    estimate is never more than the hold's image."""
    status, _, data = server.request(
        "POST",
        "/api/prices",
        {"model": "gpt-image-9", "input": "5", "output": "40", "media_output": "40"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert status == 200, data
    mock.enqueue(Reply(cut_after=1))
    body = {"model": "gpt-image-9", "prompt": "a cat", "stream": True, "partial_images": 1, "size": "3072x3072"}
    status, headers, _ = post(server, body)
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["cost_status"]) == ("stream_broken", "estimate"), trace
    assert trace["completion_tokens"] == 6240 + 100, trace  # gpt-image-1's largest image and its partial
