"""What one finished call is metered as: its usage, its status, and whether it is estimated.

The extractor says what the provider reported; this decides what to believe, in one
place, with no mitmproxy in sight (the addon passes in what it knows):

1. **The provider's final report wins.** When the extractor has the provider's complete
   usage (not ``partial``, not ``invalid``), the call is complete: its HTTP status and
   exact counts are stored with ``estimated`` false, even if the connection ended in an
   error afterwards (the openai SDK closes the connection at ``data: [DONE]``, often
   before the proxy has read the end of the chunked body). A reported final count is
   never replaced by a local count.
2. **An error response** (status >= 400) that reports no usable usage bills nothing.
3. **A report that is not final** (``partial``: the stream was cut, or ended, before the
   final usage) keeps the provider's input figures; output is the larger of the reported
   output and a tiktoken count of the text seen; ``estimated`` is true.
4. **No usable report** (none at all, or ``invalid`` counts): input and output are
   counted with tiktoken from the request and the text seen; ``estimated`` is true.

A call that did not complete (cut, rule 1 not met) has ``status`` NULL. Model, response
id and service tier come from the report, else from what the stream showed before it ended
(:class:`~addons.metering.usage.Seen`), else (model) from the request; the model is
normalised (:mod:`addons.metering.models`). Speed and inference geography come from the
report only (Anthropic gives them in ``usage``, with the figures): a call whose usage was
never seen is estimated with neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from addons.metering.models import normalise_model
from addons.metering.usage import Seen, Usage


@dataclass(slots=True)
class Settled:
    usage: Usage
    status: int | None
    #: Why the figures are not the provider's final report (``None`` when they are).
    why_estimated: str | None = None
    #: The reported usage's problem when its counts were unusable.
    invalid: str | None = None


#: Statuses that carry no answer by definition: a protocol switch (a WebSocket upgrade),
#: no content, not modified. Like an error, they bill nothing unless usage is reported
#: (they were estimated from the request: 7 tokens for an empty 204 in a probe).
NO_ANSWER_STATUSES = frozenset({101, 204, 205, 304})


def settle(
    flavor: str,
    reported: Usage | None,
    seen: Seen,
    *,
    status_code: int,
    cut: bool,
    request_model: Callable[[], str | None],
    estimate_input: Callable[[str | None], int],
    count_output: Callable[[str | None], int],
) -> Settled:
    """Decide the usage of one call (see the module docstring for the rules).

    ``estimate_input(model)`` counts the request, ``count_output(model)`` the output text
    seen; each is called only when needed (tiktoken is not free).
    """
    usable = reported if reported is not None and reported.invalid is None else None
    final = usable is not None and not usable.partial
    raw_model = (reported.model if reported else None) or seen.model or request_model()
    model = normalise_model(flavor, raw_model)
    response_id = (reported.response_id if reported else None) or seen.response_id
    service_tier = (reported.service_tier if reported else None) or seen.service_tier
    # Speed and geography come with usage only (Anthropic's ``usage``): the report's.
    speed = reported.speed if reported else None
    inference_geo = reported.inference_geo if reported else None
    status: int | None = status_code if final or not cut else None
    why: str | None = None
    if final:
        assert usable is not None
        usage = usable
        for extra in usage.extra:
            extra.model = normalise_model(flavor, extra.model) or model
    elif (status_code >= 400 or status_code in NO_ANSWER_STATUSES) and not cut and usable is None:
        usage = Usage()
        if reported is not None:  # invalid figures on an error: bill nothing, but say so
            usage.estimated, why = True, reported.invalid
    elif usable is not None:
        usage = Usage(
            input=usable.input,
            cached_input=usable.cached_input,
            cache_write=usable.cache_write,
            cache_write_1h=usable.cache_write_1h,
            audio_input=usable.audio_input,
            cached_audio_input=usable.cached_audio_input,
            output=max(usable.output, count_output(model)),
            audio_output=usable.audio_output,
            reasoning=usable.reasoning,
            web_search=usable.web_search,
            estimated=True,
            partial=True,
        )
        why = "cut before the provider's final usage" if cut else "no final usage report"
    else:
        usage = Usage(input=estimate_input(model), output=count_output(model), estimated=True)
        if reported is not None:
            why = reported.invalid
        else:
            why = "cut before any usage" if cut else "no usage reported"
    usage.model = model
    usage.response_id = response_id
    usage.service_tier = service_tier
    usage.speed, usage.inference_geo = speed, inference_geo
    return Settled(usage, status, why, reported.invalid if reported is not None else None)


class OnceLog:
    """Remembers which kinds of problem were already logged, so each is logged once.

    A kind is the provider plus the problem text with its numbers masked: a provider that
    sends negative counts on every call gives one warning, not one per call.
    """

    MAX_KINDS = 256

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first(self, provider: str, problem: str) -> bool:
        """Whether this kind of problem is new (and remember it)."""
        kind = f"{provider}|{_NUMBER.sub('N', problem)[:120]}"
        if kind in self._seen:
            return False
        if len(self._seen) >= self.MAX_KINDS:
            self._seen.clear()
        self._seen.add(kind)
        return True


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
