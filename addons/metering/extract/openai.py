"""OpenAI-style APIs: Chat Completions, legacy Completions, Embeddings, Responses.

Also serves the OpenAI-compatible providers (Azure OpenAI, Mistral, Groq, DeepSeek,
OpenRouter, vLLM, Ollama), tolerating their extra and missing fields.

Token mapping (see docs/token-model.md):

- Chat/Completions/Embeddings ``usage``: ``input = prompt_tokens - cached``, where
  ``cached = prompt_tokens_details.cached_tokens``, or DeepSeek's
  ``prompt_cache_hit_tokens`` when the details are absent; ``cache_write`` from
  ``prompt_tokens_details.cache_write_tokens`` (OpenAI, OpenRouter; also subtracted from
  input); ``output = completion_tokens`` (reasoning included), plus reasoning where the
  provider counts it apart (xAI, see :func:`map_usage`);
  ``reasoning = completion_tokens_details.reasoning_tokens``.
- Audio (``gpt-4o-audio-*``, ``gpt-audio*``): ``prompt_tokens_details.audio_tokens`` is a
  share of ``prompt_tokens`` billed at the audio rate: ``audio_input`` is that share
  less any cached audio the report names (``cached_tokens_details.audio_tokens``, the
  Realtime shape), and it is subtracted from input; that cached audio is
  ``cached_audio_input``, taken out of ``cached_input``. A report that does not split its
  cache read leaves it in ``cached_input``, but for audio beyond the uncached share of
  the prompt, which can only have been read from the cache.
  ``completion_tokens_details.audio_tokens`` is a share of ``completion_tokens``:
  ``audio_output``, subtracted from output (reasoning stays a share of the text output).
- Responses ``usage``: the same with ``input_tokens``, ``input_tokens_details``,
  ``output_tokens``, ``output_tokens_details``. The Realtime API's ``response.done``
  usage and its transcriptions' ``usage`` are this shape with the details spelt
  ``input_token_details`` and ``output_token_details``; their ``image_tokens`` stay in
  ``input``.
- Ollama's native API (``prompt_eval_count``, ``eval_count``) when there is no ``usage``.
- Server-side web searches (Responses API, OpenAI and xAI): one per ``web_search_call``
  output item (OpenAI and xAI bill per call), counted from the final response's
  ``output`` when it has one, else from the ``response.output_item.done`` events seen
  (each item id once): never from both. xAI's ``num_server_side_tools_used`` counts every
  server-side tool (X search, code execution too) and is not read as web searches.
- Groq's compound systems (``groq/compound``, ``groq/compound-mini``, ``compound-beta``)
  report the sum of their sub-calls in ``usage`` and the sub-calls in
  ``usage_breakdown.models`` (beside ``usage``; in a stream, beside ``x_groq.usage``):
  ``{model, usage}`` per call to an underlying model, billed at that model's prices. When
  the breakdown's prompt and completion counts add up to the top-level ones, the call is
  split by model (:func:`split_by_model`): the call's own usage keeps the model it
  reports with no tokens, and each underlying model (its sub-calls summed, in order of
  first appearance) is a usage billed beside it (:attr:`Usage.extra`), mapped by the
  rules above. A breakdown that does not add up is noted as a problem and the top-level
  figures are kept; so are, without a note, those of Groq's streams, which repeat the
  call's total in every entry (the models, not their shares).
  ``executed_tools`` (the web searches and code runs the system made) is not counted:
  Groq documents no per-request price for them.

Service tier: the top-level ``service_tier`` of a chat/completions body or stream chunk
and of a Responses ``response`` object (the tier that served the call: ``default``,
``flex``, ``priority``, ``scale``; Groq's ``on_demand``...), the latest wins; ``auto``
(the request's value, echoed by ``response.created``) names none.

Streams: the latest non-null ``usage`` wins (the final ``choices: []`` chunk with
``stream_options.include_usage``; Groq's ``x_groq.usage``; vLLM's cumulative
per-chunk usage). Responses streams: ``response.completed``, ``response.incomplete`` or
``response.failed``. A stream's usage is the provider's final report when it rides on a
chunk that ends the answer (``choices: []`` or a ``finish_reason``) or on a chunk after
one that did (OpenRouter's usage chunk, whose choice has ``finish_reason: null``), on a
final Responses event, or when ``[DONE]`` followed it; otherwise it is ``partial``.
(vLLM's cumulative usage before the ``finish_reason`` stays partial; with ``n`` > 1,
until every choice seen has its ``finish_reason``.)
"""

from __future__ import annotations

from typing import Any

from addons.metering.counts import MAX_WEB_SEARCHES, CountReader, check_consistency
from addons.metering.extract.framing import (
    LazyText,
    as_dict,
    as_int,
    as_list,
    has_value,
    loads,
    note,
    service_tier_of,
)
from addons.metering.sse import SSEEvent
from addons.metering.usage import Seen, Usage

#: Responses API stream events that carry the final usage.
_RESPONSE_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
#: Responses API stream events that carry generated text (kept for estimates).
_RESPONSE_TEXT = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
_RESPONSE_START = frozenset({"response.created", "response.in_progress"})
#: The Responses output item of one server-side web search (billed per call).
_WEB_SEARCH_ITEM = "web_search_call"


def _web_searches(output: list[Any]) -> int:
    """The ``web_search_call`` items of a Responses ``output`` list."""
    return sum(1 for item in output if as_dict(item).get("type") == _WEB_SEARCH_ITEM)


#: Where Groq's compound systems list their sub-calls, beside ``usage``.
_BREAKDOWN = "usage_breakdown"


def _add_tokens(into: Usage, usage: Usage) -> None:
    """Add ``usage``'s token figures to ``into`` (one model's sub-calls summed)."""
    into.input += usage.input
    into.cached_input += usage.cached_input
    into.cache_write += usage.cache_write
    into.audio_input += usage.audio_input
    into.cached_audio_input += usage.cached_audio_input
    into.output += usage.output
    into.audio_output += usage.audio_output
    into.reasoning += usage.reasoning


def _prompt_and_completion(raw: dict[str, Any]) -> tuple[int | None, int | None]:
    """The prompt and completion counts of one usage object, either API's spelling."""
    quiet = CountReader()  # the figures' problems are noted by map_usage
    prompt = quiet.get(raw, "prompt_tokens")
    if prompt is None:
        prompt = quiet.get(raw, "input_tokens")
    completion = quiet.get(raw, "completion_tokens")
    if completion is None:
        completion = quiet.get(raw, "output_tokens")
    return prompt, completion


def _repeats(entry: dict[str, Any], top: tuple[int | None, int | None]) -> bool:
    model = entry.get("model")
    named = isinstance(model, str) and bool(model.strip())
    return named and _prompt_and_completion(as_dict(entry.get("usage"))) == top


def split_by_model(breakdown: Any, raw: dict[str, Any], problems: list[str]) -> list[Usage] | None:
    """The usage of each underlying model of a Groq compound call, or ``None`` to keep
    the call's top-level ``raw`` usage as it is.

    ``breakdown`` is the call's ``usage_breakdown``: ``models`` lists one ``{model,
    usage}`` per sub-call. It is used only when it is consistent: every entry names a
    model and has sound counts, and their prompt and completion counts add up to the
    top-level ones (which are what Groq bills the call as); otherwise a problem is noted
    and ``None`` returned. Sub-calls of one model are summed, in order of first appearance.
    """
    entries = as_dict(breakdown).get("models")
    if not isinstance(entries, list) or not entries:
        if breakdown is not None:
            note(problems, f"{_BREAKDOWN} without a list of models: kept the call's usage")
        return None
    by_model: dict[str, Usage] = {}
    prompts = completions = 0
    top = _prompt_and_completion(raw)
    if len(entries) > 1 and all(_repeats(as_dict(e), top) for e in entries):
        # Groq's streams repeat the call's total in every entry: it names the models,
        # not their shares. Kept whole at the system's name, as documented; not a fault
        # of this call worth a warning per call.
        return None
    for entry in map(as_dict, entries):
        model = entry.get("model")
        sub = as_dict(entry.get("usage"))
        usage = map_usage(sub)
        prompt, completion = _prompt_and_completion(sub)
        if not isinstance(model, str) or not model.strip() or usage is None:
            note(problems, f"{_BREAKDOWN} entry without a model or usage: kept the call's usage")
            return None
        if usage.invalid is not None or prompt is None or completion is None:
            note(problems, f"{_BREAKDOWN} entry for {model}: {usage.invalid or 'no counts'}")
            return None
        prompts, completions = prompts + prompt, completions + completion
        _add_tokens(by_model.setdefault(model, Usage(model=model)), usage)
    top_prompt, top_completion = top
    if (prompts, completions) != top:
        note(
            problems,
            f"{_BREAKDOWN} adds up to prompt {prompts} and completion {completions}, not the"
            f" usage's {top_prompt} and {top_completion}: kept the call's usage",
        )
        return None
    return list(by_model.values())


def map_usage(raw: dict[str, Any]) -> Usage | None:
    """One OpenAI-style ``usage`` object (chat, completions, embeddings or responses).

    Reasoning: OpenAI counts it inside ``completion_tokens``; xAI's chat API does not
    (its ``total_tokens = prompt + completion + reasoning``). The two are told apart by
    the report itself: when ``total_tokens`` equals prompt + completion + reasoning, or
    reasoning exceeds completion (impossible if it were included), output is completion
    + reasoning. A report with no reasoning figure whose ``total_tokens`` exceeds prompt
    + completion (Gemini's OpenAI-compatible endpoint: thinking tokens, billed as output,
    appear only in the total) bills the difference as reasoning output. Unusable counts
    set :attr:`Usage.invalid` (see :mod:`..counts`).
    """
    c = CountReader()
    if "input_tokens" in raw or "output_tokens" in raw:  # Responses API
        prompt = c.get(raw, "input_tokens", main=True)
        # The Realtime API spells the details ``input_token_details`` (token, singular).
        in_details = as_dict(raw.get("input_tokens_details", raw.get("input_token_details")))
        out_details = as_dict(raw.get("output_tokens_details", raw.get("output_token_details")))
        completion = c.get(raw, "output_tokens", main=True)
    elif "prompt_tokens" in raw or "completion_tokens" in raw:
        prompt = c.get(raw, "prompt_tokens", main=True)
        in_details = as_dict(raw.get("prompt_tokens_details"))
        out_details = as_dict(raw.get("completion_tokens_details"))
        completion = c.get(raw, "completion_tokens", main=True)
    elif "prompt_eval_count" in raw or "eval_count" in raw:  # Ollama native
        usage = Usage(
            input=c.get(raw, "prompt_eval_count", main=True) or 0,
            output=c.get(raw, "eval_count", main=True) or 0,
        )
        usage.invalid = c.problem()
        return usage
    else:
        return None
    cached = c.get(in_details, "cached_tokens")
    if cached is None:
        cached = c.get(raw, "prompt_cache_hit_tokens")  # DeepSeek
    cached = cached or 0
    cache_write = c.get(in_details, "cache_write_tokens") or 0  # OpenAI, OpenRouter
    split = c.get(as_dict(in_details.get("cached_tokens_details")), "audio_tokens")
    audio = c.get(in_details, "audio_tokens") or 0
    audio_out = c.get(out_details, "audio_tokens") or 0
    reasoning = c.get(out_details, "reasoning_tokens") or 0
    prompt, completion = prompt or 0, completion or 0
    # A report that does not split its cache read (chat completions): taken to be text,
    # except audio that does not fit in the uncached share, which can only have come
    # from the cache (before, such a report read as contradicting itself).
    uncached_room = max(prompt - cached - cache_write, 0)
    cached_audio = min(max(audio - uncached_room, 0), cached) if split is None else split
    audio_in = max(audio - cached_audio, 0)
    output = completion
    total = as_int(raw.get("total_tokens"))
    if reasoning and (reasoning > completion or total == prompt + completion + reasoning):
        output = completion + reasoning  # xAI: completion_tokens excludes reasoning
    elif not reasoning and total is not None and total > prompt + completion:
        # Gemini's OpenAI-compatible endpoint: thinking tokens only in the total
        reasoning = total - prompt - completion
        output = completion + reasoning
    usage = Usage(
        input=max(prompt - cached - cache_write, 0) - audio_in,  # < 0: see check_consistency
        cached_input=cached - cached_audio,
        cache_write=cache_write,
        audio_input=audio_in,
        cached_audio_input=cached_audio,
        output=output - audio_out,
        audio_output=audio_out,
        reasoning=reasoning,
    )
    usage.invalid = c.problem()
    if usage.invalid is None and cached + cache_write > prompt:
        usage.invalid = f"cached {cached} + cache writes {cache_write} > prompt {prompt}"
    if usage.invalid is None and cached_audio > min(audio, cached):
        usage.invalid = f"cached audio {cached_audio} > audio {audio} or cached {cached}"
    if usage.invalid is None:
        usage.invalid = check_consistency(usage)
    return usage


def _message_text(message: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("reasoning_content", "reasoning", "content", "refusal"):
        value = message.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):  # content parts
            out.extend(p["text"] for p in value if isinstance(p, dict) and "text" in p)
    for call in as_list(message.get("tool_calls")):
        fn = as_dict(as_dict(call).get("function"))
        for key in ("name", "arguments"):
            if isinstance(fn.get(key), str):
                out.append(fn[key])
    fn = as_dict(message.get("function_call"))
    if isinstance(fn.get("arguments"), str):
        out.append(fn["arguments"])
    return out


def _response_output_text(response: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for item in as_list(response.get("output")):
        item = as_dict(item)
        if isinstance(item.get("arguments"), str):
            out.append(item["arguments"])
        for part in as_list(item.get("content")) + as_list(item.get("summary")):
            part = as_dict(part)
            for key in ("text", "refusal"):
                if isinstance(part.get(key), str):
                    out.append(part[key])
    return out


def chunk_text(obj: Any) -> str:
    """Generated text in a chat/completions body or stream chunk, or an Ollama message."""
    obj = as_dict(obj)
    out: list[str] = []
    for choice in as_list(obj.get("choices")):
        choice = as_dict(choice)
        if isinstance(choice.get("text"), str):  # legacy completions
            out.append(choice["text"])
        for key in ("message", "delta"):
            if isinstance(choice.get(key), dict):
                out.extend(_message_text(choice[key]))
    if obj.get("object") == "response":
        out.extend(_response_output_text(obj))
    if isinstance(obj.get("message"), dict):  # Ollama native chat
        out.extend(_message_text(obj["message"]))
    if isinstance(obj.get("response"), str):  # Ollama native generate
        out.append(obj["response"])
    return "".join(out)


def _response_event_text(obj: Any) -> str:
    delta = as_dict(obj).get("delta")
    return delta if isinstance(delta, str) else ""


def _copy_tokens(usage: Usage) -> Usage:
    """A fresh copy of one underlying model's usage (the events' builder sets ids on it)."""
    copy = Usage(model=usage.model)
    _add_tokens(copy, usage)
    return copy


#: Stream chunks decoded up front to learn the model and id (Azure's first chunk carries
#: only prompt filter results, with an empty model).
_PROBES = 3


class OpenAIReader:
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self._usage: Usage | None = None
        #: The kept usage's underlying models (Groq compound), or ``None``: not split.
        self._by_model: list[Usage] | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._tier: str | None = None
        self._text = LazyText(chunk_text, problems, "stream chunk")
        self._response_text = LazyText(_response_event_text, problems, "Responses event")
        self._response_final_text: str | None = None
        self._probes = _PROBES
        self._streamed = False  # SSE events were read
        self._ended = False  # [DONE] or a final Responses event was seen
        self._usage_final = False  # the usage kept came with the end of the answer
        # A chunk that ends the answer was seen: usage after it is the final report
        # (OpenRouter's usage chunk repeats a choice with ``finish_reason: null``).
        self._finished = False
        # Choice indexes seen, still answering / with their finish_reason (``n`` > 1).
        self._open_choices: set[int] = set()
        self._done_choices: set[int] = set()
        self._web_final: int | None = None  # web searches in the final response's output
        self._web_done: set[str] = set()  # ids of web_search_call items done so far
        self._web_unnamed = 0  # such items without an id

    # --- JSON bodies and parsed chunks -------------------------------------------------

    def on_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            note(self.problems, f"expected a JSON object, got {type(obj).__name__}")
            return
        if obj.get("object") == "response" or isinstance(obj.get("response"), dict):
            self._on_response(as_dict(obj.get("response")) if "response" in obj else obj)
            return
        self._take_ids(obj)
        ends = self._ends_answer(obj)
        if self._take_usage(obj):
            self._usage_final = not self._streamed or ends or self._finished
        self._finished = self._finished or ends
        self._text.add_obj(obj)

    def _ends_answer(self, chunk: dict[str, Any]) -> bool:
        """Whether the chat chunk closes the answer: the usage-only ``choices: []`` chunk,
        or a ``finish_reason`` (Groq's ``x_groq.usage``, Mistral) that leaves no choice
        seen in the stream still answering. With ``n`` > 1 each choice finishes on its
        own chunk while the others stream on (vLLM repeats its cumulative usage on every
        chunk: the usage on choice 0's finish was taken as final). A usage chunk after the
        end is final too (:attr:`_finished`), one repeating a finished choice with
        ``finish_reason: null`` included (OpenRouter's)."""
        choices = chunk.get("choices")
        if isinstance(choices, list) and not choices:
            return True
        finishes = False
        for choice in as_list(choices):
            fields = as_dict(choice)
            index = as_int(fields.get("index")) or 0
            if fields.get("finish_reason"):
                finishes = True
                self._open_choices.discard(index)
                self._done_choices.add(index)
            elif index not in self._done_choices:
                self._open_choices.add(index)
        return finishes and not self._open_choices

    def _take_ids(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("model"), str) and obj["model"]:
            self._model = obj["model"]
        if isinstance(obj.get("id"), str) and obj["id"]:
            self._id = obj["id"]
        tier = service_tier_of(obj)
        if tier is not None:
            self._tier = tier

    def _take_usage(self, obj: dict[str, Any]) -> bool:
        """Keep the usage ``obj`` carries (the latest wins); whether it carried one."""
        holder = obj  # the object whose "usage" it is (its usage_breakdown is beside it)
        raw = obj.get("usage")
        if not isinstance(raw, dict):
            holder = as_dict(obj.get("x_groq"))  # Groq stream chunks
            raw = holder.get("usage")
        if not isinstance(raw, dict) and ("eval_count" in obj or "prompt_eval_count" in obj):
            raw = obj  # Ollama native: counts at the top level of the last chunk
        if isinstance(raw, dict):
            usage = map_usage(raw)
            if usage is not None:
                self._usage = usage
                self._by_model = None
                if _BREAKDOWN in holder and usage.invalid is None:
                    self._by_model = split_by_model(holder[_BREAKDOWN], raw, self.problems)
                return True
            note(self.problems, "usage object without known token fields")
        return False

    def _on_response(self, response: dict[str, Any], final: bool = True) -> None:
        self._take_ids(response)
        output = response.get("output")
        if final and isinstance(output, list) and output:
            self._web_final = _web_searches(output)
        if isinstance(response.get("usage"), dict) and self._take_usage(response):
            self._usage_final = final
        text = "".join(_response_output_text(response))
        if text:
            self._response_final_text = text

    # --- SSE ---------------------------------------------------------------------------

    def on_event(self, event: SSEEvent) -> None:
        self._streamed = True
        data = event.data
        kind = event.event
        if kind == "message":
            if data.startswith("[DONE]"):
                self._ended = True
                return
            if data.startswith('{"type"'):  # Responses events sent without "event:" lines
                obj = loads(data, self.problems, "stream event")
                typed = as_dict(obj).get("type")
                if isinstance(typed, str) and typed.startswith("response."):
                    self._on_response_event(typed, data, obj)
                    return
            self._on_chunk(data)
        elif kind.startswith("response."):
            self._on_response_event(kind, data, None)
        elif kind == "error":
            note(self.problems, f"provider error event: {data[:120]}")

    def _on_chunk(self, data: str) -> None:
        probing = self._model is None and self._probes > 0
        if (
            not probing
            and not has_value(data, '"usage"')
            and '"x_groq"' not in data
            and (self._finished or not has_value(data, '"finish_reason"'))
        ):
            self._text.add_raw(data)  # plain content chunk: decoded only if text is needed
            return
        if probing:
            self._probes -= 1
        obj = loads(data, self.problems, "stream chunk")
        if obj is not None:
            self.on_object(obj)

    def _on_response_event(self, kind: str, data: str, obj: Any) -> None:
        if kind in _RESPONSE_TEXT:
            self._response_text.add_raw(data)
        elif kind == "response.output_item.done":
            if _WEB_SEARCH_ITEM in data:  # only these are decoded
                if obj is None:
                    obj = loads(data, self.problems, kind)
                item = as_dict(as_dict(obj).get("item"))
                if item.get("type") == _WEB_SEARCH_ITEM:
                    item_id = item.get("id")
                    if isinstance(item_id, str) and item_id:
                        self._web_done.add(item_id)
                    else:
                        self._web_unnamed += 1
        elif kind in _RESPONSE_FINAL or kind in _RESPONSE_START:
            if obj is None:
                obj = loads(data, self.problems, kind)
            response = as_dict(as_dict(obj).get("response"))
            final = kind in _RESPONSE_FINAL
            self._ended = self._ended or final
            if response:
                self._on_response(response, final)
            elif obj is not None:
                note(self.problems, f"{kind} without a response object")
        elif kind == "response.error" or kind == "error":
            note(self.problems, f"provider error event: {data[:120]}")

    # --- results -----------------------------------------------------------------------

    def usage(self) -> Usage | None:
        if self._usage is None:
            return None
        u = self._usage  # a copy with the ids (dataclasses.replace is slow: it introspects)
        searches = self._web_final
        if searches is None:  # no final output list: the items seen done, each once
            searches = len(self._web_done) + self._web_unnamed
        invalid = u.invalid
        if invalid is None and searches > MAX_WEB_SEARCHES:
            invalid = f"web searches {searches} > {MAX_WEB_SEARCHES} in one call"
        partial = self._streamed and not (self._ended or self._usage_final)
        if self._by_model is not None and invalid is None and not partial:
            # Split by underlying model: the call's own event carries none of the tokens.
            extra = [_copy_tokens(by) for by in self._by_model]
            return Usage(
                web_search=searches,
                model=self._model,
                response_id=self._id,
                service_tier=self._tier,
                estimated=u.estimated,
                extra=extra,
            )
        return Usage(
            input=u.input,
            cached_input=u.cached_input,
            cache_write=u.cache_write,
            audio_input=u.audio_input,
            cached_audio_input=u.cached_audio_input,
            output=u.output,
            audio_output=u.audio_output,
            reasoning=u.reasoning,
            web_search=searches,
            model=self._model,
            response_id=self._id,
            service_tier=self._tier,
            estimated=u.estimated,
            partial=partial,
            invalid=invalid,
        )

    def seen(self) -> Seen:
        return Seen(self._model, self._id, self._tier)

    def text(self) -> str:
        streamed = self._text.text() + self._response_text.text()
        if streamed:
            return streamed
        return self._response_final_text or ""
