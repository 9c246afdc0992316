from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.metering.decoding import IncrementalDecoder, zstd

PAYLOAD = b"".join(
    b'data: {"choices":[{"delta":{"content":"token %d"}}]}\n\n' % i for i in range(400)
)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 specifies
    "deflate-raw": raw_deflate,  # raw, as some servers send it
    "br": brotli.compress,
    "zstd": zstd.compress,
}


def encode(header: str, data: bytes) -> bytes:
    """Apply the codings of a Content-Encoding value, left to right."""
    for name in (n.strip() for n in header.split(",")):
        data = ENCODERS[name](data)
    return data


def decode_in_chunks(header: str, body: bytes, size: int) -> bytes:
    dec = IncrementalDecoder(header.replace("deflate-raw", "deflate"))
    out = b"".join(dec.decode(body[i : i + size]) for i in range(0, len(body), size))
    return out + dec.flush()


@pytest.mark.parametrize(
    "header",
    [
        "identity",
        "gzip",
        "x-gzip",
        "deflate",
        "deflate-raw",
        "br",
        "zstd",
        "gzip, br",
        "br, zstd",
        "deflate, gzip",
        "identity, gzip",
    ],
)
@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_round_trip(header: str, size: int) -> None:
    assert decode_in_chunks(header, encode(header, PAYLOAD), size) == PAYLOAD


@settings(max_examples=60, deadline=None)
@given(
    header=st.sampled_from(["gzip", "deflate", "deflate-raw", "br", "zstd", "gzip, br"]),
    payload=st.binary(max_size=3000),
    data=st.data(),
)
def test_random_chunking(header: str, payload: bytes, data: st.DataObject) -> None:
    body = encode(header, payload)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=15)))
    bounds = [0, *cuts, len(body)]
    dec = IncrementalDecoder(header.replace("deflate-raw", "deflate"))
    out = b"".join(dec.decode(body[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    assert out + dec.flush() == payload


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (
            "gzip",
            gzip.compress(b"one ", mtime=0) + gzip.compress(b"two", mtime=0),
        ),  # concatenated members
        ("zstd", zstd.compress(b"one ") + zstd.compress(b"two")),  # concatenated frames
    ],
    ids=["gzip-members", "zstd-frames"],  # never ids from the bodies: gzip embeds the time
)
def test_concatenated_members(header: str, body: bytes) -> None:
    assert decode_in_chunks(header, body, 5) == b"one two"


@pytest.mark.parametrize("header", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_corrupt_data_is_a_value_error(header: str) -> None:
    body = bytearray(encode(header, PAYLOAD))
    for i in range(2, min(len(body), 40)):
        body[i] ^= 0xA5
    dec = IncrementalDecoder(header)
    with pytest.raises(ValueError, match="corrupt"):
        dec.decode(bytes(body))
        dec.flush()


@pytest.mark.parametrize("header", ["br", "zstd"])
def test_garbage_after_the_end_is_a_value_error(header: str) -> None:
    dec = IncrementalDecoder(header)
    dec.decode(encode(header, b"ok"))
    with pytest.raises(ValueError, match="corrupt"):
        dec.decode(b"not compressed at all")


@pytest.mark.parametrize("split", [0, 1, 3])
def test_garbage_after_the_last_gzip_member_is_ignored(split: int) -> None:
    """As gzip(1) and urllib3 do ("trailing garbage"): before, the whole body was
    corrupt, so a request's model (and its limit) went unread though a lenient provider
    reads it. A second member, even split across chunks, is still decoded."""
    body = encode("gzip", b"ok") + encode("gzip", b"!") + b"not compressed at all"
    dec = IncrementalDecoder("gzip")
    cut = len(encode("gzip", b"ok")) + split
    assert dec.decode(body[:cut]) + dec.decode(body[cut:]) + dec.flush() == b"ok!"
    assert dec.decode(b"more garbage") == b""


@pytest.mark.parametrize("header", ["gzip", "deflate", "br", "zstd"])
def test_truncated_body_returns_what_it_can(header: str) -> None:
    body = encode(header, PAYLOAD)
    dec = IncrementalDecoder(header)
    out = dec.decode(body[: len(body) // 2]) + dec.flush()
    assert PAYLOAD.startswith(out)


@pytest.mark.parametrize("header", ["compress", "gzip, lzma", "sdch", "br;q=1"])
def test_unknown_encoding_is_a_value_error_at_construction(header: str) -> None:
    with pytest.raises(ValueError, match="unsupported Content-Encoding"):
        IncrementalDecoder(header)


@pytest.mark.parametrize("header", ["", "identity", " GZIP ", "Br"])
def test_header_is_case_and_space_tolerant(header: str) -> None:
    name = header.strip().lower() or "identity"
    assert decode_in_chunks(header, encode(name, PAYLOAD), 100) == PAYLOAD


def test_one_byte_deflate_body_is_corrupt() -> None:
    dec = IncrementalDecoder("deflate")
    assert dec.decode(b"x") == b""
    with pytest.raises(ValueError, match="corrupt deflate"):
        dec.flush()


@pytest.mark.parametrize("header", ["gzip", "deflate", "br", "zstd", "gzip, gzip"])
def test_output_is_bounded(header: str) -> None:
    """A bomb is decoded to just past the bound, never further, then refused."""
    from addons.metering.decoding import OutputLimitExceeded

    body = encode(header, b" " * (8 * 1024 * 1024))
    decoder = IncrementalDecoder(header, max_output=1024 * 1024)
    with pytest.raises(OutputLimitExceeded):
        decoder.decode(body)
    # zlib and zstd stop at the bound exactly; brotli's buffer grows in steps, so "about".
    assert decoder.produced <= 3 * 1024 * 1024
    within = IncrementalDecoder(header, max_output=16 * 1024 * 1024)
    assert len(within.decode(body) + within.flush()) == 8 * 1024 * 1024
