"""Gateway routes as the catalog states them: the provider path each route calls, or why
it has none.

A fact of the catalog, not of HTTP: the catalog's validation refuses every route this
module refuses, and the proxy (:class:`addons.metering.routes.RouteTable`) calls the path
it resolves. So ``billing catalog check`` fails on each route the proxy would refuse at
start (before, the check passed a Gemini route without a model or an Anthropic
embeddings route, and the proxy then would not start), and the two never disagree on a rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from meterline.billedpaths import is_billed_path
from meterline.catalog.proxyside import Provider, Route, RouteType
from meterline.providers import BUILTIN_PROVIDERS, DEFAULT_BASE_PATH, Flavor, base_path

_ENDPOINTS: dict[tuple[Flavor, RouteType], str] = {
    ("openai", "llm/v1/chat"): "/chat/completions",
    ("openai", "llm/v1/completions"): "/completions",
    ("openai", "llm/v1/embeddings"): "/embeddings",
    ("anthropic", "llm/v1/chat"): "/messages",
    ("gemini", "llm/v1/chat"): "/models/{model}:generateContent",
}
"""The endpoint a route type calls, per API flavor, under the provider's base path."""


def endpoint(
    flavor: Flavor, route_type: RouteType, model: str | None, base: str | None = None
) -> str:
    """The provider path for ``route_type`` under ``base`` (default: the flavor's base
    path); raises ValueError when the flavor has none."""
    template = _ENDPOINTS.get((flavor, route_type))
    if template is None:
        raise ValueError(f"the {flavor} API has no {route_type} endpoint")
    if base is None:
        base = DEFAULT_BASE_PATH[flavor]
    if "{model}" in template:
        if model is None:
            raise ValueError(f"a route to the {flavor} API needs a model (it is part of the path)")
        name = model.removeprefix("models/")  # the SDKs' resource name: models/gemini-...
        if not name or any(c in name for c in "/:?#%"):
            raise ValueError(
                f"model {model!r}: a {flavor} model is one path segment (gemini-2.5-flash)"
            )
        return base + template.format(model=name)
    return base + template


def upstream_path(route: Route, flavor: Flavor) -> str:
    """The path (and query) ``route`` calls on its provider, whose API is ``flavor``: its
    ``upstream_path``, else the endpoint its type implies under the provider's base path
    (:func:`meterline.providers.base_path`: Groq's ``/openai/v1``). ValueError says why
    there is none, or why Meterline would not meter it."""
    upstream = route.upstream_path or endpoint(
        flavor, route.type, route.model, base_path(route.provider, flavor)
    )
    if not is_billed_path(flavor, upstream):
        raise ValueError(f"{upstream} is not an endpoint Meterline meters on the {flavor} API")
    return upstream


def provider_flavor(name: str, declared: Iterable[Provider]) -> Flavor | None:
    """The API flavor of the provider called ``name``: the catalog's entry wins over a
    built-in of that name, as in the proxy's registry; None when there is neither."""
    for provider in declared:
        if provider.name == name:
            return provider.flavor
    return next((p.flavor for p in BUILTIN_PROVIDERS if p.name == name), None)


def where(index: int, route: Route) -> str:
    """How problems name a route: ``routes[0] (/chat)``."""
    return f"routes[{index}] ({route.path})"


def route_problems(routes: list[Route], declared: list[Provider]) -> list[tuple[str, str]]:
    """``(where, problem)`` for each route the proxy could not serve; a route to an
    unknown provider is left to the catalog's reference check, which names it."""
    problems: list[tuple[str, str]] = []
    for i, route in enumerate(routes):
        flavor = provider_flavor(route.provider, declared)
        if flavor is None:
            continue
        try:
            upstream_path(route, flavor)
        except ValueError as e:
            problems.append((where(i, route), str(e)))
    return problems
