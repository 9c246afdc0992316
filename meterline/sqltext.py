"""Values written into SQL text as literals: the one quoting of a string for DuckDB.

Meterline inlines values instead of binding parameters on its hot paths: the DuckDB
Python client tries ``import pandas`` for every bound parameter, and where pandas is not
installed that failed import searches ``sys.path`` each time, holding the GIL the proxy's
event loop needs. DuckDB's string literals (standard SQL) escape only the quote.
"""

from __future__ import annotations


def sql_string(text: str) -> str:
    """``text`` as a DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"
