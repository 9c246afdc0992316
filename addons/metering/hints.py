"""Start-up hints for the proxy log: set-ups that silently meter nothing.

Agents usually set only ``HTTPS_PROXY``. Most HTTP clients then send ``http://`` URLs
(a local vLLM or Ollama) straight to the server, past the proxy, and nothing is
metered, without any error. The catalog gives hosts without a scheme, so the proxy
cannot know which are plain HTTP; a host with an explicit port other than 443 almost
always is (``localhost:8000``, ``127.0.0.1:11434``), and for those it says so once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from addons.metering.providers import ProviderRegistry, parse_host_pattern
from addons.metering.routes import RouteTable
from meterline.catalog import Catalog
from meterline.conninfo import shown

log = logging.getLogger("meterline.proxy")


def plain_http_providers(catalog: Catalog | None) -> list[tuple[str, str]]:
    """``(provider, host pattern)`` of catalog providers probably served over plain HTTP."""
    found = []
    for provider in catalog.providers if catalog else []:
        for pattern in provider.hosts:
            try:
                _host, port, _wildcard = parse_host_pattern(pattern)
            except ValueError:
                continue  # reported when the registry is built
            if port is not None and port != 443:
                found.append((provider.name, pattern))
    return found


def plain_http_warning(catalog: Catalog | None) -> str | None:
    """One log line naming those hosts, or None."""
    found = plain_http_providers(catalog)
    if not found:
        return None
    hosts = ", ".join(f"{name} {pattern}" for name, pattern in found)
    return (
        f"meterline: catalog provider(s) on a port other than 443, likely plain http:// "
        f"({hosts}): agents must set HTTP_PROXY as well as HTTPS_PROXY (and the lower-case "
        "http_proxy for curl), or their requests to those hosts bypass the proxy and are "
        "not metered"
    )


def log_startup(
    registry: ProviderRegistry,
    catalog: Catalog | None,
    routes: RouteTable,
    db: str,
    spool: Path | str,
) -> None:
    """What the proxy meters and where events go, its gateway routes, and the hint above."""
    log.info(
        "meterline: metering %d provider(s), %d consumer(s); events -> %s via spool %s",
        len(registry.providers),
        len(catalog.consumers) if catalog else 0,
        shown(db),
        spool,
    )
    for route in routes:
        log.info(
            "meterline: gateway route POST %s -> %s %s%s",
            route.path,
            route.provider.name,
            route.upstream_path,
            f" (model pinned to {route.model})" if route.model else "",
        )
        if route.home is None:
            log.warning(
                "meterline: gateway route %s: %s has no one host to call (a wildcard or "
                "several hosts): served only by a gateway whose reverse target is its "
                "host, refused (502) by any other",
                route.path,
                route.provider.name,
            )
    plain_http = plain_http_warning(catalog)
    if plain_http:
        log.warning(plain_http)
