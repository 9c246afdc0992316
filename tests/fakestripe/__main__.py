"""Run the fake by hand: ``python -m tests.fakestripe --port 12111`` (Ctrl-C stops it)."""

from __future__ import annotations

import argparse
import threading

from tests.fakestripe.server import DEFAULT_API_KEY, FakeStripe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=12111)
    args = parser.parse_args()
    fake = FakeStripe().start(args.port)
    print(f"fake Stripe on {fake.url}  (API key: {DEFAULT_API_KEY})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
