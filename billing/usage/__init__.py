"""Usage aggregations: every scan of ``usage_events`` billing makes is in this package.

- :mod:`billing.usage.windows`: invoice windows and their token sums in one pass
- :mod:`billing.usage.behind`: the events behind one invoice line
- :mod:`billing.usage.report`: the usage report (``billing usage``, the dashboard)
- :mod:`billing.usage.invoiced`: usage the stored invoices billed (margin)

Timestamps in the store are naive ``TIMESTAMP`` in UTC; these modules take and return
aware UTC datetimes and convert at the boundary (``billing.storevalues``). The names
below are re-exported so ``from billing.usage import ...`` keeps working.
"""

from billing.usage.behind import EVENT_FIELDS, TokenFilter, events_behind
from billing.usage.invoiced import INVOICED_USAGE_SQL, invoiced_events, invoiced_usage
from billing.usage.report import (
    GROUP_DIMENSIONS,
    STRANDED_REASON,
    UNBILLED_REASON,
    UNPRICED_PREFIX,
    UNPRICED_REASON,
    UsageError,
    UsageQuery,
    is_unpriced,
    parse_group_by,
    stranded_usage,
    usage_report,
)
from billing.usage.windows import (
    AGGREGATE_SQL,
    WINDOWED_EVENTS,
    UsageWindow,
    WindowUsage,
    aggregate_windows,
    load_windows,
    windowed_events,
    windows_with_events,
)
from meterline.eventschema import TOKEN_COLUMNS

__all__ = [
    "AGGREGATE_SQL",
    "EVENT_FIELDS",
    "GROUP_DIMENSIONS",
    "INVOICED_USAGE_SQL",
    "TOKEN_COLUMNS",
    "UNBILLED_REASON",
    "UNPRICED_PREFIX",
    "STRANDED_REASON",
    "UNPRICED_REASON",
    "WINDOWED_EVENTS",
    "TokenFilter",
    "UsageError",
    "UsageQuery",
    "UsageWindow",
    "WindowUsage",
    "aggregate_windows",
    "events_behind",
    "invoiced_events",
    "invoiced_usage",
    "is_unpriced",
    "load_windows",
    "parse_group_by",
    "stranded_usage",
    "usage_report",
    "windowed_events",
    "windows_with_events",
]
