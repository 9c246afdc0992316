from __future__ import annotations

import io

from addons.metering.redact import RedactingWriter, install, redact


def test_redact_query_and_headers() -> None:
    line = "1.2.3.4:5: POST https://g/v1beta/models/m:generateContent?alt=sse&key=AIzaSECRET"
    assert redact(line).endswith("?alt=sse&key=[redacted]")
    headers = "    Authorization: Bearer sk-1\n    x-goog-api-key: g\n    accept: */*"
    assert redact(headers) == (
        "    Authorization: Bearer [redacted]\n    x-goog-api-key: [redacted]\n    accept: */*"
    )
    coloured = "\x1b[1mhttps://g/x?key=s\x1b[0m"
    assert redact(coloured) == "\x1b[1mhttps://g/x?key=[redacted]\x1b[0m"
    assert redact("no secrets here") == "no secrets here"


def test_install_wraps_the_dumper_once() -> None:
    class Dumper:
        outfp = io.StringIO()

    d = Dumper()
    assert install(d) and install(d)
    assert isinstance(d.outfp, RedactingWriter)
    assert not isinstance(d.outfp.inner, RedactingWriter)
    print("x?key=secret", file=d.outfp)
    assert d.outfp.inner.getvalue() == "x?key=[redacted]\n"
    assert not install(None)
