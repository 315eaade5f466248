"""Who a request was for: the end user and the tags a client attaches, checked and capped.

The end user comes from the ``x-stockyard-user`` header, which wins, else from the body:
OpenAI's ``user`` (chat, completions, embeddings, Responses) or Anthropic's
``metadata.user_id`` (Claude Code's names its session too: the end user is its account, or its
device, without the session, see :func:`claude_code_user`). Tags come from
``x-stockyard-tags: team=search,feature=x`` and, where the API has one, the body's ``metadata``
object of strings (OpenAI chat and Responses); a header tag wins over a body tag of the same
name. A Codex request is also tagged ``session=<its session id>`` unless the client set a
``session`` tag or already has ``MAX_TAGS`` (see :func:`codex_session`), and a turn that came over
the Responses WebSocket ``transport=websocket`` on the same terms; that session, or the one
Claude Code names in ``metadata.user_id``, is the request's ``session_id`` (OpenTelemetry's
``gen_ai.conversation.id``, :func:`agent_session`). The trace carries
both, and reports group by them (``stockyard costs --by user|tag:NAME``), so they are bounded:
a user of at most ``USER_CAP`` printable characters, at most ``MAX_TAGS`` tags with printable
names and values. Bad values are a 400 naming the header or field — never
silently cut, which would merge users.
"""

from __future__ import annotations

import itertools
import json
import re

from .context import RequestContext
from .errors import ProxyError

USER_HEADER = "x-stockyard-user"
TAGS_HEADER = "x-stockyard-tags"
USER_CAP = 256
MAX_TAGS = 16
TAG_NAME_CAP = 64
TAG_VALUE_CAP = 512  # OpenAI's own limit for a metadata value
METADATA_ENDPOINTS = ("chat", "responses")  # OpenAI endpoints whose body has ``metadata`` of strings
SESSION_TAG = "session"
TRANSPORT_TAG = "transport"  # tagged websocket on a turn that came over a WebSocket
# The header Codex names its session in on every request: ``session-id`` (0.171), ``session_id`` (0.58)
CODEX_SESSION_HEADERS = ("session-id", "session_id")
# Claude Code's metadata.user_id before 2.1: user_<device hash>_account_<uuid or nothing>_session_<uuid>
_CLAUDE_CODE_SESSION = re.compile(r"^(user_[0-9a-f]+_account_[0-9a-f-]*)_session_([0-9a-f-]+)$")


def _printable(text: str, cap: int) -> bool:
    return 0 < len(text) <= cap and text.isprintable()


def _check_user(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _printable(value, USER_CAP):
        raise ProxyError(
            400,
            f"{where} must be 1-{USER_CAP} printable characters",
            param=where if not where.startswith("x-") else None,
            code="invalid_user",
        )
    return value


def _check_tag(name: str, value: str, where: str) -> None:
    if not _printable(name, TAG_NAME_CAP) or not _printable(value, TAG_VALUE_CAP) or "=" in name or "," in name:
        raise ProxyError(
            400,
            f"{where}: tag {name[:TAG_NAME_CAP]!r} needs a name of 1-{TAG_NAME_CAP} printable characters "
            f"(no '=' or ',') and a value of 1-{TAG_VALUE_CAP}",
            code="invalid_tags",
        )


def header_tags(text: str) -> dict[str, str]:
    """``team=search,feature=x`` → {"team": "search", "feature": "x"} (400 on a malformed list)."""
    tags: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq:
            raise ProxyError(400, f"{TAGS_HEADER}: {part.strip()[:64]!r} is not name=value", code="invalid_tags")
        _check_tag(name, value, TAGS_HEADER)
        tags[name] = value
    return tags


def body_user(ctx: RequestContext) -> object:
    """The end user the body names, in the client's API."""
    body = ctx.body
    if ctx.dialect == "anthropic":
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return claude_code_user(user) if isinstance(user, str) else user
    return body.get("user")


def claude_code_user(user_id: str) -> str:
    """Claude Code's ``metadata.user_id`` without its session: every session would otherwise be an
    end user of its own (reports by user split by session, and ``userlimits`` would start afresh
    with each). Its JSON form ``{"device_id", "account_uuid", "session_id"}`` gives the account, or
    the device when signed in with an API key; the older ``user_…_account_…_session_…`` loses its
    session part. Any other value is the end user as it is."""
    return _claude_code_parts(user_id)[0] or user_id


def claude_code_session(user_id: object) -> str | None:
    """The session Claude Code names in ``metadata.user_id`` (the part :func:`claude_code_user`
    leaves out), or None: a conversation id for the telemetry, never made up from another value."""
    session = _claude_code_parts(user_id)[1] if isinstance(user_id, str) else None
    return session if isinstance(session, str) and _printable(session, TAG_VALUE_CAP) else None


def _claude_code_parts(user_id: str) -> tuple[str | None, object]:
    """(the user, the session) of Claude Code's ``metadata.user_id``, either form; the user is None
    when the value is not one of them, the session as the value holds it (any JSON value)."""
    if not user_id.startswith("{"):
        found = _CLAUDE_CODE_SESSION.match(user_id)
        return (found.group(1), found.group(2)) if found else (None, None)
    try:
        fields = json.loads(user_id)
    except ValueError:
        return None, None
    if not isinstance(fields, dict):
        return None, None
    who = (fields.get("account_uuid") or fields.get("device_id")) if "session_id" in fields else None
    return (who if isinstance(who, str) and who else None), fields.get("session_id")


def agent_session(ctx: RequestContext, codex: str | None) -> str | None:
    """The session a coding agent says the request belongs to: Claude Code's ``metadata.user_id``,
    else ``codex`` (:func:`codex_session` of the request's headers, which :func:`attribute` read already)."""
    if ctx.dialect == "anthropic":
        metadata = ctx.body.get("metadata")
        session = claude_code_session(metadata.get("user_id")) if isinstance(metadata, dict) else None
        if session is not None:
            return session
    return codex


def body_tags(ctx: RequestContext) -> dict[str, str]:
    """The body's ``metadata`` strings, where the API has such a field (others are left to the provider);
    the 400 for more than ``MAX_TAGS`` of them before any is read."""
    metadata = ctx.body.get("metadata")
    if ctx.dialect == "anthropic" or ctx.endpoint not in METADATA_ENDPOINTS or not isinstance(metadata, dict):
        return {}
    # at most one past the cap taken, and the cap checked before each tag is: a body naming a million
    # was read whole and every tag checked (4x the CPU of parsing it) for the 400 the count gives
    tags = dict(itertools.islice(((str(k), v) for k, v in metadata.items() if isinstance(v, str)), MAX_TAGS + 1))
    if len(tags) > MAX_TAGS:
        raise ProxyError(400, f"metadata: at most {MAX_TAGS} tags per request, got more", code="invalid_tags")
    for name, value in tags.items():
        _check_tag(name, value, "metadata")
    return tags


def codex_session(headers: dict[str, str]) -> str | None:
    """The session a Codex request belongs to (Codex says so in ``originator``: codex_exec,
    codex_cli_rs, …), so that ``costs --by tag:session`` answers what one session cost. A value
    that would not pass as a tag is left out: the client asked for no tag, so it gets no 400."""
    if not headers.get("originator", "").startswith("codex"):
        return None
    for name in CODEX_SESSION_HEADERS:
        value = headers.get(name, "").strip()
        if _printable(value, TAG_VALUE_CAP):
            return value
    return None


def attribute(ctx: RequestContext) -> None:
    """Set ``ctx.end_user`` and ``ctx.tags`` from the headers and the parsed body (400 when bad)."""
    header = ctx.headers.get(USER_HEADER)
    ctx.end_user = _check_user(header.strip(), USER_HEADER) if header is not None else None
    if ctx.end_user is None:
        ctx.end_user = _check_user(body_user(ctx), "metadata.user_id" if ctx.dialect == "anthropic" else "user")
    tags = body_tags(ctx)
    tags.update(header_tags(ctx.headers.get(TAGS_HEADER, "")))
    if len(tags) > MAX_TAGS:
        raise ProxyError(400, f"at most {MAX_TAGS} tags per request, got {len(tags)}", code="invalid_tags")
    session = codex_session(ctx.headers)
    if session is not None and SESSION_TAG not in tags and len(tags) < MAX_TAGS:
        tags[SESSION_TAG] = session
    if ctx.websocket and TRANSPORT_TAG not in tags and len(tags) < MAX_TAGS:
        tags[TRANSPORT_TAG] = "websocket"  # a turn of the Responses API's WebSocket mode (responses_socket)
    ctx.tags = tags
    ctx.session_id = agent_session(ctx, session)
