"""Azure OpenAI through Stockyard: deployment URLs, api-version and the api-key header.

One server per module whose only provider is Azure (pointed at the session mock), so
bare model names route there too; ``azure/<deployment>`` names it explicitly.
"""

from __future__ import annotations

import json
import threading

import openai
import pytest
from conftest import ServerProcess, base_env, served, wait_for
from mock_upstream import IMAGE_USAGE, MockUpstream, Recorded, Reply, multipart_form

AZURE_KEY = "az-test-0123456789abcdefAZURESECRET"
API_VERSION = "2024-10-21"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = {
        **base_env(cache_home),
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "AZURE_OPENAI_ENDPOINT": mock.url,
        "AZURE_OPENAI_API_VERSION": API_VERSION,
    }
    with served(pyz_path, tmp_path_factory, "azure", env) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai("x")


def sent(mock: MockUpstream, deployment: str, tail: str = "chat/completions") -> Recorded:
    """The newest request for this deployment, with the checks every Azure call must pass."""
    path = f"/openai/deployments/{deployment}/{tail}"
    for req in reversed(mock.requests):
        if req.path == path:
            assert req.query == {"api-version": API_VERSION}
            assert req.headers["api-key"] == AZURE_KEY and "authorization" not in req.headers
            return req
    raise AssertionError(f"mock saw no request on {path}")


def test_plain_chat_uses_deployment_url(server, client, mock) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="azure/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from mock"
    req = sent(mock, "gpt-4o-mini")
    assert req.json == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["provider"], trace["status"], trace["prompt_tokens"], trace["completion_tokens"]) == (
        "azure",
        200,
        12,
        5,
    )
    assert trace["cost_status"] == "exact"


def test_only_provider_takes_bare_names(client, mock) -> None:
    client.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "Hi"}])
    assert sent(mock, "my-deployment").json["model"] == "my-deployment"


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream(server, client, mock, include_usage) -> None:
    deployment = f"gpt-4o-mini-stream-{int(include_usage)}"
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(
        model=f"azure/{deployment}", messages=[{"role": "user", "content": "Hi"}], stream=True, **extra
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mock"
    assert (chunks[-1].usage is not None) is include_usage
    assert sent(mock, deployment).json["stream_options"] == {"include_usage": True}  # asked for costing
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["prompt_tokens"], trace["completion_tokens"]) == (1, 12, 5)


def test_embeddings_and_completions(client, mock) -> None:
    result = client.embeddings.create(model="azure/text-embedding-3-small", input="hello")
    assert len(result.data[0].embedding) == 8
    sent(mock, "text-embedding-3-small", "embeddings")
    text = client.completions.create(model="azure/gpt-35-instruct", prompt="Say hi")
    assert text.choices[0].text == "Hello from mock"
    sent(mock, "gpt-35-instruct", "completions")


def test_error_passes_through(server, client) -> None:
    with pytest.raises(openai.RateLimitError) as failure:
        client.chat.completions.create(model="azure/mock-error-429", messages=[{"role": "user", "content": "Hi"}])
    assert failure.value.status_code == 429 and AZURE_KEY not in failure.value.response.text


def test_native_messages_to_azure_are_translated(server, mock) -> None:
    status, _, raw = server.request(
        "POST",
        "/v1/messages",
        {"model": "azure/gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert status == 200 and json.loads(raw)["type"] == "message"
    assert "/deployments/gpt-4o-mini/chat/completions" in mock.requests[-1].path


def test_provider_key_never_in_log(server) -> None:
    assert AZURE_KEY not in server.log
    assert "Traceback" not in server.log


BAD_DEPLOYMENTS = [
    ".",
    "..",
    "a/b",
    "../../admin",
    "x?api-version=1",
    "x#frag",
    "%2e%2e",
    "a b",
    "a\tb",
    "a\r\nHost: evil",
    "a\x00b",
    "a\\b",
    "dep\u2028x",
]


@pytest.mark.parametrize("deployment", BAD_DEPLOYMENTS)
def test_deployment_names_that_leave_their_url_segment_are_400(server, mock, deployment) -> None:
    before = len(mock.requests)
    status, _, raw = server.request(
        "POST",
        "/v1/chat/completions",
        {"model": f"azure/{deployment}", "messages": [{"role": "user", "content": "Hi"}]},
    )
    body = json.loads(raw)
    assert status == 400, body
    assert body["error"]["param"] == "model" and body["error"]["code"] == "invalid_model"
    assert len(mock.requests) == before, "nothing reached the upstream"
    status, _, raw = server.request(
        "POST",
        "/v1/messages",
        {"model": f"azure/{deployment}", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
    )
    body = json.loads(raw)
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_audio_goes_to_the_deployment_and_moderations_are_refused(server, client, mock) -> None:

    text = client.audio.transcriptions.create(model="azure/whisper", file=("a.wav", b"RIFF" + b"a" * 3000, "audio/wav"))
    assert text.text == "Hello from mock"
    fields, files = multipart_form(sent(mock, "whisper", "audio/transcriptions"))
    assert fields["model"] == "whisper" and files[0][2] == b"RIFF" + b"a" * 3000
    with client.audio.speech.with_streaming_response.create(model="azure/tts", voice="alloy", input="hi") as resp:
        assert resp.headers["content-type"] == "audio/mpeg" and len(resp.read()) > 0
    assert sent(mock, "tts", "audio/speech").json["input"] == "hi"
    with pytest.raises(openai.BadRequestError) as err:
        client.moderations.create(model="azure/mod", input="x")
    assert "'azure'" in err.value.body["message"] and "/v1/moderations" in err.value.body["message"]


def test_a_streamed_image_is_relayed_from_the_deployment_as_it_is_drawn(server, client, mock) -> None:
    """As from OpenAI: the deployment holds its stream after the first partial image until the test
    has read it (read whole, the client's read would time out), then the edit streams the same way."""
    gate = threading.Event()
    mock.enqueue(Reply(held=gate, held_after=1))
    quick = client.with_options(timeout=10)
    try:
        stream = quick.images.generate(model="azure/gpt-image-1", prompt="a cat", stream=True, partial_images=1)
        events = iter(stream)
        assert next(events).type == "image_generation.partial_image" and not gate.is_set()
        gate.set()
        assert [e.type for e in events] == ["image_generation.completed"]
    finally:
        gate.set()
    assert sent(mock, "gpt-image-1", "images/generations").json["stream"] is True
    trace = server.trace(stream.response.headers["x-stockyard-trace-id"])
    assert (trace["provider"], trace["stream"], trace["outcome"]) == ("azure", 1, "ok"), trace
    assert trace["completion_tokens"] == IMAGE_USAGE["output_tokens"] + 100, trace
    png = b"\x89PNG\r\n\x1a\n" + b"q" * 500
    edited = quick.images.edit(
        model="azure/gpt-image-1", image=("in.png", png, "image/png"), prompt="a hat", stream=True, partial_images=1
    )
    assert [e.type for e in edited] == ["image_edit.partial_image", "image_edit.completed"]
    assert multipart_form(sent(mock, "gpt-image-1", "images/edits"))[0]["stream"] == "true"


def test_realtime_session_goes_to_the_deployment(server, mock) -> None:
    """The Realtime API on an Azure deployment: the SDK's URL for Azure (``/openai/realtime`` with the
    api-version and the deployment), the ``api-key`` header, each response billed."""
    with server.openai("x").realtime.connect(model="azure/gpt-realtime") as conn:
        assert conn.recv().type == "session.created"
        conn.response.create(response={"output_modalities": ["text"]})
        events = [conn.recv()]
        while events[-1].type not in ("response.done", "error"):
            events.append(conn.recv())
    assert events[-1].type == "response.done", events[-1]
    req = mock.last("/realtime")
    assert req.path == "/openai/realtime"
    assert req.query == {"api-version": API_VERSION, "deployment": "gpt-realtime"}
    assert req.headers["api-key"] == AZURE_KEY and "authorization" not in req.headers
    rows = wait_for(lambda: server.db_rows("SELECT * FROM traces WHERE endpoint = 'realtime'"), 10, "the trace")
    assert rows[0]["provider"] == "azure" and rows[0]["cost_status"] == "exact" and rows[0]["cost_uc"] > 0
