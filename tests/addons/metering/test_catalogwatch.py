from __future__ import annotations

import os
from pathlib import Path

from addons.metering.catalogwatch import CatalogWatch, Poll, file_stamp, refusal
from meterline.catalog import Catalog


def test_a_change_is_ready_only_once_stable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a")
    watch = CatalogWatch(path, file_stamp(path))
    assert watch.poll() is Poll.UNCHANGED
    path.write_text("ab")
    assert watch.poll() is Poll.SETTLING
    path.write_text("abc")  # still being written
    assert watch.poll() is Poll.SETTLING
    assert watch.poll() is Poll.READY
    assert watch.settled()
    assert watch.poll() is Poll.UNCHANGED


def test_a_write_during_the_read_is_not_settled(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a")
    watch = CatalogWatch(path, None)
    assert watch.poll() is Poll.SETTLING
    assert watch.poll() is Poll.READY
    path.write_text("a longer text")
    assert not watch.settled()
    assert watch.poll() is Poll.SETTLING


def test_gone(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a")
    watch = CatalogWatch(path, file_stamp(path))
    os.unlink(path)
    assert watch.poll() is Poll.GONE
    assert watch.poll() is Poll.UNCHANGED


def test_refusal() -> None:
    full = Catalog.model_validate(
        {
            "providers": [{"name": "p", "flavor": "openai", "hosts": ["h"]}],
            "consumers": [{"name": "c", "keys": [{"fingerprint": "sha256:" + "0" * 64}]}],
        }
    )
    assert refusal(None, Catalog()) is None
    assert refusal(full, full) is None
    assert "no consumer" in (refusal(full, Catalog(providers=full.providers)) or "")
    assert "no provider" in (refusal(full, Catalog(consumers=full.consumers)) or "")
