"""``redact``: secrets (and, if asked, PII) kept out of what Stockyard stores or sends upstream.

What it finds: API keys of the common providers (OpenAI, Anthropic, Google, Groq, xAI,
Perplexity, Hugging Face, GitHub, Slack, Stripe), AWS access keys (and secret keys next to
their name), private key blocks and JWTs; with ``pii``: email addresses, phone numbers and
card numbers (Luhn-checked, so an order number is not a card).

``mode``:
- ``store``: trace bodies and error messages are stored redacted; the request goes upstream
  as sent, and its answer is not cached (it may echo the secret).
- ``upstream``: the request is also rewritten before it goes upstream (and so is cached and
  stored redacted).
- ``block``: a request holding any of them is refused with a 400 that names the kind of
  data found — never the data itself.

Each finding is replaced by ``[REDACTED:<kind>]``. A stored stream is searched event by event and
along each answer's text deltas joined (a model streams a key a few characters per event).

Providers' opaque reasoning state is not looked inside: a Responses reasoning item's
``encrypted_content`` and a thinking block's ``signature`` are opaque strings, and the thinking
blocks a provider produced (Anthropic ``thinking``/``redacted_thinking``, a chat message's
``thinking_blocks``) go upstream as they came in ``upstream`` and ``block`` modes (the provider
refuses an edited signed block); they are still redacted where Stockyard stores them. A compaction
token Stockyard made (``providers/compaction.py``) is looked inside: its summary reaches the model
as text, so it is searched, and redacted by minting the token again. The module
guards against accidental leaks; a client can always obfuscate text on purpose.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..context import RequestContext
from ..errors import ProxyError
from ..providers import compaction
from .base import Module
from .schema import Field

if TYPE_CHECKING:
    from ..chain import Chain

# kind → (what to call it in a message, pattern). Secrets share one regex (one pass).
SECRETS: dict[str, tuple[str, str]] = {
    "anthropic_key": ("an Anthropic API key", r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    "openai_key": ("an OpenAI-style API key", r"(?<![A-Za-z0-9_\-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    "stripe_key": ("a Stripe key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    "google_key": ("a Google API key", r"\bAIza[0-9A-Za-z_\-]{35}"),
    "groq_key": ("a Groq API key", r"\bgsk_[A-Za-z0-9]{20,}"),
    "xai_key": ("an xAI API key", r"\bxai-[A-Za-z0-9]{20,}"),
    "perplexity_key": ("a Perplexity API key", r"\bpplx-[A-Za-z0-9]{20,}"),
    "huggingface_token": ("a Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}"),
    "github_token": ("a GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "slack_token": ("a Slack token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    "aws_access_key": ("an AWS access key", r"(?<![A-Z0-9])(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "aws_secret_key": (
        "an AWS secret key",
        r"(?i:aws_?secret_?access_?key)[\"'\s:=\\]+[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
    ),
    "private_key": (
        "a private key",
        r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----(?:[^\"]*?-----END[A-Z ]{0,40}PRIVATE KEY-----|[^\"]*)",
    ),
    "jwt": ("a JWT", r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"),
}
PII: dict[str, tuple[str, str]] = {
    "email": ("an email address", r"(?<![\w.+-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    "card": ("a card number", r"(?<![\d.])\d(?:[ \-]?\d){12,18}(?![\d])"),
    "phone": (
        "a phone number",
        r"(?<![\w+.])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{2,4}(?:[ .\-]?\d{2,4}){1,4}(?![\w])",
    ),
}
LABELS = {kind: label for kind, (label, _) in {**SECRETS, **PII}.items()}

# Every secret above contains one of these; a text with none of them skips the big regex
# (a dozen substring checks cost a microsecond, the alternation a hundred).
SECRET_HINTS = (
    "sk-",
    "sk_",
    "rk_",
    "AIza",
    "gsk_",
    "xai-",
    "pplx-",
    "hf_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "AKIA",
    "ASIA",
    "AROA",
    "AIDA",
    "ecret",
    "ECRET",
    "PRIVATE KEY",
    "eyJ",
)
_DIGITS_2, _DIGITS_4 = re.compile(r"\d\d").search, re.compile(r"\d{4}").search
PII_HINTS: dict[str, Callable[[str], object]] = {
    "email": lambda text: "@" in text,
    "card": _DIGITS_4,  # every way of writing a card number has a run of four digits
    "phone": _DIGITS_2,
}


SHORTEST = 6  # no finding is shorter ("a@b.co")


def _has_secret_hint(text: str) -> bool:
    return any(hint in text for hint in SECRET_HINTS)


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit doubled, its digits summed (Luhn)


def luhn_ok(digits: str) -> bool:
    """The Luhn check, its loops in C: a body may hold a million candidates to check."""
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(_DOUBLED.__getitem__, map(int, digits[-2::-2])))
    return (kept + doubled) % 10 == 0


def _card(match: str) -> bool:
    digits = match.replace(" ", "").replace("-", "")  # the pattern's only separators
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _phone(match: str) -> bool:
    digits = sum(map(str.isdigit, match))
    return 10 <= digits <= 15 or (match.startswith("+") and 8 <= digits <= 15)


VALIDATORS: dict[str, Callable[[str], bool]] = {"card": _card, "phone": _phone}


def _overlaps(spans: list[tuple[int, int, str]], starts: list[int], start: int, end: int) -> bool:
    """Whether ``start``-``end`` overlaps one of ``spans`` (in order, none overlapping; ``starts``
    theirs): its neighbours alone, found by bisection. Each span tested against all of them was
    quadratic: an answer of 16,000 findings took 7.5 s to store redacted."""
    i = bisect.bisect_left(starts, end)  # the spans starting before ``end``: only the last may reach ``start``
    return i > 0 and spans[i - 1][1] > start


class Detector:
    """Finds and replaces the chosen kinds; one regex pass for secrets, one per PII kind.

    PII kinds run one after another (cards before phone numbers) because their patterns
    overlap: a 16-digit card would otherwise also look like a long phone number. JSON is
    searched string by string, decoded, so escapes cannot hide a secret and a redaction can
    never touch a number or break the document.
    """

    def __init__(self, secrets: bool, pii: list[str]) -> None:
        passes: list[tuple[Callable[[str], object], re.Pattern, bool]] = []
        if secrets:
            combined = "|".join(f"(?P<{kind}>{pattern})" for kind, (_, pattern) in SECRETS.items())
            passes.append((_has_secret_hint, re.compile(combined), False))
        for kind in ("email", "card", "phone"):
            if kind in pii:
                passes.append((PII_HINTS[kind], re.compile(f"(?P<{kind}>{PII[kind][1]})"), kind in VALIDATORS))
        self.passes = passes

    def __bool__(self) -> bool:
        return bool(self.passes)

    # -- text ------------------------------------------------------------------------------
    def find(self, text: str, found: dict[str, None] | None = None) -> dict[str, None]:
        """The kinds present in ``text`` (an ordered set)."""
        found = {} if found is None else found
        for hint, regex, validated in self.passes:
            if not hint(text):
                continue
            for m in regex.finditer(text):
                kind = m.lastgroup or ""
                if kind not in found and (not validated or VALIDATORS[kind](m.group())):
                    found[kind] = None
                    if len(regex.groupindex) == 1:  # the pass's one kind is found: its other matches tell nothing
                        break
        return found

    def sub(self, text: str) -> str:
        for hint, regex, validated in self.passes:
            if hint(text):
                text = regex.sub(self._replacer(regex, validated), text)
        return text

    @classmethod
    def _replacer(cls, regex: re.Pattern, validated: bool) -> str | Callable[[re.Match], str]:
        """What ``regex.sub`` puts in a match's place: for a pass of one kind found unchecked (an email
        address) its label as text, which the regex module writes in C (a body of 2.5 million took a
        Python call each), else a call that checks the match and names its kind."""
        if not validated and len(regex.groupindex) == 1:
            return f"[REDACTED:{next(iter(regex.groupindex))}]"
        return functools.partial(cls._replacement, validated=validated)

    @staticmethod
    def _replacement(m: re.Match, validated: bool) -> str:
        kind = m.lastgroup or "secret"
        if validated and not VALIDATORS[kind](m.group()):
            return m.group()
        return f"[REDACTED:{kind}]"

    # -- JSON: string values only (keys are API field names), none shorter than any finding --
    # A provider's signed thinking (Anthropic ``thinking``/``redacted_thinking`` blocks, a chat
    # message's ``thinking_blocks``) goes upstream as it came: the provider refuses an edited one.
    def find_json(
        self, value: Any, found: dict[str, None] | None = None, signed: dict[str, None] | None = None
    ) -> dict[str, None]:
        """The kinds found in a JSON value; with ``signed``, those inside signed thinking go there."""
        found = {} if found is None else found
        if isinstance(value, str):
            text = compaction.peek(value) or value  # a compaction token's summary goes upstream as text
            if len(text) >= SHORTEST:
                self.find(text, found)
        elif isinstance(value, list):
            for item in value:
                self.find_json(item, found, signed)
        elif isinstance(value, dict):
            if signed is not None and signed_thinking(value):
                self.find_json(value, signed)
                return found
            for key, item in value.items():
                if signed is not None and key == "thinking_blocks":
                    self.find_json(item, signed)
                else:
                    self.find_json(item, found, signed)
        return found

    def sub_json(self, value: Any, keep_signed: bool = False) -> Any:
        """A copy of a JSON value with every string value redacted (but signed thinking, with ``keep_signed``)."""
        if isinstance(value, str):
            summary = compaction.peek(value)
            if summary is not None:  # the token again, its summary redacted
                redacted = self.sub(summary)
                return value if redacted == summary else compaction.mint(redacted)
            return self.sub(value) if len(value) >= SHORTEST else value
        if isinstance(value, list):
            return [self.sub_json(v, keep_signed) for v in value]
        if isinstance(value, dict):
            if keep_signed and signed_thinking(value):
                return value
            return {
                k: v if keep_signed and k == "thinking_blocks" else self.sub_json(v, keep_signed)
                for k, v in value.items()
            }
        return value

    # -- stored bodies ---------------------------------------------------------------------
    def redact_bytes(self, data: bytes | bytearray) -> bytes:
        """A stored body redacted: JSON string by string, SSE event by event, else as text."""
        data = bytes(data)
        if not data:
            return data
        text = data.decode("utf-8", "replace")
        if text.lstrip().startswith(("{", "[")):
            try:
                value = json.loads(text)
            except ValueError:
                pass
            else:
                if not self.find_json(value):
                    return data
                return json.dumps(self.sub_json(value), ensure_ascii=False, separators=(",", ":")).encode()
        if text.startswith(("data:", "event:", ":")):
            out = self._across_events([self._sse_line(line) for line in text.split("\n")])
        else:
            out = self.sub(text)
        return data if out == text else out.encode()

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Where each finding in ``text`` is: (start, end, kind), in order, none overlapping."""
        found: list[tuple[int, int, str]] = []  # in order, none overlapping
        for hint, regex, validated in self.passes:
            if not hint(text):
                continue
            earlier, starts, added = found, [start for start, _, _ in found], []
            for m in regex.finditer(text):
                kind = m.lastgroup or "secret"
                if not _overlaps(earlier, starts, m.start(), m.end()) and (
                    not validated or VALIDATORS[kind](m.group())
                ):
                    added.append((m.start(), m.end(), kind))
            found = sorted(earlier + added)  # a pass's matches do not overlap each other
        return found

    def _across_events(self, lines: list[str]) -> str:
        """A stream's lines with findings split across its text deltas redacted too: a model
        streams a few characters per event, so a key it writes is in no single event."""
        groups: dict[tuple, list[tuple[int, dict, dict, str]]] = {}
        events: dict[int, dict] = {}
        for i, line in enumerate(lines):
            if not line.startswith("data:"):
                continue
            try:
                value = json.loads(line[5:].strip())
            except ValueError:
                continue
            for group, container, key in delta_texts(value):
                groups.setdefault(group, []).append((i, value, container, key))
        for pieces in groups.values():
            joined = "".join(container[key] for _, _, container, key in pieces)
            found = self.spans(joined)
            if not found:
                continue
            at = 0
            for i, value, container, key in pieces:
                piece = container[key]
                container[key] = _cut(piece, at, found)
                at += len(piece)
                events[i] = value
        for i, value in events.items():
            lines[i] = "data: " + json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return "\n".join(lines)

    def finds_in(self, data: bytes) -> bool:
        """Whether a stored body holds anything this detector redacts."""
        return self.redact_bytes(data) != bytes(data)

    def _sse_line(self, line: str) -> str:
        if not line.startswith("data:"):
            return line
        payload = line[5:].strip()
        try:
            value = json.loads(payload)
        except ValueError:
            return "data: " + self.sub(payload)
        if not self.find_json(value):
            return line
        return "data: " + json.dumps(self.sub_json(value), ensure_ascii=False, separators=(",", ":"))


def _cut(piece: str, at: int, found: list[tuple[int, int, str]]) -> str:
    """``piece`` (at offset ``at`` of the joined text) without the findings' characters; the
    piece where a finding starts says ``[REDACTED:<kind>]`` there."""
    out, pos = [], 0
    for start, end, kind in found:
        start, end = start - at, end - at
        if end <= 0 or start >= len(piece):
            continue
        out.append(piece[pos : max(start, 0)])
        if start >= 0:
            out.append(f"[REDACTED:{kind}]")
        pos = min(end, len(piece))
    out.append(piece[pos:])
    return "".join(out)


def delta_texts(value: Any) -> list[tuple[tuple, dict, str]]:
    """The text pieces a stream event adds to its answer, each as (the text it continues, the
    object holding it, its key): a chat or completion choice's, an Anthropic content block's, a
    Responses item's, a Gemini candidate's."""
    if not isinstance(value, dict):
        return []
    out: list[tuple[tuple, dict, str]] = []
    for choice in value.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            out.append((("choice", choice.get("index")), delta, "content"))
        elif isinstance(choice.get("text"), str):
            out.append((("choice", choice.get("index")), choice, "text"))
    kind = value.get("type")
    delta = value.get("delta")
    if kind == "content_block_delta" and isinstance(delta, dict):
        for key in ("text", "thinking", "partial_json"):
            if isinstance(delta.get(key), str):
                out.append((("block", value.get("index"), key), delta, key))
    elif isinstance(kind, str) and kind.endswith(".delta") and isinstance(delta, str):
        item = ("item", kind, value.get("item_id"), value.get("output_index"), value.get("content_index"))
        out.append((item, value, "delta"))
    for n, candidate in enumerate(value.get("candidates") or []):
        parts = ((candidate or {}).get("content") or {}).get("parts") if isinstance(candidate, dict) else None
        for part in parts or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append((("candidate", candidate.get("index", n), bool(part.get("thought"))), part, "text"))
    return out


def signed_thinking(value: dict) -> bool:
    """An Anthropic thinking block (content block or chat ``thinking_blocks`` entry)."""
    return value.get("type") in ("thinking", "redacted_thinking")


@dataclass(frozen=True)
class RedactOptions:
    mode: str
    detector: Detector


def describe_kinds(kinds: list[str]) -> str:
    labels = [LABELS.get(k, k) for k in kinds]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def refused(kinds: list[str]) -> ProxyError:
    """``block`` mode's 400: the kinds of data found, never the data."""
    return ProxyError(
        400,
        f"request refused: it contains {describe_kinds(kinds)}; remove it and send the request again",
        code="sensitive_data",
    )


def screen(chain: Chain, ctx: RequestContext, items: list[dict]) -> list[dict]:
    """``items`` as the ``redact`` module, where it runs for this request's key, lets them be
    kept (``Redact.screen``): for a route outside the chain, as ``ratelimit.admit_call`` is."""
    module = chain.module("redact", ctx)
    return module.screen(ctx, items) if isinstance(module, Redact) else items


class Redact(Module):
    """Secrets and optional PII removed from stored bodies, from upstream requests, or blocked."""

    name = "redact"
    summary = (
        "secrets (API keys, AWS keys, private keys, JWTs) and optional PII redacted from storage/upstream, or blocked"
    )
    schema = {
        "mode": Field(
            "enum",
            "store",
            "store: redact what is stored; upstream: also what is sent; block: refuse the request (400)",
            choices=("store", "upstream", "block"),
        ),
        "secrets": Field("bool", True, "look for API keys, AWS keys, private keys and JWTs"),
        "pii": Field(
            "list", [], "personal data to look for too: email, phone, card", choices=("email", "phone", "card")
        ),
    }

    def compile(self, config: dict) -> RedactOptions:
        return RedactOptions(config["mode"], Detector(config["secrets"], config["pii"]))

    def before(self, ctx: RequestContext) -> None:
        opts: RedactOptions = self.options(ctx)
        if not opts.detector:
            return
        ctx.sensitive_answer = opts.detector.finds_in
        signed: dict[str, None] = {}  # found in signed thinking: sent as it came, stored redacted
        kinds = list(opts.detector.find_json(ctx.body, signed=signed))
        ctx.state["redact"] = (opts.detector, bool(kinds or signed))
        if not kinds:
            ctx.sensitive = ctx.sensitive or bool(signed)
            return
        if opts.mode == "block":
            raise refused(kinds)
        if opts.mode == "upstream":
            ctx.body = opts.detector.sub_json(ctx.body, keep_signed=True)
            # the client's bytes, redacted: not the body, which may hold stored items the estimate counts apart
            ctx.raw = opts.detector.redact_bytes(ctx.raw)
            ctx.body_changed = True
            conv = ctx.conversation
            if conv is not None and conv.turn_items:  # what a conversation keeps of this turn: as sent upstream
                conv.turn_items = opts.detector.sub_json(conv.turn_items, keep_signed=True)
        else:
            ctx.sensitive = True

    def screen(self, ctx: RequestContext, items: list[dict]) -> list[dict]:
        """Items a route outside the chain keeps to send upstream later (a conversation's
        ``items``), treated as a turn's input is: redacted in ``upstream`` mode, refused in
        ``block`` mode, kept as sent in ``store`` mode (as a stored response keeps its input)."""
        opts: RedactOptions = self.options(ctx)
        if not opts.detector:
            return items
        kinds = list(opts.detector.find_json(items, signed={}))
        if not kinds or opts.mode == "store":
            return items
        if opts.mode == "block":
            raise refused(kinds)
        return opts.detector.sub_json(items, keep_signed=True)

    def after(self, ctx: RequestContext) -> None:
        """Redact what the trace will store: the request, the answer, errors — of every attempt."""
        state: tuple[Detector, bool] | None = ctx.state.pop("redact", None)
        if state is None:
            return
        detector, request_has_findings = state
        if request_has_findings:
            ctx.raw = detector.redact_bytes(ctx.raw)
        for c in (ctx.attempt, *ctx.attempts):
            if c.response_body:
                c.response_body = bytearray(detector.redact_bytes(c.response_body))
            if c.error_message:
                c.error_message = detector.sub(c.error_message)
