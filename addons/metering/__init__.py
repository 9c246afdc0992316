"""Pure parts of the meter (no mitmproxy ``ctx``): parsers, registries, spool."""
