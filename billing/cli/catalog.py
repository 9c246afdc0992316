"""``billing catalog ...``: validate catalog.yaml."""

from __future__ import annotations

import click

from billing.cli.common import Settings, pass_settings


@click.group("catalog")
def catalog_group() -> None:
    """The product catalog (catalog.yaml)."""


def catalog_summary(settings: Settings) -> str:
    cat = settings.load_catalog()
    counts = ", ".join(
        f"{len(getattr(cat, section))} {section}"
        for section in ("providers", "consumers", "features", "plans", "customers")
    )
    return f"{settings.catalog}: OK ({counts})"


@catalog_group.command("check")
@pass_settings
def check(settings: Settings) -> None:
    """Validate the catalog; on problems print each (file: path: problem) and exit 1.

    \b
    Example usage:
      billing catalog check
      billing --catalog staging.yaml catalog check
    """
    click.echo(catalog_summary(settings))
