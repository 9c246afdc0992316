"""Billing: turns metered usage events into exact, reproducible invoices.

Knows the catalog, DuckDB and money; knows nothing of HTTP or the proxy.
See billing/README.md for what this package owns.
"""
