"""The product catalog: ``catalog.yaml`` as typed, validated pydantic models.

Both halves of Meterline read it: the proxy uses ``providers``, ``consumers``,
``routes`` and what governance enforces (see :mod:`meterline.proxycatalog`); billing
uses everything. Every model forbids unknown fields so a typo is an error, not a
silently ignored setting. Money fields are ``Decimal`` in the plan's currency (major
unit, e.g. USD dollars, not cents); negative prices are rejected.

:func:`load_catalog` turns any problem into one :class:`CatalogError` whose message
names the file, the path inside it (``plans[1].rate_cards[0].price.tiers[2]``) and
the problem.

- :mod:`~meterline.catalog.base`: shared types (token types, money, currency, durations)
- :mod:`~meterline.catalog.proxyside`: providers, consumers and keys, routes
- :mod:`~meterline.catalog.products`: features, prices, entitlements, rate cards, plans
- :mod:`~meterline.catalog.customers`: customers, subscriptions, alerts, seller
- :mod:`~meterline.catalog.root`: :class:`Catalog` and its cross references
- :mod:`~meterline.catalog.loading`: YAML file -> :class:`Catalog`, readable errors
- :mod:`~meterline.catalog.uniquekeys`: the YAML loaders, refusing a key written twice

Every name is re-exported here: import from ``meterline.catalog``.
"""

from meterline.catalog.base import (
    CALL_TYPES,
    FINGERPRINT_RE,
    ISO_DURATION_RE,
    KEY_RE,
    TOKEN_ONLY_TYPES,
    TOKEN_TYPES,
    CatalogError,
    CurrencyCode,
    Money,
    TokenType,
)
from meterline.catalog.customers import (
    Alerts,
    Customer,
    InvoiceSettings,
    Seller,
    Subscription,
    Webhook,
)
from meterline.catalog.loading import (
    View,
    load_catalog,
    parse_catalog,
    render_validation_error,
)
from meterline.catalog.products import (
    Entitlement,
    EntitlementOverride,
    Feature,
    FeatureMeter,
    FlatPrice,
    PackagePrice,
    Plan,
    Price,
    RateCard,
    Tier,
    TieredPrice,
    UnitPrice,
)
from meterline.catalog.proxyside import Consumer, ConsumerKey, Provider, Route, RouteType
from meterline.catalog.root import Catalog, CatalogProblems
from meterline.providers import Flavor

__all__ = [
    "CALL_TYPES",
    "FINGERPRINT_RE",
    "ISO_DURATION_RE",
    "KEY_RE",
    "TOKEN_ONLY_TYPES",
    "TOKEN_TYPES",
    "Alerts",
    "Catalog",
    "CatalogError",
    "CatalogProblems",
    "Consumer",
    "ConsumerKey",
    "CurrencyCode",
    "Customer",
    "Entitlement",
    "EntitlementOverride",
    "Feature",
    "FeatureMeter",
    "FlatPrice",
    "Flavor",
    "InvoiceSettings",
    "Money",
    "PackagePrice",
    "Plan",
    "Price",
    "Provider",
    "RateCard",
    "Route",
    "RouteType",
    "Seller",
    "Subscription",
    "Tier",
    "TieredPrice",
    "TokenType",
    "UnitPrice",
    "View",
    "Webhook",
    "load_catalog",
    "parse_catalog",
    "render_validation_error",
]
