"""A short-lived openai SDK client that closes at ``[DONE]`` gets its call metered complete.

The replay upstream keeps the body open 0.3 s after ``[DONE]`` (a provider slow to end
the stream), so every client is gone before the body ends: each call must still be
stored with ``status`` 200 and the provider's exact tokens, ``estimated`` false. The
200-run figure is measured by ``bench/closing_clients.py``; here a bounded number of runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEYS, new_proxy
from tests.support.closing import RECORDING, stream_and_close, wait_for_rows
from tests.support.proxy import MeterProxy, write_catalog
from tests.support.recordings import corpus_missing_reason, load_recordings
from tests.support.replay import ReplayUpstream

RUNS = 12
LINGER = 0.3


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, mitm_confdir: Path
) -> Iterator[tuple[MeterProxy, ReplayUpstream, dict]]:
    reason = corpus_missing_reason()
    if reason is not None:  # test_real_recordings fails under CI for this
        pytest.skip(reason)
    [rec] = [r for r in load_recordings() if r.id == RECORDING]
    workdir = tmp_path_factory.mktemp("closing")
    with ReplayUpstream([rec], workdir) as upstream:
        catalog = write_catalog(
            workdir / "catalog.yaml",
            upstream.catalog_providers(),
            consumers={"alice": [KEYS["alice"]]},
        )
        proxy = new_proxy(workdir / "proxy", mitm_confdir, catalog).start()
        try:
            yield proxy, upstream, rec.meta["expected"]
        finally:
            proxy.stop()


def test_client_closing_at_done_is_metered_complete_and_exact(
    setup: tuple[MeterProxy, ReplayUpstream, dict],
) -> None:
    proxy, upstream, expected = setup
    mark = proxy.log_mark()
    runs = [
        stream_and_close(proxy, upstream, KEYS["alice"], linger=LINGER, include_usage=bool(i % 2))
        for i in range(RUNS)
    ]
    by_id = wait_for_rows(proxy, [r.request_id for r in runs])
    got = []
    for run in runs:
        [row] = by_id.get(run.request_id, [{}])
        got.append(
            (
                row.get("status"),
                row.get("input_tokens"),
                row.get("output_tokens"),
                row.get("estimated"),
                row.get("model"),
            )
        )
    want = (200, expected["input_tokens"], expected["output_tokens"], False, expected["model"])
    assert got == [want] * RUNS
    assert "cut short" not in proxy.log_text()[mark:]
