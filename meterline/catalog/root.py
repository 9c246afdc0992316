"""The catalog as a whole, and the cross references between its sections."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from meterline.catalog.base import _Model
from meterline.catalog.customers import Alerts, Customer, Seller
from meterline.catalog.products import Feature, Plan
from meterline.catalog.proxyside import Consumer, Provider, Route
from meterline.providers import BUILTIN_NAMES, unknown_provider
from meterline.routecheck import route_problems
from meterline.urlpaths import normalise_path


class Catalog(_Model):
    version: Literal[1] = 1
    providers: list[Provider] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    features: list[Feature] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)
    customers: list[Customer] = Field(default_factory=list)
    alerts: Alerts = Alerts()
    seller: Seller | None = None
    payment_terms: str | None = None
    """Printed under an invoice's total, e.g. "Bank transfer to IBAN DE00 ... within 30 days".

    The due date is the issue date plus the customer's ``invoicing.days_until_due``."""

    @field_validator("routes")
    @classmethod
    def _unique_route_paths(cls, routes: list[Route]) -> list[Route]:
        # As the proxy matches them: `//chat`, `/ch%61t`, `/x/../chat` are `/chat` (before,
        # only a trailing `/` was dropped, and the proxy kept the last of such routes).
        paths = [normalise_path(r.path).rstrip("/") or "/" for r in routes]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"duplicate route path(s): {', '.join(dupes)}")
        return routes

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        """Cross references, reported with the path of the field that dangles."""
        problems: list[tuple[str, str]] = []

        def bad(path: str, message: str) -> None:
            problems.append((path, message))

        for section in ("providers", "consumers", "features", "plans", "customers"):
            attr = "name" if section in ("providers", "consumers") else "key"
            seen: set[str] = set()
            for i, item in enumerate(getattr(self, section)):
                value = getattr(item, attr)
                if value in seen:
                    bad(f"{section}[{i}].{attr}", f"duplicate {attr} {value!r}")
                seen.add(value)
        key_owner: dict[str, str] = {}
        for i, consumer in enumerate(self.consumers):
            for j, key in enumerate(consumer.keys):
                owner = key_owner.setdefault(key.fingerprint, consumer.name)
                if owner != consumer.name:
                    bad(f"consumers[{i}].keys[{j}].fingerprint", f"key belongs to {owner!r}")
        providers = BUILTIN_NAMES | {p.name for p in self.providers}
        for i, consumer in enumerate(self.consumers):
            for name in consumer.inject:
                if name not in providers:
                    bad(f"consumers[{i}].inject.{name}", unknown_provider(name, providers))
        for i, route in enumerate(self.routes):
            if route.provider not in providers:
                bad(f"routes[{i}].provider", unknown_provider(route.provider, providers))
        for where, problem in route_problems(self.routes, self.providers):
            bad(where, problem)  # what the proxy would refuse at start
        for i, feature in enumerate(self.features):
            wanted = feature.meter.provider
            if wanted is not None and wanted not in providers:
                bad(f"features[{i}].meter.provider", unknown_provider(wanted, providers))
        features = {f.key for f in self.features}
        for i, plan in enumerate(self.plans):
            for j, card in enumerate(plan.rate_cards):
                if card.feature is not None and card.feature not in features:
                    bad(f"plans[{i}].rate_cards[{j}].feature", f"unknown feature {card.feature!r}")
            for j, ent in enumerate(plan.entitlements):
                if ent.feature not in features:
                    bad(f"plans[{i}].entitlements[{j}].feature", f"unknown feature {ent.feature!r}")
        for i, customer in enumerate(self.customers):
            for j, ovr in enumerate(customer.entitlements):
                if ovr.feature not in features:
                    bad(
                        f"customers[{i}].entitlements[{j}].feature",
                        f"unknown feature {ovr.feature!r}",
                    )
        plans = {p.key: p for p in self.plans}
        consumers = {c.name for c in self.consumers}
        billed_to: dict[str, str] = {}
        for i, customer in enumerate(self.customers):
            listed: set[str] = set()
            for j, name in enumerate(customer.consumers):
                where = f"customers[{i}].consumers[{j}]"
                if name not in consumers:
                    bad(where, f"unknown consumer {name!r}")
                if name in listed:  # its usage would be billed once per listing
                    bad(where, f"consumer {name!r} listed twice")
                listed.add(name)
                owner = billed_to.setdefault(name, customer.key)
                if owner != customer.key:
                    bad(where, f"consumer {name!r} already billed to {owner!r}")
            for j, sub in enumerate(customer.subscriptions):
                where = f"customers[{i}].subscriptions[{j}].plan"
                sub_plan = plans.get(sub.plan)
                if sub_plan is None:
                    bad(where, f"unknown plan {sub.plan!r}")
                elif sub_plan.currency != customer.currency:
                    bad(
                        where,
                        f"plan is in {sub_plan.currency}, customer pays in {customer.currency}",
                    )
        if problems:
            raise CatalogProblems(problems)
        return self

    # Lookups used by both halves ---------------------------------------------------

    def consumer_by_fingerprint(self) -> dict[str, Consumer]:
        return {k.fingerprint: c for c in self.consumers for k in c.keys}

    def feature(self, key: str) -> Feature:
        return next(f for f in self.features if f.key == key)

    def plan(self, key: str) -> Plan:
        return next(p for p in self.plans if p.key == key)

    def customer(self, key: str) -> Customer:
        for c in self.customers:
            if c.key == key:
                return c
        raise KeyError(key)


class CatalogProblems(ValueError):
    """Raised inside validation with exact paths, so messages point at the dangling field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems
