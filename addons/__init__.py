"""The metering proxy: a mitmproxy addon (``mitmdump -s addons/meter.py``) and its parts.

Knows HTTP, providers and usage events; knows nothing of invoices.
"""
