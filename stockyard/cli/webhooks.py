"""``stockyard webhooks``: add, list, remove, test, deliveries."""

from __future__ import annotations

import argparse

from ..config import encryption_secret
from ..operations import webhooks as webhook_ops
from ..times import now_iso
from ..webhooks import EVENTS, FORMATS, REPLAY_WINDOW_S, TEST_EVENT, log_delivery, new_event, send_signed
from .common import CommandError, actions, count_arg, open_ops, open_store, print_json_lines, print_table, runs


def register(sub) -> None:
    group = actions(
        sub,
        "webhooks",
        help="send events (budgets, key expiry, breakers, error rate) to URLs",
        description='Webhooks POST signed JSON events (or Slack-style {"text": …}) when a budget '
        "passes a warning threshold or runs out, a key is about to expire, a provider's breaker opens or "
        f"closes, or the error rate rises. Signature: X-Stockyard-Signature: t=<unix>,v1=<hex HMAC-SHA256 "
        f"of '<t>.<body>'>; refuse a t older than {REPLAY_WINDOW_S}s.",
    )
    add = group.add_parser(
        "add",
        help="add a webhook (prints its signing secret once)",
        description="Add a webhook. Its signing secret is printed once and stored encrypted with "
        "STOCKYARD_ENCRYPTION_KEY (required). A running server uses it within a second.",
    )
    add.add_argument("url", help="http(s) URL (an admin's choice: internal hosts are reachable too)")
    add.add_argument("--events", required=True, metavar="LIST", help=f"comma-separated: {', '.join(EVENTS)}, or all")
    add.add_argument("--format", choices=FORMATS, default="json", help="json (signed event, default) or slack")
    add.add_argument("--expiry-days", type=count_arg, metavar="N", help="key.expiring: within N days (default 7)")
    add.add_argument(
        "--error-rate", type=count_arg, metavar="PCT", help="error_rate.high: threshold in percent (default 20)"
    )
    add.add_argument("--error-window", type=count_arg, metavar="MIN", help="error_rate.high: minutes (default 5)")
    add.add_argument(
        "--error-min-requests", type=count_arg, metavar="N", help="error_rate.high: fewest requests (default 20)"
    )
    runs(add, run_add)
    ls = group.add_parser(
        "list",
        help="list webhooks (never their secrets)",
        description="List webhooks with their URL, format and events.",
    )
    runs(ls, run_list, json=True)
    rm = group.add_parser(
        "remove",
        help="remove a webhook (its delivery log stays)",
        description="Remove a webhook; its delivery log stays (it ages out with the traces).",
    )
    rm.add_argument("id")
    runs(rm, run_remove)
    test = group.add_parser(
        "test",
        help="send a signed test event now and show the answer",
        description="Send one signed webhook.test event from this process (no retries), print the "
        "receiver's answer and log the attempt; exit 1 when it was not a 2xx.",
    )
    test.add_argument("id")
    runs(test, run_test)
    dl = group.add_parser(
        "deliveries",
        help="delivery attempts, newest first",
        description="Every delivery attempt, newest first: event, attempt number, the receiver's "
        "status and the outcome (delivered, retrying, failed, dropped, abandoned; resumed: claimed by "
        "the server making it).",
    )
    dl.add_argument("--webhook", metavar="ID", help="only this webhook's")
    dl.add_argument("--limit", type=count_arg, default=20, help="how many (default 20)")
    runs(dl, run_deliveries, json=True)


def run_add(args: argparse.Namespace) -> int:
    fields = {"url": args.url, "events": args.events, "format": args.format}
    for name, value in (
        ("expiry_days", args.expiry_days),
        ("error_rate_percent", args.error_rate),
        ("error_window_min", args.error_window),
        ("error_min_requests", args.error_min_requests),
    ):
        if value is not None:
            fields[name] = value
    described, secret = webhook_ops.add(open_ops(args, encrypts="a webhook's signing secret"), fields)
    print(f"added webhook {described['id']} for {', '.join(described['events'])}")
    print(f"signing secret (shown once; the receiver verifies X-Stockyard-Signature with it): {secret}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    rows = webhook_ops.listing(open_store(args).read())
    if args.json:
        print_json_lines(rows)
        return 0
    for r in rows:
        r["events"] = ",".join(r["events"])
    print_table(
        rows, [("id", "ID"), ("url", "URL"), ("format", "FORMAT"), ("events", "EVENTS")], empty="no webhooks yet"
    )
    return 0


def run_remove(args: argparse.Namespace) -> int:
    webhook_ops.remove(open_ops(args, create=False), args.id)
    print(f"removed webhook {args.id}")
    return 0


def run_test(args: argparse.Namespace) -> int:
    """One attempt from this process (no retries), logged like the server's."""
    store = open_store(args)
    conn = store.read()
    webhook_ops.get(conn, args.id)  # not found → one-line error
    hook = next((h for h in webhook_ops.load(conn, encryption_secret()) if h.id == args.id), None)
    if hook is None:
        raise CommandError(f"webhook {args.id}: its signing secret cannot be decrypted (STOCKYARD_ENCRYPTION_KEY?)")
    event = new_event(TEST_EVENT, {"webhook_id": hook.id}, "a test event")
    status, error, ms = send_signed(hook, event)
    outcome = "delivered" if error is None else "failed"
    row = (hook.id, event["id"], TEST_EVENT, 1, now_iso(), status, error, ms, outcome)
    store.write(lambda c: log_delivery(c, row))
    print(f"{outcome}: {error or f'HTTP {status}'} in {ms} ms (event {event['id']})")
    return 0 if error is None else 1


def run_deliveries(args: argparse.Namespace) -> int:
    rows = webhook_ops.deliveries(open_store(args).read(), args.webhook, args.limit)
    if args.json:
        print_json_lines(rows)
        return 0
    print_table(
        rows,
        [
            ("ts", "TIME (UTC)"),
            ("webhook_id", "WEBHOOK"),
            ("event", "EVENT"),
            ("event_id", "EVENT ID"),
            ("attempt", "ATTEMPT"),
            ("status", "STATUS"),
            ("outcome", "OUTCOME"),
            ("error", "ERROR"),
        ],
        empty="no deliveries yet",
    )
    return 0
