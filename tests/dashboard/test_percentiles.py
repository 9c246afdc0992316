"""The two-scan percentiles equal DuckDB's ``quantile_disc`` on a real store file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from billing.dashboard.percentiles import disc_rank, quantiles_by_provider
from billing.store import billing_store

QS = (Fraction(1, 2), Fraction(95, 100), Fraction(99, 100), Fraction(1, 100), Fraction(1))

# (rows, how a value is made from i: distinct fractions, heavy ties, few rows, NULLs)
CASES = {
    "distinct": (5003, "(hash(i) % 1000003) / 997.0"),
    "ties": (4001, "CAST(hash(i) % 7 AS DOUBLE) * 3"),
    "few": (3, "i * 1.5"),
    "nulls": (2000, "CASE WHEN i % 3 = 0 THEN NULL ELSE (hash(i) % 5000) / 7.0 - 100 END"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equal_to_quantile_disc(tmp_path: Path, case: str) -> None:
    rows, value = CASES[case]
    with billing_store(tmp_path / "store.duckdb", create=True) as con:
        con.execute(
            "INSERT INTO usage_events (event_id, ts, ingested_at, provider, flavor, input_tokens,"
            " cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens,"
            " estimated, method, host, path, streamed, ttft_ms, latency_ms)"
            " SELECT 'e' || i, TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND, now(),"
            " CASE WHEN i % 3 = 2 THEN 'anthropic' ELSE 'openai' END, 'openai', 0, 0, 0, 0, 0,"
            f" false, 'POST', 'h', '/', false, {value}, CASE WHEN i % 2 = 0 THEN NULL"
            f" ELSE {value} END FROM range(?) AS r(i)",
            [rows],
        )
        cond, params = "e.ts >= ? AND e.ts < ?", ["2026-01-01", "2026-01-02"]
        got = quantiles_by_provider(con, cond, params, {"ttft_ms": QS, "latency_ms": QS})
        for column in ("ttft_ms", "latency_ms"):
            qs = ", ".join(str(float(q)) for q in QS)
            want = con.execute(
                f"SELECT e.provider, quantile_disc(e.{column}, [{qs}]) FROM usage_events AS e"
                f" WHERE {cond} AND e.{column} IS NOT NULL GROUP BY ALL",
                params,
            ).fetchall()
            assert got[column] == {p: list(v) for p, v in want}


def test_rank_is_the_first_value_at_or_past_the_fraction() -> None:
    assert [disc_rank(10, Fraction(q, 100)) for q in (1, 10, 50, 95, 100)] == [0, 0, 4, 9, 9]
    assert disc_rank(1, Fraction(1, 2)) == 0
