"""``/api/responses/{id}`` and ``/api/conversations/{id}``: the admin deletes any key's stored
response or conversation (a client key deletes only its own, through the Responses and
Conversations APIs)."""

from __future__ import annotations

from typing import Callable

from ..operations.stored import check_id, delete_conversation, delete_response
from . import ApiRequest, route


def _id_of(what: str) -> Callable[[dict[str, str]], None]:
    """The route's ``check``: its ``{id}`` is a ``what``'s id, else a 400 naming it."""

    def check(params: dict[str, str]) -> None:
        check_id(params["id"], what)

    return check


_response_id, _conversation_id = _id_of("response"), _id_of("conversation")


@route(
    "DELETE",
    "/api/responses/{id}",
    "Delete any key's stored Responses API response and its items (audited)",
    check=_response_id,
)
def delete_stored_response(r: ApiRequest) -> dict:
    return delete_response(r.ops(), r.params["id"])


@route(
    "DELETE",
    "/api/conversations/{id}",
    "Delete any key's Conversations API conversation and its items (audited)",
    check=_conversation_id,
)
def delete_stored_conversation(r: ApiRequest) -> dict:
    return delete_conversation(r.ops(), r.params["id"])
