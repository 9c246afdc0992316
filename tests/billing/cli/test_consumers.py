"""``billing consumers list|fingerprint``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from tests.billing.cli.runner import run
from tests.billing.events import setup, write

FP1, FP2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
CATALOG = f"""
version: 1
consumers:
  - name: team-a
    keys:
      - fingerprint: "{FP1}"
        label: laptop
      - fingerprint: "{FP2}"
    inject:
      openai: OPENAI_KEY_TEAM_A
  - name: team-b
plans:
  - key: p
    name: P
    currency: USD
customers:
  - key: acme
    name: ACME
    currency: USD
    consumers: [team-a]
"""


def test_list_table_json_csv(tmp_path: Path) -> None:
    s = setup(tmp_path)
    write(s.catalog_path, CATALOG)
    table = run(s, "consumers", "list")
    assert table.exit_code == 0
    assert table.stdout.splitlines() == [
        "NAME    CUSTOMER  KEYS  LABELS  INJECT",
        "------  --------  ----  ------  ------",
        "team-a  acme         2  laptop  openai",
        "team-b               0",
    ]
    data = json.loads(run(s, "consumers", "list", "--format", "json").stdout)
    assert data[0] == {
        "name": "team-a",
        "customer": "acme",
        "keys": 2,
        "fingerprints": [FP1, FP2],
        "labels": ["laptop"],
        "inject": ["openai"],
    }
    assert data[1]["customer"] is None
    rows = list(csv.DictReader(io.StringIO(run(s, "consumers", "list", "--format", "csv").stdout)))
    assert [(r["name"], r["customer"], r["keys"]) for r in rows] == [
        ("team-a", "acme", "2"),
        ("team-b", "", "0"),
    ]


def test_fingerprint_reads_the_key_on_stdin() -> None:
    result = run(None, "consumers", "fingerprint", input="sk-test-123\n")
    expected = "sha256:" + hashlib.sha256(b"sk-test-123").hexdigest()
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected + "\n", "")


def test_fingerprint_needs_exactly_one_key() -> None:
    empty = run(None, "consumers", "fingerprint", input="  \n")
    assert (empty.exit_code, empty.stderr) == (
        1,
        'Error: no key on stdin (pipe it in: echo -n "$KEY" | ...)\n',
    )
    two = run(None, "consumers", "fingerprint", input="sk-1\nsk-2\n")
    assert (two.exit_code, two.stderr) == (
        1,
        "Error: stdin holds more than one line; give one key\n",
    )
    # Pasted from a header: the hash of "Bearer sk-1" matches no call.
    header = run(None, "consumers", "fingerprint", input="Bearer sk-1")
    assert (header.exit_code, header.stderr) == (
        1,
        "Error: the key holds a blank: give the key alone, without 'Bearer ' or a header name\n",
    )


def test_list_with_a_broken_catalog(tmp_path: Path) -> None:
    s = setup(tmp_path)
    write(s.catalog_path, "version: 2\n")
    result = run(s, "consumers", "list")
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {s.catalog_path}: version: Input should be 1\n",
    )
