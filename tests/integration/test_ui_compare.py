"""The admin page's Compare tab in Chromium, against a standalone gateway in front of two real
llama-server engines that serve one model with different sampling (greedy, and hot with a fixed seed):
both arms side by side with their figures and the verdict. Screenshots go to artifacts/ui/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Page, expect

from tests.integration.test_ui import ARTIFACTS, browser, open_ui, page, shot
from tests.support import engines, processes, tinygguf
from tests.support.cluster import wait_until
from tests.support.gateway_stack import ADMIN, KEY
from tests.support.processes import Process

pytestmark = pytest.mark.integration
__all__ = ["browser", "page"]  # the fixtures, imported for this module's tests
SAMPLING = {"greedy": ("--temp", "0"), "hot": ("--temp", "1.5", "--seed", "7")}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Process]:
    gguf = tinygguf.write(tmp_path / "tiny.gguf")
    servers = {name: engines.llama_server(engines.llama_container(extra=extra), gguf, ARTIFACTS, name=name).start()
               for name, extra in SAMPLING.items()}  # fmt: skip
    docs = [{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
             "spec": {"engine": "llamacpp", "model": {"source": str(gguf), "servedName": "tiny"},
                      "endpoints": [proc.url]}}  # type: ignore[attr-defined]
            for name, proc in servers.items()]  # fmt: skip
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump_all(docs))
    gw = processes.gateway(config, ARTIFACTS, [KEY], [ADMIN]).start()
    yield gw
    for p in [gw, *servers.values()]:
        p.stop()


def ab(url: str, primary: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "X-Roundhouse-Engine": f"ab:{primary}"},
                      json={"model": "tiny", "max_tokens": 8,
                            "messages": [{"role": "user", "content": "Say hi"}]})  # fmt: skip


def test_compare_tab_shows_both_real_engines_side_by_side(gateway: Process, page: Page) -> None:
    url = str(gateway.url)  # type: ignore[attr-defined]
    for i in range(6):
        r = ab(url, "greedy" if i % 2 else "hot")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None, r.text

    def pairs() -> dict[str, Any]:
        models = httpx.get(url + "/admin/compare", headers={"Authorization": f"Bearer {ADMIN}"}).json()["models"]
        rows = [r for m in models for r in m["arms"] if r["role"] == "shadow" and r.get("agreement")]
        # The copies are sent beside the primary's request and may finish after the client's answer: wait
        # until every one of them is counted.
        done = {r["engine"] for r in rows if r["requests"] >= 3}
        return {r["engine"]: r for r in rows} if done == set(SAMPLING) else {}

    copies = wait_until(pairs, 30, "each engine's 3 copies compared with the other's answers")
    assert all(c["requests"] == 3 and c["errors"] == 0 for c in copies.values()), copies
    open_ui(page, url)
    page.get_by_role("tab", name="Compare").click()
    table = page.locator('table.compare[data-model="tiny"]')
    expect(table).to_be_visible()
    for engine in SAMPLING:  # both arms side by side, each with its figures as primary and as the copy
        for role in ("arm", "shadow"):
            cells = f'[data-engine="{engine}"][data-role="{role}"]'
            expect(table.locator(f'th[scope="col"]{cells}')).to_have_count(1)
            expect(table.locator(f"td{cells}").nth(2)).to_have_text("3")  # requests answered
        arm, copy = (table.locator(f'td[data-engine="{engine}"][data-role="{r}"]') for r in ("arm", "shadow"))
        expect(copy.nth(10)).to_contain_text("pairs")
        for row in (4, 5):  # TTFT p50 and p95: an arm's in ms; a copy is not streamed, so it has none to show
            expect(arm.nth(row)).to_have_text(re.compile(r"^\d+ ms$"))
            expect(copy.nth(row)).to_have_text("— not measured")
    copies = page.locator('section[data-model="tiny"] li.verdict').filter(has_text="copies to")
    expect(copies).to_have_count(2)
    expect(copies.filter(has_text="TTFT")).to_have_count(0)  # a copy's verdict compares total latency only
    expect(page.locator('section[data-model="tiny"] li.verdict').first).to_contain_text("agreement")
    expect(page.locator("#compare-scope")).to_contain_text("this gateway replica")
    shot(page, "compare")
