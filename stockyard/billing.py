"""What a request costs: the price it is charged at, and the cost of each attempt from its usage.

The :class:`Pricer` holds the price-table snapshot (built-in prices with the operator's
overrides; swapped whole on reload). Costs are integer micro-cents (``pricing``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from fractions import Fraction
from typing import TYPE_CHECKING, Iterable

from . import estimate, imagegen, pdfpages, toolfees
from .context import Attempt, RequestContext, Route, claude_mode, openai_mode
from .pricing import PER, Price, PriceTable, Usage, cost_microcents, unit_cost
from .providers import Provider, media

if TYPE_CHECKING:
    from .deployments import Deployment

log = logging.getLogger("stockyard")

BILLABLE_WITHOUT_USAGE = ("ok", "client_disconnected", "stream_broken")  # an answer went out: estimate it
# The report row of the failed attempts whose model neither the provider named nor a price knows
UNCONFIRMED_MODEL = "(unconfirmed)"


class Pricer:
    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table or PriceTable.load()

    def use(self, table: PriceTable) -> None:
        self.table = table

    def price_of(self, route: Route, asked: str, mode: str | None = None) -> Price | None:
        """The price a request for ``asked`` (routed to ``route``) will be charged at, in ``mode``
        (:func:`held_mode`; None: standard). ``asked`` is looked up only when it is another name than
        the route's: a budget's hold asks up to three times a request, most often for one name."""
        table, provider, kind = self.table, route.provider.name, route.provider.kind
        found = table.lookup_mode(route.model, provider, mode, kind)
        if found is None and asked != route.model:
            found = table.lookup_mode(asked, provider, mode, kind)
        return found

    def held_price(self, ctx: RequestContext, route: Route, asked: str) -> Price | None:
        """The price a budget holds the request at: its :func:`held_mode`'s; for an OpenAI request
        that leaves its tier to the provider (``auto``, or none), the dearest tier the model is priced
        in (:data:`DEFAULT_MAY_BE`): a project whose default is priority is served, and billed, at it,
        which a hold at the standard rate would let a burst overspend by the difference."""
        mode = held_mode(ctx)
        if mode is None and project_may_choose(ctx):
            dearer = self.price_of(route, asked, DEFAULT_MAY_BE)
            if dearer is not None:
                return dearer
        return self.price_of(route, asked, mode)

    def worst_case(
        self, ctx: RequestContext, route: Route, asked: str, default_max_tokens: int, sent_back: int = 0
    ) -> int | None:
        """What a budget holds for the request on ``ctx`` served by ``route`` (µ¢): its worst case
        in the units of its endpoint (tokens, and the image tool's images; images, seconds of an
        upload's audio, characters for media), None when it cannot be priced (no price, or a price
        in a unit the answer will not report). ``sent_back``: the input tokens a follow-up call
        adds (the answer so far of a paused turn)."""
        price = self.held_price(ctx, route, asked)
        if ctx.endpoint in media.ENDPOINTS:
            image_price = self.image_price(ctx, route.model, route.provider.name)
            return estimate.media_request_cost(ctx, price, image_price, default_max_tokens, route.model)
        if price is None:
            return None
        return self.token_cost(ctx, price, route.provider, default_max_tokens, sent_back, route.model)

    def token_cost(
        self,
        ctx: RequestContext,
        price: Price,
        provider: Provider,
        default_max_tokens: int,
        sent_back: int = 0,
        model: str = "",
    ) -> int | None:
        """``estimate.request_cost`` of a token-priced request at ``price``, the image tool's images
        at their model's price (:meth:`tool_image_price`, ``estimate.tool_images_cost``), and the
        hosted search tools' calls at their per-call prices (:meth:`held_call_fees`); None when the
        tool may draw at a model without one (a budget cannot count those images), and the PDFs' pages
        as the provider bills them (``pdfpages.held_pdf_tokens``: Gemini's page images, else a page's
        text and image; an uploaded file's pages Stockyard counted, ``ctx.pdf_pages``). A request's
        worst case and a batch line's both."""
        fees = 0
        drawn = imagegen.held_tokens(ctx.body)
        if drawn:  # the image tool may draw: its images at its model's price
            tool_price = self.tool_image_price(ctx.body, provider.name)
            if tool_price is None:
                return None
            fees = estimate.tool_images_cost(ctx.body, tool_price, drawn, default_max_tokens)
        model = model or str(ctx.body.get("model") or "")
        calls = self.held_call_fees(ctx, provider, model, price)
        image = price.image_input_tokens or estimate.IMAGE_INPUT_TOKENS  # a PDF's pages, each billed as an image
        gemini, walk = provider.kind == "gemini", estimate.put_in(ctx)
        written = estimate.body_written(ctx.body)
        pdfs = pdfpages.held_pdf_tokens(ctx.body, ctx.raw, model, image, gemini, ctx.pdf_pages, walk, written)
        each = estimate.inline_each(price, provider.kind, model)  # an image sent inline, as one image
        return estimate.request_cost(ctx, price, default_max_tokens, sent_back, calls, pdfs, written, each) + fees

    def inline_each(self, ctx: RequestContext) -> int | None:
        """What a key's or an end user's tpm counts an image sent inline at (``estimate.inline_each``;
        None: its base64 as text): the routed model's largest image once the route is known; before
        it (a key's tpm is counted first, before aliases) the largest of the model the request names."""
        model = ctx.routed_model or ctx.model or ""
        route = ctx.route
        if route is not None:
            return estimate.inline_each(self.price_of(route, model), route.provider.kind, route.model)
        return estimate.inline_each(self.table.lookup(model), None, model)

    def deployed_each(self, deployments: Iterable[Deployment]) -> int | None:
        """``estimate.inline_each`` for a model served by ``deployments``: the largest of theirs, None
        (the base64 as text) when one of them has no bound, or there are none."""
        found = [
            estimate.inline_each(self.table.lookup(d.upstream_model, name), kind, d.upstream_model)
            for d in deployments
            for name, kind in [(d.provider.name, d.provider.kind)]
        ]
        return None if not found or None in found else max(f for f in found if f is not None)

    def held_call_fees(
        self, ctx: RequestContext, provider: Provider, model: str, price: Price | None = None
    ) -> int | None:
        """What a Responses request passed through to ``provider`` holds for its search tools' calls
        at their per-call prices (``toolfees.held_fees``), and a Gemini-native generateContent for
        its grounding tools (``toolfees.held_grounding``); None where its calls are not priced so
        (a translated request: Claude's searches are in its usage), which holds them as before. A
        call's block of input tokens (``toolfees.block_tokens``) is held at ``price``'s input rate."""

        def fee_of(key: str) -> int | None:
            found = self.call_price(key, provider)
            block = toolfees.block_tokens(key, model) * (price.input if price is not None else 0)
            return None if found is None else -(-(found.input + block) // PER)  # µ¢ a call, rounded up

        if ctx.native is not None and provider.kind == "gemini":  # Gemini's grounding tools
            return toolfees.held_grounding(ctx.body, model, fee_of) if ctx.endpoint == "generate" else None
        if ctx.endpoint != "responses" or not provider.speaks_responses:
            return None
        return toolfees.held_fees(ctx.body, model, fee_of, estimate.web_searches(ctx.body))

    def call_price(self, key: str, provider: Provider | None) -> Price | None:
        """The per-call price of a hosted tool's call (``toolfees.price_key``) at ``provider``: the
        operator's ``<provider>/<key>`` or bare ``<key>``, else for an OpenAI or Gemini provider the
        table's ``openai/<key>`` or ``gemini/<key>`` (shipped); None: not billed per call here."""
        table = self.table
        found = table.lookup(key, provider.name) if provider is not None else None
        prefix = toolfees.shipped_prefix(provider.kind) if provider is not None else None
        if found is None and prefix is not None:
            found = table.lookup(f"{prefix}/{key}")
        return found if found is not None and found.unit == "call" else None

    def _with_tool_calls(self, ctx: RequestContext, a: Attempt, price: Price | None) -> None:
        """Add each hosted tool call the answer showed (``Attempt.tool_calls``) at its per-call price
        to the usage's fees, and its block of input tokens at ``price`` (the answer's)."""
        assert a.usage is not None
        model = a.served_model or a.upstream_model or a.asked_model or ctx.model or ""
        fees = self.call_fees(a.tool_calls, ctx.body, model, a.provider, price)
        a.usage = dataclasses.replace(a.usage, fees_uc=a.usage.fees_uc + fees)

    def call_fees(
        self, calls: dict[str, int], body: dict, model: str, provider: Provider | None, tokens: Price | None
    ) -> int:
        """µ¢ for ``calls`` (by item type) of a request with ``body`` to ``model``, each at its per-call
        price (:meth:`call_price`; a call without one adds nothing: another provider's), and the block
        of input tokens some calls bill (``toolfees.block_tokens``) at ``tokens``' input rate."""
        fees = 0
        for item_type, count in calls.items():
            key = toolfees.price_key(item_type, body, model)
            price = self.call_price(key, provider)
            if price is None:
                continue
            block = toolfees.block_tokens(key, model) * count * (tokens.input if tokens is not None else 0)
            fees += unit_cost(price, count) + -(-block // PER)
        return fees

    def response_call_fees(self, response: dict, provider: Provider) -> int:
        """µ¢ for the hosted tool calls a whole response object shows (a Batch API output line's: the
        response echoes its request's ``tools`` and names its model), a call's block of input tokens
        at the model's full input rate (fees are billed whole: see ``batch_costs.BatchTotal``)."""
        tally = toolfees.CallTally()
        tally.see_output(response.get("output"))
        model = str(response.get("model") or "")
        tokens = self.table.lookup(model, provider.name) if model else None
        return self.call_fees(tally.counts(), response, model, provider, tokens)

    def unpriced_model(self, ctx: RequestContext, route: Route, asked: str) -> str:
        """The model a request :meth:`worst_case` could not price lacks a price for: the image
        tool's when the requested model has one, else the requested model."""
        if self.price_of(route, asked) is not None and imagegen.held_tokens(ctx.body):
            return imagegen.tool_model(ctx.body)
        return asked

    def price(self, ctx: RequestContext, attempt: Attempt | None = None) -> None:
        """Cost of the request's current attempt (or of ``attempt``) from the provider's usage,
        before the modules' after hooks see the outcome. Never raises."""
        try:
            a = attempt or ctx.attempt
            a.rollup_model = self.rollup_model(a)
            self._price(ctx, a)
        except Exception as exc:  # a pricing bug must not lose the trace
            log.error("pricing failed for %s: %s", ctx.trace_id, exc)

    def cost_of(self, ctx: RequestContext, attempt: Attempt) -> int:
        """What ``attempt`` would be billed, priced on a copy: a failed attempt is priced once, when
        it is kept (``proxy.keep_attempt``), but a budget must know its cost before the next one."""
        priced = copy.copy(attempt)
        self.price(ctx, priced)
        return priced.cost_uc or 0

    def rollup_model(self, a: Attempt) -> str | None:
        """The model a failed attempt's rollup row goes under when the provider never named the
        model it served: the price table's name for it, else :data:`UNCONFIRMED_MODEL`. The name is
        the client's (a prefix route sends on ``openai/<anything>``) and rollups are kept for ever,
        so a made-up name must not make a report row of its own. None: its own (served) name."""
        if a.provider is None or a.served_model is not None or (a.status < 400 and a.outcome == "ok"):
            return None
        return self.table.priced_name(a.upstream_model or "", a.provider.name) or UNCONFIRMED_MODEL

    @staticmethod
    def _sent_tokens(ctx: RequestContext, a: Attempt, price: Price | None) -> int:
        """The input an attempt that reported no usage is billed as: ``estimate.input_tokens``, an
        image sent inline as the one image its hold counted (``estimate.inline_each``: never more than
        the hold, which the settled cost would pass by its base64)."""
        kind = a.provider.kind if a.provider is not None else None
        return estimate.held_input_tokens(ctx, estimate.inline_each(price, kind, a.upstream_model or ""))

    def _price(self, ctx: RequestContext, a: Attempt) -> None:
        """An estimate when no usage came back, or only a stream's start's (cut before its output
        count: ``Attempt.usage_partial``); a failed attempt is billed only if usage came back, or
        its input as an estimate when its request went out unanswered (``Attempt.input_billed``)."""
        if ctx.cache_hit or a.provider is None or (a.status == 0 and not a.input_billed):
            return
        if a.status >= 400 and a.usage is None and not a.input_billed:
            return
        if ctx.endpoint in ("count_tokens", "input_tokens"):  # free upstream: nothing to bill
            return
        price = self.billed_price(ctx, a)
        if ctx.endpoint in media.ENDPOINTS:
            return self._price_media(ctx, a, price)
        if a.usage is None and (a.input_billed or (a.paused_usage and a.outcome in BILLABLE_WITHOUT_USAGE)):
            # what it was sent (a follow-up: the answers so far too); a follow-up cut mid-stream: what it relayed
            inputs = self._sent_tokens(ctx, a, price) + a.sent_back
            relayed = 0 if a.input_billed else self._relayed(ctx, a)
            a.usage, a.usage_estimated = Usage(prompt_tokens=max(1, inputs), completion_tokens=relayed), True
        if a.usage is None and a.paused_usage:  # a follow-up call that reported nothing
            a.usage = Usage()
        if a.usage is None:
            if a.outcome not in BILLABLE_WITHOUT_USAGE:
                return
            relayed = self._relayed(ctx, a)
            relayed += imagegen.IMAGE_OUTPUT_TOKENS * a.own_images  # a chat image model's, as the largest image
            # the body and the conversation it continues (a previous_response_id's history, the
            # items its item_references put in), all of which the provider was sent
            a.usage = Usage(prompt_tokens=max(1, self._sent_tokens(ctx, a, price)), completion_tokens=relayed)
            a.usage_estimated = True
        elif a.usage_partial and a.outcome in BILLABLE_WITHOUT_USAGE:  # its input counted, its output not yet
            relayed = max(self._relayed(ctx, a), self._past_count(ctx, a))
            a.usage = dataclasses.replace(a.usage, completion_tokens=max(a.usage.completion_tokens, relayed))
            a.usage_estimated = True
        if a.image_usage is not None or a.image_estimate is not None:
            self._with_images(ctx, a)
        if a.tool_calls:
            self._with_tool_calls(ctx, a, price)
        if price is None or a.images_unpriced:
            a.cost_status = "unknown"
        else:  # a continued turn: each call priced on its own
            a.cost_uc = sum(cost_microcents(price, u) for u in [*a.paused_usage, a.usage])
            a.cost_status = "estimate" if a.usage_estimated else "exact"
        a.usage, a.paused_usage = a.total_usage(), []  # and the usage reported whole

    @staticmethod
    def _relayed(ctx: RequestContext, a: Attempt) -> int:
        """Output tokens the current call relayed without saying them (``estimate.relayed_tokens``):
        a continued turn's follow-up only what came after the calls before it, which are billed;
        never more than the body's cap let the provider write (``estimate.relayed_at_most``)."""
        body, total = a.response_body, a.relayed_text_bytes()
        if a.paused_usage:
            kept, relayed = a.follow_up_from
            body, total = body[kept:], max(0, total - relayed)
        tokens, most = estimate.relayed_tokens(body, total), estimate.relayed_at_most(ctx)
        return tokens if most is None else min(tokens, most)

    @staticmethod
    def _past_count(ctx: RequestContext, a: Attempt) -> int:
        """A cut Gemini stream's output: what its usage counted (thoughts reported before any text
        included) and the answer it relayed past that count (``Attempt.uncounted_bytes``, four
        bytes a token), at most what the body's cap allows (never less than the count). The
        larger of the two alone under-billed a text relayed after a count of thoughts by up to them."""
        assert a.usage is not None
        counted, most = a.usage.completion_tokens, estimate.relayed_at_most(ctx)
        tokens = counted + estimate.size_tokens(a.uncounted_bytes)
        return tokens if most is None else max(counted, min(tokens, most))

    def _with_images(self, ctx: RequestContext, a: Attempt) -> None:
        """Add what the image_generation tool's images cost to the answer's usage, as a fee: its
        usage (reported, else estimated from the images relayed: ``imagegen``) at its image model's
        rates, as an images answer of that model is priced. Without a price for that model (nor
        the tool's default), its tokens count as the answer's own output."""
        images = a.image_usage
        if images is None:
            images, a.usage_estimated = a.image_estimate, True
        assert images is not None and a.usage is not None
        price = self.tool_image_price(ctx.body, a.provider.name if a.provider else None)
        if price is not None:
            a.usage = dataclasses.replace(a.usage, fees_uc=a.usage.fees_uc + cost_microcents(price, images))
        else:  # unknown is never guessed: what the images cost is not known, so neither is the answer's
            a.images_unpriced = True

    def tool_image_price(self, body: dict, provider: str | None) -> Price | None:
        """The token price the image_generation tool's images are billed (and held) at: the tool's
        image model's (its default's when it names none); None without a token price for it (a
        budget then refuses the request, and an answer's cost is unknown)."""
        price = self.table.lookup(imagegen.tool_model(body), provider)
        return price if price is not None and price.unit == "token" else None

    def call_cost(self, ctx: RequestContext, a: Attempt, usage: Usage) -> int | None:
        """What one call of ``a`` that used ``usage`` costs (µ¢), None without a price."""
        price = self.billed_price(ctx, a)
        return None if price is None else cost_microcents(price, usage)

    def billed_price(self, ctx: RequestContext, a: Attempt) -> Price | None:
        """The price an answer is billed at, in the mode its answer says served it (``Attempt.
        served_mode``: priority, flex, fast mode, US-only inference): the served model's, the
        upstream model's, else the name the budget held it by (``price_of``'s fallback: a price set
        as ``local/my-model`` or under a deployment group's name), so what is held is what is billed.
        A call that went out and was never answered is billed in the mode it was held at (``held_mode``:
        Claude serves the mode asked or refuses it; OpenAI's priority, the most it could cost)."""
        unanswered = a.input_billed and a.usage is None and a.served_mode is None
        table, mode = self.table, held_mode(ctx) if unanswered else a.served_mode
        provider, kind = (a.provider.name, a.provider.kind) if a.provider else (None, None)
        asked = a.asked_model or ctx.routed_model or ctx.model or ""
        return (
            table.lookup_mode(a.served_model or a.upstream_model or "", provider, mode, kind)
            or table.lookup_mode(a.upstream_model or "", provider, mode, kind)
            or table.lookup_mode(asked, provider, mode, kind)
        )

    def _price_media(self, ctx: RequestContext, a: Attempt, price: Price | None) -> None:
        """Audio, images, moderations: billed in the unit the answer reports (no usage, no price, or
        a price in another unit: ``unknown``); estimated only for an image stream cut before its last
        image, or an image completed without its usage (``Attempt.usage_estimated``: ``media.ImageStream``)."""
        cost = None
        if ctx.endpoint == "moderations":
            cost = 0  # free
        elif a.input_billed and a.usage is None and a.media_seconds is None and a.media_images is None:
            cost = self._unanswered_media_cost(ctx, a, price)
        elif a.usage is not None:  # tokens: gpt-image-1, gpt-4o-transcribe
            cost = cost_microcents(price, a.usage) if price is not None and price.unit == "token" else None
        elif ctx.endpoint in media.IMAGES:
            unit_price = self.image_price(ctx, a.upstream_model or "", a.provider.name if a.provider else None)
            if unit_price is not None and a.media_images is not None:
                cost = unit_cost(unit_price, a.media_images)
        elif a.media_seconds is not None:  # whisper-1, billed per second
            if price is not None and price.unit == "second":
                cost = unit_cost(price, billed_seconds(a.media_seconds))
        elif ctx.endpoint == "speech" and price is not None and price.unit == "character":
            text = ctx.body.get("input")
            cost = unit_cost(price, len(text)) if isinstance(text, str) else None
        elif self._audio_cut(ctx, a) and price is not None:
            cost = self._cut_audio_cost(ctx, a, price)
        if cost is None:
            a.cost_uc, a.cost_status = None, "unknown"
        else:  # usage_estimated: a streamed image's, by ``media.ImageStream``
            a.cost_uc, a.cost_status = cost, "estimate" if a.usage_estimated else "exact"

    def _unanswered_media_cost(self, ctx: RequestContext, a: Attempt, price: Price | None) -> int | None:
        """A media call that went out and got no answer to bill by (``Attempt.input_billed``): its input
        as an estimate, no output, as a token call's — speech's characters (or its text as tokens),
        the audio a transcription's hold counted (:meth:`_cut_audio_cost`), an image call's prompt and
        uploads at a token price (a per-image price bills no input: 0). None: no price to count by."""
        a.usage_estimated = True
        if ctx.endpoint in media.AUDIO_IN:
            return None if price is None else self._cut_audio_cost(ctx, a, price)
        if ctx.endpoint == "speech" and price is not None and price.unit == "character":
            text = ctx.body.get("input")
            return unit_cost(price, len(text)) if isinstance(text, str) else None
        if ctx.endpoint in media.IMAGES and price is None:
            model, provider = a.upstream_model or "", a.provider.name if a.provider else None
            return 0 if self.image_price(ctx, model, provider) is not None else None
        if price is None or price.unit != "token":
            return None
        images = estimate.sent_image_tokens(ctx, price) if ctx.endpoint in media.IMAGES else 0
        a.usage = Usage(prompt_tokens=max(1, estimate.images_text_tokens(ctx)) + images, media_tokens=images)
        return cost_microcents(price, a.usage)

    @staticmethod
    def _audio_cut(ctx: RequestContext, a: Attempt) -> bool:
        """A streamed transcription whose answer went out (in part) but ended before it said what
        it cost (cut before ``transcript.text.done``): the provider heard all of the audio, so it is
        estimated, never left unknown (free). A whole answer without its usage stays unknown."""
        return (
            ctx.endpoint in media.AUDIO_IN
            and ctx.stream
            and a.outcome in BILLABLE_WITHOUT_USAGE
            and estimate.unpriced_audio_format(ctx) is None
        )

    def _cut_audio_cost(self, ctx: RequestContext, a: Attempt, price: Price) -> int | None:
        """The estimate of a cut audio answer (:meth:`_audio_cut`): the audio its hold counted
        (``estimate.held_audio_seconds``) by the second, or as audio tokens with the input text and
        the text that went out, never more of it than the hold counted (``ctx.default_output_cap``: four
        bytes a token is a guess, many times the tokens of a text of long ones); None in another unit."""
        seconds = estimate.held_audio_seconds(ctx, a.upstream_model or ctx.model or "")
        a.usage_estimated = True
        if price.unit == "second":
            a.media_seconds = seconds
            return unit_cost(price, seconds)
        if price.unit != "token":
            return None
        audio = seconds * estimate.AUDIO_TOKENS_PER_S
        # the text at four bytes a token, at most the output its hold counted (it sets no cap)
        relayed = min(estimate.relayed_tokens(a.response_body, a.relayed_text_bytes()), ctx.default_output_cap)
        a.usage = Usage(prompt_tokens=estimate.input_tokens(ctx) + audio, completion_tokens=relayed, media_tokens=audio)
        return cost_microcents(price, a.usage)

    def image_price(self, ctx: RequestContext, model: str, provider: str | None) -> Price | None:
        """The per-image price for this request's model, size and quality (DALL·E), or None."""
        key = image_key(model, ctx.body)
        found = self.table.lookup(key, provider) if key else None
        return found if found is not None and found.unit == "image" else None


def held_mode(ctx: RequestContext) -> str | None:
    """The mode a budget holds a request at: the dearer one it asks for (OpenAI's ``priority``,
    Claude's fast mode and US-only inference), which its answer may say it got; a request for
    ``flex`` is held at the standard rate, which OpenAI bills when flex is not what served it."""
    body = ctx.body if isinstance(ctx.body, dict) else {}
    if ctx.endpoint == "messages":
        return claude_mode(body.get("speed"), body.get("inference_geo"))
    mode = openai_mode(body.get("service_tier"))
    return None if mode == "flex" else mode


# The dearest tier an OpenAI project's default may serve a request that asked ``auto`` (or no tier) at.
DEFAULT_MAY_BE = "priority"


def project_may_choose(ctx: RequestContext) -> bool:
    """Whether the provider picks the request's tier (OpenAI's ``service_tier`` ``auto`` or unset:
    the project's default, which may be priority); not Claude's Messages, which serve the speed asked,
    nor the media endpoints, which have no tiers."""
    body = ctx.body if isinstance(ctx.body, dict) else {}
    if ctx.endpoint == "messages" or ctx.endpoint in media.ENDPOINTS:
        return False
    return body.get("service_tier") in (None, "auto")


def image_key(model: str, body: dict) -> str | None:
    """``model/size/quality`` with OpenAI's defaults (1024x1024, standard), the key images are priced by."""
    size, quality = body.get("size") or "1024x1024", body.get("quality") or "standard"
    if not isinstance(size, str) or not isinstance(quality, str) or not model:
        return None
    return f"{model}/{size}/{quality}"


def billed_seconds(seconds: float) -> int:
    """Whole seconds as OpenAI bills audio by duration: to the nearest second, at least one."""
    return max(1, int(Fraction(str(seconds)) + Fraction(1, 2))) if seconds > 0 else 0
