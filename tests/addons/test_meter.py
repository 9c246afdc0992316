"""The addon's hooks, driven in-process with mitmproxy's taddons/tflow (no sockets)."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http

with warnings.catch_warnings():
    # mitmproxy.addons imports ldap3, which trips a pyasn1 DeprecationWarning on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import taddons, tflow

from addons.meter import Meter
from meterline.fingerprint import fingerprint
from meterline.store import store
from tests.support.proxy import write_catalog

KEY = "sk-unit-alice"
GATEWAY_KEY = "gw-unit-carol"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def meter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Meter, Any]]:
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        [{"name": "local-llm", "flavor": "anthropic", "hosts": ["127.0.0.1:9999"]}],
        consumers={"alice": [KEY], "carol": [GATEWAY_KEY]},
        inject={"carol": {"openai": "UNIT_OPENAI_KEY", "anthropic": "UNIT_UNSET_KEY"}},
    )
    monkeypatch.setenv("UNIT_OPENAI_KEY", "sk-real-provider")
    monkeypatch.delenv("UNIT_UNSET_KEY", raising=False)
    m = Meter()
    with taddons.context(m) as tctx:
        tctx.configure(
            m,
            meter_catalog=str(catalog),
            meter_db=str(tmp_path / "events.duckdb"),
            meter_spool=str(tmp_path / "spool"),
            meter_flush_interval="3600",
        )
        yield m, tctx
        m.done()


def _rows(tmp_path: Path) -> list[dict[str, Any]]:
    with store(tmp_path / "events.duckdb", read_only=True) as con:
        cur = con.execute("SELECT * FROM usage_events ORDER BY ts")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _flow(url: str = OPENAI_URL, body: Any = None, **headers: str) -> http.HTTPFlow:
    f = tflow.tflow()
    raw = json.dumps(body if body is not None else {"model": "gpt-4o", "messages": []}).encode()
    f.request = http.Request.make("POST", url, raw, {"content-type": "application/json", **headers})
    f.response = None
    return f


def _respond(
    m: Meter,
    f: http.HTTPFlow,
    chunks: list[bytes],
    status: int = 200,
    chunked: bool = False,
    **headers: str,
) -> bytes:
    """Run the response side as mitmproxy does (streamed if the addon asked for it, else
    buffered); returns what the client got. ``chunked``: no Content-Length (unknown size)."""
    f.response = http.Response.make(status, b"", headers or {"content-type": "application/json"})
    if chunked:
        del f.response.headers["content-length"]
        f.response.headers["transfer-encoding"] = "chunked"
    else:
        f.response.headers["content-length"] = str(sum(map(len, chunks)))
    m.responseheaders(f)
    out: list[bytes] = []
    if not callable(f.response.stream):  # mitmproxy reads the whole body, then `response`
        f.response.raw_content = b"".join(chunks)
        out.append(f.response.raw_content)
    else:
        for chunk in chunks:
            result = f.response.stream(chunk)
            parts = [result] if isinstance(result, bytes) else list(result)
            assert all(parts), "an empty chunk would end an HTTP/1.1 chunked body"
            out += parts
        end = f.response.stream(b"")  # mitmproxy drops a b"" returned here
        out += [end] if isinstance(end, bytes) else list(end)
    m.response(f)
    return b"".join(out)


CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-unit1",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 20},
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    }
).encode()


def test_non_provider_flow_is_left_alone(meter: tuple[Meter, Any]) -> None:
    m, _ = meter
    f = _flow("https://example.com/v1/chat/completions", authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    assert m._active == {}
    f.response = http.Response.make(200, b"{}")
    m.responseheaders(f)
    assert f.response.stream is False


def test_provider_path_that_does_not_bill_is_left_alone(meter: tuple[Meter, Any]) -> None:
    m, _ = meter
    f = _flow("https://api.openai.com/v1/files")
    m.requestheaders(f)
    get = _flow(OPENAI_URL)
    get.request.method = "GET"
    m.requestheaders(get)
    assert m._active == {}


def test_json_response_of_known_length_is_buffered_and_metered(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """A small JSON body with Content-Length is left to mitmproxy to buffer (as plain
    mitmdump does) and metered once from the whole body in the response hook."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    pieces = [CHAT_JSON[:10], CHAT_JSON[10:100], CHAT_JSON[100:]]
    assert _respond(m, f, pieces, **{"content-type": "application/json", "x-request-id": "r1"}) == (
        CHAT_JSON
    )
    assert f.response is not None and f.response.stream is False
    m.done()
    [row] = _rows(tmp_path)
    assert (row["event_id"][:3], row["response_id"]) == ("ml:", "chatcmpl-unit1")
    assert row["streamed"] is False and row["ttft_ms"] is not None
    assert (row["consumer"], row["key_fingerprint"]) == ("alice", fingerprint(KEY))
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (30, 20, 7)
    assert (row["reasoning_tokens"], row["estimated"], row["request_id"]) == (3, False, "r1")
    assert (row["provider"], row["host"], row["path"]) == (
        "openai",
        "api.openai.com",
        "/v1/chat/completions",
    )


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_a_flow_still_open_at_shutdown_is_metered_once(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """SIGTERM: ``done`` meters a flow still under way as cut; mitmproxy may still hand
    on the rest of the stream afterwards. That must not record the call a second time
    (it did, under another event id, so no dedup caught it)."""
    m, _ = meter
    f = _flow(
        body={"model": "gpt-4o", "messages": [], "stream": True}, authorization=f"Bearer {KEY}"
    )
    m.requestheaders(f)
    m.request(f)
    base = {"id": "chatcmpl-unit-late", "model": "gpt-4o", "object": "chat.completion.chunk"}
    text = _sse({**base, "choices": [{"index": 0, "delta": {"content": "Hello"}}]})
    usage = _sse({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    m.responseheaders(f)
    stream = f.response.stream
    assert callable(stream)
    m.done()  # the proxy is stopping; the flow is metered as cut (no response id yet)
    for chunk in (text, usage, b"data: [DONE]\n\n", b""):
        stream(chunk)
    m.response(f)
    m.done()
    rows = _rows(tmp_path)
    assert [(r["consumer"], r["estimated"]) for r in rows] == [("alice", True)]


@pytest.mark.parametrize(
    "stream,durable,encoding",
    [(True, True, "identity"), (False, True, "gzip, br"), (True, False, "identity")],
)
def test_an_openai_stream_is_asked_for_unencoded(
    meter: tuple[Meter, Any], stream: bool, durable: bool, encoding: str
) -> None:
    """The proxy must see ``data: [DONE]`` in the bytes it forwards (a durable proxy
    spools there) and hold a stream's closing events until it (durable or not); gzip
    hides it. (include_usage already set: the body is not rewritten, only the header.)"""
    m, tctx = meter
    tctx.configure(m, meter_durable=durable)
    body = {"model": "gpt-4o", "messages": [], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    f = _flow(body=body, authorization=f"Bearer {KEY}", **{"accept-encoding": "gzip, br"})
    m.requestheaders(f)
    m.request(f)
    assert f.request.headers["accept-encoding"] == encoding


def test_include_usage_added_and_its_chunk_dropped(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    m, _ = meter
    f = _flow(
        body={"model": "gpt-4o", "messages": [], "stream": True},
        authorization=f"Bearer {KEY}",
        **{"accept-encoding": "gzip, br"},
    )
    m.requestheaders(f)
    m.request(f)
    assert json.loads(f.request.content or b"")["stream_options"] == {"include_usage": True}
    assert f.request.headers["accept-encoding"] == "identity"
    base = {"id": "chatcmpl-unit2", "model": "gpt-4o", "object": "chat.completion.chunk"}
    text = _sse({**base, "choices": [{"index": 0, "delta": {"content": "Hello"}}], "usage": None})
    usage = _sse({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    done = b"data: [DONE]\n\n"
    body = text + usage + done
    # Split inside the usage chunk: the dropper must hold it back, never emit b"".
    cut = len(text) + 15
    got = _respond(m, f, [body[:cut], body[cut:]], **{"content-type": "text/event-stream"})
    assert got == text + done
    m.done()
    [row] = _rows(tmp_path)
    assert (row["input_tokens"], row["output_tokens"], row["streamed"]) == (9, 2, True)


def test_include_usage_off(meter: tuple[Meter, Any]) -> None:
    m, tctx = meter
    tctx.configure(m, meter_include_usage=False)
    body = {"model": "gpt-4o", "messages": [], "stream": True}
    f = _flow(body=body)
    m.requestheaders(f)
    m.request(f)
    assert json.loads(f.request.content or b"") == body


@pytest.mark.parametrize(
    "url,expected",
    [
        (OPENAI_URL, {"error": {"code": "invalid_api_key", "type": "invalid_request_error"}}),
        ("https://api.anthropic.com/v1/messages", {"type": "error"}),
        (
            "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent",
            {"error": {"code": 401, "status": "UNAUTHENTICATED"}},
        ),
    ],
)
def test_reject_unknown_key(meter: tuple[Meter, Any], url: str, expected: dict[str, Any]) -> None:
    m, tctx = meter
    tctx.configure(m, meter_unknown_keys="reject")
    f = _flow(url, authorization="Bearer sk-stranger", **{"x-api-key": "sk-stranger"})
    m.requestheaders(f)
    m.request(f)
    assert f.response is not None and f.response.status_code == 401
    body = json.loads(f.response.content or b"")
    for key, value in expected.items():
        if isinstance(value, dict):
            assert value.items() <= body[key].items()
        else:
            assert body[key] == value
    assert m._active == {}
    known = _flow(url, authorization=f"Bearer {KEY}")
    m.requestheaders(known)
    m.request(known)
    assert known.response is None


def test_reject_policy_is_validated(meter: tuple[Meter, Any]) -> None:
    m, tctx = meter
    with pytest.raises(exceptions.OptionsError):
        tctx.configure(m, meter_unknown_keys="maybe")


def test_key_injection(meter: tuple[Meter, Any]) -> None:
    m, _ = meter
    f = _flow(authorization=f"Bearer {GATEWAY_KEY}", apikey=GATEWAY_KEY)
    m.requestheaders(f)
    m.request(f)
    assert f.response is None
    assert f.request.headers["authorization"] == "Bearer sk-real-provider"
    assert "apikey" not in f.request.headers
    consumer = m._active[f.id].identity.consumer
    assert consumer is not None and consumer.name == "carol"


def test_key_injection_missing_env_var_is_502(meter: tuple[Meter, Any]) -> None:
    m, _ = meter
    f = _flow("https://api.anthropic.com/v1/messages", **{"x-api-key": GATEWAY_KEY})
    m.requestheaders(f)
    m.request(f)
    assert f.response is not None and f.response.status_code == 502
    body = json.loads(f.response.content or b"")
    assert body["error"]["type"] == "api_error"
    assert "UNIT_UNSET_KEY is not set" in body["error"]["message"]


@pytest.mark.parametrize(
    "chunked,length,ctype",
    [(True, None, "application/json"), (False, 2 * 1024 * 1024, "application/json"),
     (False, None, "text/event-stream")],
)  # fmt: skip
def test_json_of_unknown_or_large_size_and_sse_are_streamed(
    meter: tuple[Meter, Any], chunked: bool, length: int | None, ctype: str
) -> None:
    """Chunked (unknown length) or large JSON bodies, and SSE, go through the stream
    callable: a cut body still reaches the client as far as it came, nothing big is held."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, b"", {"content-type": ctype})
    if chunked:
        del f.response.headers["content-length"]
    elif length is not None:
        f.response.headers["content-length"] = str(length)
    m.responseheaders(f)
    assert callable(f.response.stream)


def test_buffered_json_cut_short_is_estimated(meter: tuple[Meter, Any], tmp_path: Path) -> None:
    """A buffered body that never completed: mitmproxy calls ``error`` (no ``response``);
    the event is estimated from the request, with no status."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}", body={"model": "gpt-4o", "messages": [
        {"role": "user", "content": "please count these words"}]})  # fmt: skip
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, b"", {"content-type": "application/json"})
    f.response.headers["content-length"] = "5000"
    m.responseheaders(f)
    assert f.response.stream is False
    f.response.data.content = None  # the body never arrived whole
    m.error(f)
    m.done()
    [row] = _rows(tmp_path)
    assert row["estimated"] and row["status"] is None and row["input_tokens"] > 0
    assert row["output_tokens"] == 0 and row["event_id"].startswith("ml:")


def test_requested_stream_answered_with_json_is_streamed(meter: tuple[Meter, Any]) -> None:
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}", body={"model": "m", "messages": [], "stream": True})
    m.requestheaders(f)
    m.request(f)
    got = _respond(m, f, [CHAT_JSON], **{"content-type": "application/json"})
    assert got == CHAT_JSON


def test_aborted_stream_is_estimated(meter: tuple[Meter, Any], tmp_path: Path) -> None:
    m, _ = meter
    f = _flow(
        "http://127.0.0.1:9999/v1/messages",
        body={"model": "claude-x", "messages": [{"role": "user", "content": "count me"}]},
        **{"x-api-key": KEY},
    )
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    m.responseheaders(f)
    assert callable(f.response.stream)
    delta = {"type": "content_block_delta", "index": 0}
    f.response.stream(
        b"event: content_block_delta\ndata: "
        + json.dumps({**delta, "delta": {"type": "text_delta", "text": "partial answer"}}).encode()
        + b"\n\n"
    )
    f.error = None
    m.error(f)  # the stream was cut: no b"" call, no response hook
    m.done()
    [row] = _rows(tmp_path)
    assert row["provider"] == "local-llm" and row["estimated"]
    assert row["status"] is None and row["event_id"].startswith("ml:")
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0


def test_metering_is_deferred_after_forwarding(meter: tuple[Meter, Any]) -> None:
    """On the event loop, the chunk is returned first; parsing runs on the next loop step."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, b"", {"content-type": "application/json"})
    del f.response.headers["content-length"]  # unknown length: streamed
    m.responseheaders(f)
    st = m._active[f.id]
    stream = f.response.stream
    assert callable(stream)

    async def run() -> tuple[int, int]:
        assert stream(CHAT_JSON) == CHAT_JSON
        queued = len(m.deferred.pending)
        await asyncio.sleep(0)
        return queued, len(m.deferred.pending)

    assert asyncio.run(run()) == (1, 0)
    assert st.extractor is not None and st.extractor.problems == []


def test_bad_catalog_is_an_options_error(meter: tuple[Meter, Any], tmp_path: Path) -> None:
    m, tctx = meter
    bad = tmp_path / "bad.yaml"
    bad.write_text("consumers: [{name: Not Valid}]\n")
    with pytest.raises(exceptions.OptionsError, match="bad.yaml"):
        tctx.configure(m, meter_catalog=str(bad))
    with pytest.raises(exceptions.OptionsError, match="file not found"):
        tctx.configure(m, meter_catalog=str(tmp_path / "missing.yaml"))


def test_bad_flush_interval_and_spool(meter: tuple[Meter, Any], tmp_path: Path) -> None:
    m, tctx = meter
    with pytest.raises(exceptions.OptionsError, match="meter_flush_interval"):
        tctx.configure(m, meter_flush_interval="soon")
    with pytest.raises(exceptions.OptionsError, match="meter_flush_interval"):
        tctx.configure(m, meter_flush_interval="0")
    m.running()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(exceptions.OptionsError, match="meter_spool"):
        tctx.configure(m, meter_spool=str(blocker / "spool"))


def test_a_db_in_a_missing_directory_is_an_options_error(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    m, tctx = meter
    with pytest.raises(exceptions.OptionsError, match=r"meter_db: .*missing is not a directory"):
        tctx.configure(m, meter_db=str(tmp_path / "missing" / "events.duckdb"))
    tctx.configure(m, meter_db=str(tmp_path / "events.duckdb"))  # the file itself may be new
    tctx.configure(m, meter_db="ducklake:postgres:dbname=x")  # a lake is checked on attach


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINE_DB", "ducklake:postgres:dbname=meter")
    monkeypatch.setenv("METERLINE_CATALOG", "/etc/meterline/catalog.yaml")
    m = Meter()
    with taddons.context(m) as tctx:
        assert tctx.options.meter_db == "ducklake:postgres:dbname=meter"
        assert tctx.options.meter_catalog == "/etc/meterline/catalog.yaml"
        assert tctx.options.meter_unknown_keys == "record"
        assert tctx.options.meter_include_usage is True


def test_response_not_streamed_through_us_is_read_whole(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """E.g. another addon answered the request: the body is read in the response hook."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, CHAT_JSON, {"content-type": "application/json"})
    m.response(f)
    m.done()
    [row] = _rows(tmp_path)
    assert (row["response_id"], row["output_tokens"], row["estimated"]) == (
        "chatcmpl-unit1",
        7,
        False,
    )


def test_streaming_notice_hidden_for_metered_hosts_only(meter: tuple[Meter, Any]) -> None:
    """mitmproxy's per-flow "Streaming response from <host>." line is dropped for metered
    flows (plain mitmdump prints nothing for a buffered response); other hosts keep it."""
    import logging

    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    _respond(m, f, [CHAT_JSON], chunked=True)  # unknown length: streamed
    server_log = logging.getLogger("mitmproxy.proxy.server")

    def shown(message: str) -> bool:
        record = server_log.makeRecord(
            server_log.name, logging.INFO, __file__, 0, message, (), None
        )
        return server_log.filter(record) is not False

    assert not shown("Streaming response from api.openai.com.")
    assert shown("Streaming response from example.com.")
    assert shown("client connect")


def test_heavy_libraries_not_loaded_with_the_addon() -> None:
    """tiktoken (~50 MiB) loads on the first estimate only; pyarrow is not used at all."""
    import subprocess
    import sys

    code = (
        "import sys, addons.meter; "
        "print(sorted(m for m in ('tiktoken', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]"


def test_buffered_body_is_metered_after_the_reply_and_never_lost(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """With meter_durable off, a buffered body is metered a few loop steps after
    `response`, once mitmproxy has sent it; `done` still finishes one whose turn has not
    come."""
    m, tctx = meter
    tctx.configure(m, meter_durable=False)
    flows = []
    for n in (1, 2):
        f = _flow(authorization=f"Bearer {KEY}")
        m.requestheaders(f)
        m.request(f)
        body = CHAT_JSON.replace(b"chatcmpl-unit1", f"chatcmpl-unit{n}".encode())
        f.response = http.Response.make(200, body, {"content-type": "application/json"})
        m.responseheaders(f)
        assert f.response.stream is False
        flows.append(f)

    async def run() -> list[tuple[int, int]]:
        m.response(flows[0])
        seen = [(len(m.deferred.after_reply), len(m.deferred.pending))]
        for _ in range(4):
            await asyncio.sleep(0)
            seen.append((len(m.deferred.after_reply), len(m.deferred.pending)))
        m.response(flows[1])  # its turn never comes before the shutdown
        m.done()
        return seen

    seen = asyncio.run(run())
    assert seen[0] == (1, 0)  # nothing metered on the step that sends the reply
    assert seen[-1] == (0, 0)  # metered a few steps later
    assert len(m.deferred.after_reply) == 0
    assert sorted(r["response_id"] for r in _rows(tmp_path)) == [
        "chatcmpl-unit1",
        "chatcmpl-unit2",
    ]


def test_durable_buffered_body_is_spooled_before_the_reply(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """meter_durable (the default): when `response` returns, before mitmproxy sends the
    body, the event is already in the spool (a kill -9 then cannot lose it)."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, CHAT_JSON, {"content-type": "application/json"})
    m.responseheaders(f)

    async def run() -> int:
        m.response(f)
        assert m.spool is not None
        return sum(p.read_bytes().count(b"\n") for p in m.spool.directory.glob("*.open"))

    assert asyncio.run(run()) == 1
    assert not m.deferred.after_reply and not m.deferred.pending


def test_a_body_far_past_the_limit_is_one_estimated_event(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """A JSON body past the 16 MiB limit in many chunks: every chunk past it wrapped the
    extractor once more, and ~1,000 wrappers overflowed the stack when the flow was
    metered: no event (a probe: 0 of 1 for 40 MiB in 16 KiB chunks, and 90 MiB)."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}")
    m.requestheaders(f)
    m.request(f)
    big = b"0.123456789, " * 5042  # 64 KiB of an embedding's floats
    chunks = [b"[", *[big] * 257, *[b"0.5, " * 20] * 1500, b"0]"]  # past 16 MiB, 1,500 more
    got = _respond(m, f, chunks, chunked=True)
    assert got == b"".join(chunks)
    m.done()
    [row] = _rows(tmp_path)
    assert row["estimated"] and row["status"] == 200


def test_the_hook_index_follows_its_option_and_ends_with_the_meter(
    meter: tuple[Meter, Any],
) -> None:
    """``meter_fast_dispatch`` on (the default): the running meter indexes its master's
    hook dispatch; set off while running (mitmproxy's ``:set``), mitmproxy's own walk is
    back; on again, indexed again; the meter's ``done`` takes the index off."""
    m, tctx = meter
    addons = tctx.master.addons
    m.running()
    assert m.hook_index is not None and "trigger_event" in vars(addons)
    tctx.configure(m, meter_fast_dispatch=False)
    assert m.hook_index is None and "trigger_event" not in vars(addons)
    tctx.configure(m, meter_fast_dispatch=True)
    assert m.hook_index is not None and addons.trigger_event == m.hook_index.trigger_event
    m.done()
    assert m.hook_index is None and "trigger_event" not in vars(addons)
