"""Extra panels on a customer's page: the extension point for entitlements and credits.

A panel is a :class:`CustomerPanel`: a ``data`` function (store, catalog, customer key,
instant) returning JSON-able data or ``None`` (nothing to show: the panel is left out of
the page and its JSON twin), and an ``html`` function rendering that data. Modules that
own the data register their panel with :func:`register`, e.g. governance::

    from billing.dashboard.panels import CustomerPanel, register
    register(CustomerPanel("entitlements", "Entitlements", entitlement_gauges, gauges_html))

The page and its ``.json`` twin list the panels under ``panels``, keyed by name.
Panels are imported by name from :data:`PANEL_MODULES` when present, so the dashboard
works (and shows nothing for them) before those modules exist. ``billing.dashboard.
governance`` adapts ``billing entitlements``' rows into gauges.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from meterline.catalog import Catalog

PanelData = Callable[[duckdb.DuckDBPyConnection, Catalog, str, datetime], Any]


@dataclass(frozen=True)
class CustomerPanel:
    name: str
    title: str
    data: PanelData
    html: Callable[[Any], str]


PANELS: dict[str, CustomerPanel] = {}

PANEL_MODULES = ("billing.dashboard.governance",)
"""Modules that register a panel when imported; missing ones are skipped. The
governance adapter registers the entitlement gauges only when ``billing.entitlements``
exists."""


def register(panel: CustomerPanel) -> None:
    PANELS[panel.name] = panel


def load_panels() -> dict[str, CustomerPanel]:
    for module in PANEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise  # the module exists but one of its own imports is missing
    return PANELS
