"""Incremental ``Content-Encoding`` decoding of a response body, chunk by chunk.

The meter reads a copy of the body while the client gets the original bytes, so decoding
problems never reach the client: :meth:`IncrementalDecoder.decode` raises ``ValueError``
on corrupt data and the caller stops metering that flow.

Codecs are the ones mitmproxy itself decodes with: :mod:`zlib` (gzip, deflate in both
its zlib-wrapped and raw forms), ``brotli`` and zstd (``compression.zstd`` on Python 3.14+,
else the ``backports.zstd`` package that mitmproxy depends on).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd  # type: ignore[no-redef]


class _Step(Protocol):
    def decode(self, chunk: bytes, limit: int) -> bytes:
        """Decoded bytes of ``chunk``: at most about ``limit`` of them (more is not read)."""
        ...

    def flush(self) -> bytes: ...


_GZIP_MAGIC = b"\x1f\x8b"


class _Gzip:
    """gzip, including several concatenated members (RFC 1952 allows it).

    Bytes after a member that cannot start another one are ignored, as gzip(1) does
    ("trailing garbage ignored") and lenient servers do: refusing the whole body would
    leave the meter blind to a request a provider may well read (its model, its limit)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._ended = False

    def decode(self, chunk: bytes, limit: int) -> bytes:
        out = []
        while chunk and limit > 0 and not self._ended:
            try:
                piece = self._d.decompress(chunk, limit)
            except zlib.error as exc:
                raise ValueError(f"corrupt gzip data: {exc}") from None
            out.append(piece)
            limit -= len(piece)
            if not self._d.eof:
                break
            chunk = self._d.unused_data
            if chunk and not _GZIP_MAGIC.startswith(chunk[:2]):
                self._ended = True  # trailing garbage: the body ends with the last member
                break
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return b"".join(out)

    def flush(self) -> bytes:
        return b"" if self._ended else self._d.flush()


class _Deflate:
    """HTTP "deflate": zlib-wrapped (RFC 1950) as specified, or raw (RFC 1951) as some
    servers send it. The two-byte zlib header decides, as in browsers and mitmproxy."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = None
        self._head = b""

    def decode(self, chunk: bytes, limit: int) -> bytes:
        if self._d is None:
            self._head += chunk
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            chunk, self._head = self._head, b""
        try:
            return self._d.decompress(chunk, max(limit, 1))
        except zlib.error as exc:
            raise ValueError(f"corrupt deflate data: {exc}") from None

    def flush(self) -> bytes:
        if self._d is None:
            if self._head:  # a single byte cannot be a deflate stream
                raise ValueError("corrupt deflate data: 1-byte body")
            return b""
        return self._d.flush()


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decode(self, chunk: bytes, limit: int) -> bytes:
        if not chunk:
            return b""
        if self._d.is_finished():
            raise ValueError("corrupt br data: bytes after the end of the stream")
        try:
            return self._d.process(chunk, output_buffer_limit=max(limit, 1))
        except brotli.error as exc:
            raise ValueError(f"corrupt br data: {exc}") from None

    def flush(self) -> bytes:
        return b""


class _Zstd:
    """zstd, including several concatenated frames."""

    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor()

    def decode(self, chunk: bytes, limit: int) -> bytes:
        out = []
        while chunk and limit > 0:
            try:
                piece = self._d.decompress(chunk, limit)
            except zstd.ZstdError as exc:
                raise ValueError(f"corrupt zstd data: {exc}") from None
            out.append(piece)
            limit -= len(piece)
            if not self._d.eof:
                break
            chunk = self._d.unused_data
            self._d = zstd.ZstdDecompressor()
        return b"".join(out)

    def flush(self) -> bytes:
        return b""


_CODECS: dict[str, Callable[[], _Step]] = {
    "gzip": _Gzip,
    "x-gzip": _Gzip,
    "deflate": _Deflate,
    "br": _Brotli,
    "zstd": _Zstd,
}


class IncrementalDecoder:
    """Undo a ``Content-Encoding`` header value, e.g. ``"gzip"`` or ``"gzip, br"``.

    Stacked codings were applied left to right, so they are undone right to left.
    ``identity`` (or an empty header) passes bytes through. A truncated body is not an
    error here: :meth:`flush` returns what could be decoded; the extractor then sees a
    cut stream.

    ``max_output`` bounds the decoded bytes (a decompression bomb): each codec is asked
    for no more than what is left, so memory and CPU stay bounded, and going past it
    raises :class:`OutputLimitExceeded`. It may be raised later (:attr:`max_output`).
    """

    def __init__(self, content_encoding: str, max_output: int | None = None) -> None:
        names = [n.strip().lower() for n in content_encoding.split(",")]
        names = [n for n in names if n and n != "identity"]
        unknown = [n for n in names if n not in _CODECS]
        if unknown:
            raise ValueError(
                f"unsupported Content-Encoding {', '.join(unknown)!s} in {content_encoding!r}"
            )
        self._steps: list[_Step] = [_CODECS[n]() for n in reversed(names)]
        self.max_output = max_output
        self.produced = 0

    def _limit(self) -> int:
        """Bytes a step may still produce: one more than allowed, to notice going past."""
        if self.max_output is None:
            return _UNBOUNDED
        return self.max_output - self.produced + 1

    def _count(self, out: bytes) -> bytes:
        self.produced += len(out)
        if self.max_output is not None and self.produced > self.max_output:
            raise OutputLimitExceeded(
                f"decoded body over {self.max_output} bytes (compressed far beyond real text)"
            )
        return out

    def decode(self, chunk: bytes) -> bytes:
        for step in self._steps:
            if not chunk:
                break
            chunk = step.decode(chunk, self._limit())
        return self._count(chunk)

    def flush(self) -> bytes:
        data = b""
        for step in self._steps:
            data = (step.decode(data, self._limit()) if data else b"") + step.flush()
        return self._count(data)


class OutputLimitExceeded(ValueError):
    """The decoded body went past ``max_output``: stop reading it (not corrupt data)."""


_UNBOUNDED = 1 << 62
