"""OpenAI's JSON image edit (``POST /v1/images/edits`` with ``images``: references by ``image_url`` or
``file_id``, and an optional ``mask``) beside the multipart form: the same route, budget hold and
pricing, another key's files refused before the provider is asked, bad shapes a 400 in OpenAI's
shape. The official SDK's ``images.edit`` sends only the form, so its generic ``post`` sends the JSON."""

from __future__ import annotations

import base64
import io
import json
import re
from decimal import Decimal

import httpx2 as httpx
import openai
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import PNG_1PX, multipart_form

ADMIN = "admin-key-for-json-image-edits-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 3000
URL = "https://images.example.com/lighthouse.png"
# gpt-image-1 per 1M: text in $5, image in $10, image out $40; the mock's usage: 10 text + 40 image in, 4160 out
EDIT_COST_UC = (10 * 500_000_000 + 40 * 1_000_000_000 + 4160 * 4_000_000_000) // 10**6


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    budget = ["--budget-period", "day", "--budget-usd"]
    keys = {"alice": [], "bob": [], "tight": [*budget, "0.01"], "roomy": [*budget, "0.05"]}
    with served(pyz_path, tmp_path_factory, "json-edits", env, keys) as srv:
        yield srv


def edit(server: ServerProcess, key: str, body: dict, **options) -> httpx.Response:
    """A JSON edit sent by the official SDK (its generic ``post``: ``images.edit`` sends a form);
    the raw answer, for its headers. An error status raises the SDK's own exception."""
    return server.openai(key).post("/images/edits", body=body, cast_to=httpx.Response, **options)


def edits_sent(mock) -> list[dict]:
    return [r.json for r in mock.requests if r.path.endswith("/images/edits")]


def test_a_json_edit_by_url_is_relayed_as_sent_and_billed_as_a_form_edit(server, mock):
    mock.clear()
    body = {"model": "gpt-image-1", "prompt": "add a boat", "images": [{"image_url": URL}], "n": 2}
    answer = edit(server, "alice", body)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 2
    assert edits_sent(mock) == [body]  # JSON in, the same JSON out
    trace = server.trace(answer.headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["model"], trace["status"]) == ("image_edits", "gpt-image-1", 200)
    assert (trace["cost_uc"], trace["cost_status"]) == (EDIT_COST_UC, "exact")  # as the form edit's (test_media)


def test_a_json_edit_naming_no_model_goes_to_openais_json_default(server, mock):
    """A JSON edit takes GPT image models only: OpenAI's default for one is gpt-image-1.5 (the
    form's, dall-e-2, cannot take it), and routing needs the name."""
    mock.clear()
    answer = edit(server, "alice", {"prompt": "x", "images": [{"image_url": URL}]})
    assert answer.status_code == 200
    assert edits_sent(mock)[0]["model"] == "gpt-image-1.5"
    assert server.trace(answer.headers["x-stockyard-trace-id"])["model"] == "gpt-image-1.5"


def test_a_streamed_json_edit_is_relayed_event_by_event(server, mock):
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": URL}], "stream": True, "partial_images": 2}
    with server.openai("alice").post(
        "/images/edits",
        body=body,
        cast_to=openai.types.ImagesResponse,
        stream=True,
        stream_cls=openai.Stream[openai.types.ImageEditStreamEvent],
    ) as events:
        kinds = [event.type for event in events]
        trace_id = events.response.headers["x-stockyard-trace-id"]
    assert kinds == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"]
    trace = server.trace(trace_id)
    assert (trace["status"], trace["outcome"], trace["cost_status"]) == (200, "ok", "exact")
    assert trace["cost_uc"] == EDIT_COST_UC + 200 * 4_000_000_000 // 10**6  # its 2 partials' 100 tokens each


def test_another_keys_file_is_not_found_before_the_provider_is_asked(server, mock):
    alices = server.openai("alice").files.create(file=("in.png", io.BytesIO(PNG)), purpose="vision").id
    bobs = server.openai("bob").files.create(file=("in.png", io.BytesIO(PNG)), purpose="vision").id
    for images, mask, param in (
        ([{"file_id": alices}], None, "images[0].file_id"),
        ([{"image_url": URL}, {"file_id": alices}], None, "images[1].file_id"),
        ([{"file_id": bobs}], {"file_id": alices}, "mask.file_id"),
    ):
        mock.clear()
        body = {"model": "gpt-image-1", "prompt": "x", "images": images, **({"mask": mask} if mask else {})}
        with pytest.raises(openai.NotFoundError) as err:
            edit(server, "bob", body)
        assert err.value.body["param"] == param and alices in err.value.body["message"]
        assert err.value.body["type"] == "invalid_request_error"
        assert edits_sent(mock) == []  # never asked
    mock.clear()
    own = {"model": "gpt-image-1", "prompt": "x", "images": [{"file_id": bobs}], "mask": {"file_id": bobs}}
    assert edit(server, "bob", own).status_code == 200  # the key's own files go on
    assert edits_sent(mock) == [own]


BAD = [  # (body fields beside model and prompt, the param the 400 names)
    ({}, "images"),
    ({"images": None}, "images"),
    ({"images": {"image_url": URL}}, "images"),
    ({"images": URL}, "images"),
    ({"images": []}, "images"),
    ({"images": [{"image_url": URL}] * 17}, "images"),
    ({"images": [URL]}, "images[0]"),
    ({"images": [{}]}, "images[0]"),
    ({"images": [{"url": URL}]}, "images[0]"),
    ({"images": [{"image_url": URL, "file_id": "file-1"}]}, "images[0]"),
    ({"images": [{"image_url": URL}, {"image_url": 5}]}, "images[1].image_url"),
    ({"images": [{"file_id": ["file-1"]}]}, "images[0].file_id"),
    ({"images": [{"file_id": ""}]}, "images[0].file_id"),
    ({"images": [{"image_url": URL}], "mask": URL}, "mask"),
    ({"images": [{"image_url": URL}], "mask": {"image_url": URL, "detail": "high"}}, "mask"),
    ({"image": URL}, "images"),  # the form's field name: the JSON edit's is 'images'
]


@pytest.mark.parametrize("fields, param", BAD, ids=[json.dumps(f)[:60] for f, _ in BAD])
def test_a_malformed_json_edit_is_a_400_naming_its_field_unasked(server, mock, fields, param):
    mock.clear()
    with pytest.raises(openai.BadRequestError) as err:
        edit(server, "alice", {"model": "gpt-image-1", "prompt": "x", **fields})
    error = err.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    assert param.split("[")[0].split(".")[0] in error["message"], error
    if "image" in fields:
        assert "'images'" in error["message"] and "multipart" in error["message"]
    assert edits_sent(mock) == []


def test_a_body_neither_form_nor_json_is_a_400_naming_both(server, mock):
    status, _, answer = server.request(
        "POST", "/v1/images/edits", raw=b"prompt=x", headers={**server.auth("alice"), "Content-Type": "text/plain"}
    )
    error = json.loads(answer)["error"]
    assert status == 400 and error["code"] == "invalid_content_type", answer
    assert "multipart/form-data" in error["message"] and "application/json" in error["message"]
    status, _, answer = server.request(
        "POST",
        "/v1/images/edits",
        raw=b"{not json",
        headers={**server.auth("alice"), "Content-Type": "application/json"},
    )
    assert status == 400 and json.loads(answer)["error"]["code"] == "invalid_json", answer


def data_url(size: int) -> str:
    """A PNG of about ``size`` bytes as a base64 data URL."""
    return "data:image/png;base64," + base64.b64encode(base64.b64decode(PNG_1PX) + b"\x00" * size).decode()


def held(server: ServerProcess, send) -> Decimal:
    """What the budget holds for the tight key's request made by ``send(client)``: the worst case
    its 429 names (refused, so never sent)."""
    with pytest.raises(openai.RateLimitError) as err:
        send(server.openai("tight"))
    assert err.value.body["code"] == "budget_exceeded"
    found = re.search(r"may cost up to \$([0-9.]+) ", err.value.body["message"])
    assert found, err.value.body["message"]
    return Decimal(found.group(1))


def test_a_json_edit_is_held_as_the_same_form_edit_is(server, mock):
    """Each image, the mask too, is held as an image however it is sent: a form's file, a URL, or a
    data URL (whose bytes are the image, not text: at four bytes a token two 1 MB images would hold
    $6.67). Only the text around them differs (a form's metadata, the JSON's own), by cents' tenths."""
    mock.clear()
    asked = {"model": "gpt-image-1", "prompt": "add a boat", "quality": "low", "size": "1024x1024"}
    two_files = {"image": ("in.png", PNG, "image/png"), "mask": ("mask.png", PNG, "image/png")}
    form = held(server, lambda c: c.images.edit(**two_files, **asked))
    by_url = {"images": [{"image_url": URL}], "mask": {"image_url": URL}}
    inline = {"images": [{"image_url": data_url(1_000_000)}], "mask": {"image_url": data_url(1_000_000)}}
    for refs in (by_url, inline):
        body = {**asked, **refs}
        sent = held(server, lambda c, body=body: c.post("/images/edits", body=body, cast_to=httpx.Response))
        assert abs(sent - form) < Decimal("0.001"), (sent, form)  # two images' 3,200 tokens are $0.032
    assert Decimal("0.04") < form < Decimal("0.05")  # low 1024x1024 out: 272 tokens; each image in: 1,600
    assert edits_sent(mock) == []
    answer = edit(server, "roomy", {**asked, **inline})  # $0.05 holds it: its images are not held as text
    assert answer.status_code == 200
    assert server.trace(answer.headers["x-stockyard-trace-id"])["cost_status"] == "exact"


def test_a_form_naming_images_by_reference_fields_is_held_at_each(server, mock):
    """A form may name images as the JSON does, in fields (``images[][image_url]``, ``mask[file_id]``:
    relayed, and held to the key's files, ``Ownership.check_form_files``): each is held as an image, as
    a file part is — a form of one file and a mask by URL was held as one image."""
    mock.clear()
    asked = {"model": "gpt-image-1", "prompt": "add a boat", "quality": "low", "size": "1024x1024"}
    image = ("in.png", PNG, "image/png")
    two_files = held(server, lambda c: c.images.edit(image=image, mask=("m.png", PNG, "image/png"), **asked))
    by_field = {"mask": {"image_url": URL}}  # the SDK writes it as the form field mask[image_url]
    one_and_a_field = held(server, lambda c: c.images.edit(image=image, **asked, extra_body=by_field))
    assert abs(one_and_a_field - two_files) < Decimal("0.001"), (one_and_a_field, two_files)
    two = {"images": [{"image_url": URL}], "mask": {"image_url": URL}}  # images[][image_url], mask[image_url]
    one_and_two_fields = held(server, lambda c: c.images.edit(image=image, **asked, extra_body=two))
    assert one_and_two_fields - two_files > Decimal("0.015"), (one_and_two_fields, two_files)  # 1,600 tokens: $0.016
    assert edits_sent(mock) == []
