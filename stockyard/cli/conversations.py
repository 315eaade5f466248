"""``stockyard conversations --delete ID``: the admin deletes any key's conversation."""

from __future__ import annotations

import argparse

from ..operations.stored import delete_conversation
from .common import open_ops, print_json, runs


def register(sub) -> None:
    p = sub.add_parser(
        "conversations",
        help="delete a Conversations API conversation",
        description="Delete a conversation Stockyard keeps for the Conversations API, whichever client key "
        "made it, and its items (audited). A client key deletes only its own, with "
        "DELETE /v1/conversations/{id}.",
    )
    p.add_argument("--delete", metavar="CONVERSATION_ID", required=True, help="the conversation's id (conv_…)")
    runs(p, run, json=True)


def run(args: argparse.Namespace) -> int:
    deleted = delete_conversation(open_ops(args, create=False), args.delete)
    if args.json:
        print_json(deleted)
    else:
        print(f"deleted conversation {deleted['id']} and its {deleted['items']} item(s)")
    return 0
