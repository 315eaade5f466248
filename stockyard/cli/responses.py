"""``stockyard responses --delete ID``: the admin deletes any key's stored Responses API response."""

from __future__ import annotations

import argparse

from ..operations.stored import delete_response
from .common import open_ops, print_json, runs


def register(sub) -> None:
    p = sub.add_parser(
        "responses",
        help="delete a stored Responses API response",
        description="Delete a response Stockyard stored for the Responses API, whichever client key made it "
        "(its input and output items with it; audited). A client key deletes only its own, with "
        "DELETE /v1/responses/{id}. A response its provider keeps (passed through) is forgotten by "
        "Stockyard; the provider's copy stays.",
    )
    p.add_argument("--delete", metavar="RESPONSE_ID", required=True, help="the response's id (resp_…)")
    runs(p, run, json=True)


def run(args: argparse.Namespace) -> int:
    deleted = delete_response(open_ops(args, create=False), args.delete)
    if args.json:
        print_json(deleted)
    else:
        print(f"deleted response {deleted['id']}")
    return 0
