"""The real proxy warns at start about catalog providers that look like plain HTTP."""

from __future__ import annotations

from tests.support.proxy import MeterProxy


def test_plain_http_providers_are_named_in_the_log(meter_proxy: MeterProxy) -> None:
    # The test catalog's fake providers listen on 127.0.0.1 with their own ports.
    found = meter_proxy.wait_for_log(
        r"catalog provider\(s\) on a port other than 443, likely plain http:// \((.*?)\): "
        r"agents must set HTTP_PROXY as well as HTTPS_PROXY"
    )
    assert "fake-openai 127.0.0.1:" in found.group(1)
