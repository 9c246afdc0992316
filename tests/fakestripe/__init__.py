"""A small stateful fake Stripe server for tests: ``with FakeStripe() as fake: fake.url``."""

from tests.fakestripe.server import DEFAULT_API_KEY, FakeStripe

__all__ = ["DEFAULT_API_KEY", "FakeStripe"]
