"""docs/walkthrough.md, run as written: every ``bash`` block, in order, in one shell.

Only addresses change: the fake OpenAI (tests/support/upstream.py) stands in for
``https://api.openai.com`` (the catalog names its address as ``openai``'s, or the route
to ``openai`` would call the real host), a free port for 8080, and the fake Stripe
(tests/fakestripe) is reached through ``STRIPE_API_BASE``. The shell runs in a scratch
directory holding links to the repository's ``addons`` and ``.venv``, so ``kong/`` lands
there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.fakestripe import DEFAULT_API_KEY, FakeStripe
from tests.support.upstream import FakeProvider

REPO = Path(__file__).resolve().parents[2]
WALKTHROUGH = REPO / "docs" / "walkthrough.md"
FENCE = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
OPENAI_KEY = "sk-walkthrough-provider-key"


def bash_blocks(markdown: str) -> list[str]:
    return FENCE.findall(markdown)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stripe_fake() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def openai_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProvider]:
    with FakeProvider(tmp_path_factory.mktemp("upstream"), seed=7) as fake:
        yield fake


def run_walkthrough(workdir: Path, openai: FakeProvider, stripe_url: str) -> str:
    blocks = bash_blocks(WALKTHROUGH.read_text(encoding="utf-8"))
    script = "\n".join(blocks)
    assert "https://api.openai.com" in script and "8080" in script
    script = script.replace("https://api.openai.com", openai.base_url("openai"))
    catalog = "cat > kong/catalog.yaml <<'EOF'\nversion: 1\n"
    assert catalog in script
    fake_host = f"127.0.0.1:{openai.ports['openai']}"
    script = script.replace(
        catalog, f"{catalog}providers: [{{name: openai, flavor: openai, hosts: ['{fake_host}']}}]\n"
    )
    script = script.replace("8080", str(free_port()))
    (workdir / "addons").symlink_to(REPO / "addons")
    (workdir / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METERLINE_", "STRIPE_"))
        and k.lower() not in ("https_proxy", "http_proxy")
    }
    env.update(
        OPENAI_API_KEY=OPENAI_KEY, STRIPE_API_KEY=DEFAULT_API_KEY, STRIPE_API_BASE=stripe_url
    )
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"walkthrough hung:\n{out.decode('utf-8', 'replace')}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # a gateway left by a failed step
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.decode("utf-8", "replace")
    log = workdir / "kong" / "gateway.log"
    gateway = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    assert proc.returncode == 0, f"walkthrough failed ({proc.returncode}):\n{text}\n{gateway}"
    return text


def test_walkthrough_runs_as_written(
    tmp_path: Path, openai_fake: FakeProvider, stripe_fake: FakeStripe
) -> None:
    out = run_walkthrough(tmp_path, openai_fake, stripe_fake.url)

    # Step 2: the gateway refused the unknown key itself (401, nothing forwarded).
    assert re.search(r"^401$", out, re.MULTILINE)
    # Steps 3 and 7: seven requests reached the fake OpenAI, routed, pinned, key injected.
    chats = [x for x in openai_fake.exchanges if x.path == "/v1/chat/completions"]
    assert len(openai_fake.exchanges) == len(chats) == 7, out
    for x in chats:
        assert x.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert "apikey" not in x.headers
        assert json.loads(x.body)["model"] == "gpt-4o"
        assert x.usage is not None
    billed_input = sum(x.usage["input"] for x in chats[1:])  # type: ignore[index]
    before = chats[0].usage["input"]  # type: ignore[index]

    # Step 7: the preview bills the six requests' input tokens at 1.00 USD each.
    preview = out[out.index("Acme Corp") :]
    line = next(ln for ln in preview.splitlines() if "AI tokens" in ln)
    assert str(billed_input) in line
    assert f"{Decimal(billed_input):,.2f}" in line or f"{billed_input}.00" in line
    # The request before the subscription is unbilled, "outside subscriptions".
    unbilled = next(ln for ln in out.splitlines() if ln.startswith("outside subscriptions"))
    assert f" {before} " in unbilled

    # Step 8: one invoice, in Stripe with the same total, finalized (open).
    assert "INV-000001" in out
    [invoice] = stripe_fake.state.invoices.values()
    assert invoice["total"] == billed_input * 100
    assert invoice["status"] == "open"
