"""``billing consumers ...``: who holds keys, and key fingerprints for the catalog."""

from __future__ import annotations

import sys

import click

from billing import render
from billing.cli.common import Settings, format_option, pass_settings
from meterline.catalog import Catalog
from meterline.fingerprint import fingerprint


@click.group("consumers")
def consumers_group() -> None:
    """Consumers: whoever holds API keys; usage is attributed to them."""


def consumer_rows(cat: Catalog) -> list[dict[str, object]]:
    billed_to = {name: c.key for c in cat.customers for name in c.consumers}
    return [
        {
            "name": c.name,
            "customer": billed_to.get(c.name),
            "keys": len(c.keys),
            "fingerprints": [k.fingerprint for k in c.keys],
            "labels": [k.label for k in c.keys if k.label],
            "inject": sorted(c.inject),
        }
        for c in cat.consumers
    ]


@consumers_group.command("list")
@format_option()
@pass_settings
def list_consumers(settings: Settings, fmt: str) -> None:
    """List the catalog's consumers, the customer each is billed to and their keys.

    \b
    Example usage:
      billing consumers list
      billing consumers list --format json
    """
    rows = consumer_rows(settings.load_catalog())
    columns = ("name", "customer", "keys", "labels", "inject")
    if fmt == "table":
        click.echo(render.rows(rows, fmt, columns))
    else:
        click.echo(render.rows(rows, fmt))


def read_key(text: str) -> str:
    key = text.strip()
    if not key:
        raise click.ClickException('no key on stdin (pipe it in: echo -n "$KEY" | ...)')
    if "\n" in key:
        raise click.ClickException("stdin holds more than one line; give one key")
    if len(key.split()) > 1:  # "Bearer sk-..." pasted from a header: its hash matches no call
        raise click.ClickException(
            "the key holds a blank: give the key alone, without 'Bearer ' or a header name"
        )
    return key


@consumers_group.command("fingerprint")
def fingerprint_cmd() -> None:
    """Read one API key on stdin and print its fingerprint (sha256:...) for catalog.yaml.

    The key is never stored or echoed; only the fingerprint goes in the catalog.

    \b
    Example usage:
      echo -n "$OPENAI_API_KEY" | billing consumers fingerprint
    """
    click.echo(fingerprint(read_key(sys.stdin.read())))
