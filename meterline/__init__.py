"""Meterline's shared core: the catalog and the usage-event store.

The proxy (``addons``) and billing (``billing``) both depend on this package and on
nothing of each other: the proxy knows nothing of invoices, billing nothing of HTTP.
"""
