"""The admin page's GPU budget view in Chromium, against a standalone gateway that runs two real
llama-server engines on demand within a budget of one GPU: who holds it, the request that waits,
the swap with its reason, the GPUs held over time, and switching out of onDemand and back.

Screenshots of each step are written to artifacts/ui/."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Page, expect

from tests.integration.test_ui import ARTIFACTS, REFRESH_MS, browser, open_ui, page, row, shot
from tests.support import engines, processes, tinygguf
from tests.support.gateway_stack import ADMIN, KEY
from tests.support.processes import Process

pytestmark = pytest.mark.integration
__all__ = ["browser", "page"]  # the fixtures, imported for this module's tests
MIN_ACTIVE = 5  # a request for the other engine waits this long at most: the page sees it waiting


def ie(name: str, gguf: Path) -> dict[str, Any]:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": "llamacpp", "model": {"source": str(gguf), "servedName": name}, "gpus": 1,
                     "llamacpp": {"contextSize": 512}}}  # fmt: skip


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Process]:
    gguf = tinygguf.write(tmp_path / "tiny.gguf")
    mode = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "box"},
            "spec": {"mode": "onDemand", "onDemand": {"gpuBudget": 1, "minActiveSeconds": MIN_ACTIVE,
                                                      "drainSeconds": 2, "maxWaitSeconds": 60}}}  # fmt: skip
    config = tmp_path / "box.yaml"
    config.write_text(yaml.safe_dump_all([mode, ie("one", gguf), ie("two", gguf)]))
    env = {**os.environ, "PATH": f"{engines.binary('llama-server').parent}:{os.environ['PATH']}"}
    extra = ("--engine-log-dir", str(tmp_path / "logs"), "--engine-cache-dir", str(tmp_path / "cache"))
    proc = processes.gateway(config, ARTIFACTS, [KEY], [ADMIN], env=env, extra=extra).start()
    yield proc
    proc.stop()


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=90, json=body)


def budget(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/budget", headers={"Authorization": f"Bearer {ADMIN}"}).json()  # type: ignore[no-any-return]


def engine_row(page: Page, name: str) -> Any:
    return page.locator(f'#budget-body tr[data-engine="{name}"]')


def test_the_budget_view_follows_a_real_swap_and_a_switch_out_of_on_demand_and_back(box: Process, page: Page) -> None:
    url = box.url  # type: ignore[attr-defined]
    open_ui(page, url)
    # Engines tab: standby engines are not shown as active, and say why in the status's own words.
    expect(row(page, "one").locator("td").nth(3)).to_have_text("No (standby)")
    expect(row(page, "one").locator("td.why")).to_have_text("on demand: starts when a request needs it")

    page.get_by_role("tab", name="Engine mode").click()
    expect(page.locator("#budget")).to_be_visible()
    expect(page.locator("#budget-summary")).to_have_text("0 of 1 GPUs held; every engine is on standby.")
    expect(engine_row(page, "one")).to_contain_text("standby")
    on_demand = page.locator('li[data-mode="onDemand"]')
    expect(on_demand).to_contain_text("Active")
    expect(on_demand.locator('[data-field="budget"]')).to_have_text("1 GPU")
    expect(on_demand.locator('[data-field="minActive"]')).to_have_text(f"{MIN_ACTIVE} s")
    expect(on_demand.locator('[data-field="maxWait"]')).to_have_text("60 s")
    expect(page.locator("#mode-cards li")).to_have_count(6)  # onDemand and five manual modes
    shot(page, "budget-before")

    assert chat(url, "one").status_code == 200
    expect(page.locator("#budget-summary")).to_contain_text("1 of 1 GPUs held: one 1 (running)")
    expect(page.locator('#budget-swaps li[data-reason="Activated"][data-engine="one"]')).to_contain_text(
        "one is ready")  # fmt: skip

    # A request for two waits: one holds the GPU and started less than minActiveSeconds ago.
    answered: list[httpx.Response] = []
    asker = threading.Thread(target=lambda: answered.append(chat(url, "two")))
    asker.start()
    expect(engine_row(page, "two").locator('[data-field="state"]')).to_contain_text("waiting for GPUs")
    expect(engine_row(page, "two").locator("td").nth(3)).to_have_text("1")  # waiting
    expect(engine_row(page, "two").locator("td.why")).to_contain_text("minActiveSeconds")
    expect(page.locator("#budget-summary")).to_contain_text("Waiting: 1 for two.")
    shot(page, "budget-waiting")
    asker.join(60)
    assert answered and answered[0].status_code == 200, answered

    expect(page.locator("#budget-summary")).to_contain_text("1 of 1 GPUs held: two 1 (running)")
    swaps = page.locator("#budget-swaps li")
    expect(swaps.first).to_contain_text("two is ready")  # newest first
    expect(page.locator('#budget-swaps li[data-reason="Draining"][data-engine="one"]')).to_contain_text(
        "making room for two")  # fmt: skip
    expect(page.locator('#budget-swaps li[data-reason="Stopped"][data-engine="one"]')).to_contain_text(
        "after draining")  # fmt: skip
    expect(page.locator('#budget-swaps li[data-reason="Activating"][data-engine="two"]')).to_have_count(1)
    # The chart shows one, then two, holding the GPU.
    expect(page.locator('#budget-chart rect[data-engine="one"]')).not_to_have_count(0)
    expect(page.locator('#budget-chart rect[data-engine="two"]')).not_to_have_count(0)
    expect(page.locator("#budget-chart-summary")).to_contain_text("changes in who holds the GPUs")
    shot(page, "budget-after-swap")
    api = budget(url)
    assert [(e["name"], e["state"], e["gpusHeld"]) for e in api["engines"]] == [("one", "standby", 0),
                                                                               ("two", "running", 1)]  # fmt: skip
    assert [p["held"] for p in api["history"]["points"]][-3:] == [{"one": 1}, {}, {"two": 1}]

    # Out of onDemand: the manual GGUF mode runs every llama.cpp engine, the budget view goes away.
    page.get_by_role("button", name="Switch to GGUF (llama.cpp)").click()
    page.locator("#mode-confirm").get_by_role("button", name="Switch").click()
    expect(page.locator("#mode-phase")).to_contain_text("Ready: GGUF (llama.cpp) is active", timeout=30_000)
    expect(page.locator("#budget")).to_be_hidden(timeout=REFRESH_MS * 3)
    page.get_by_role("tab", name="Engines").click()
    expect(row(page, "one").locator("td").nth(3)).to_have_text("Yes", timeout=30_000)
    expect(row(page, "one").locator("td").nth(2)).to_have_text("Ready")
    assert chat(url, "one").status_code == 200 and chat(url, "two").status_code == 200
    shot(page, "budget-manual-mode")

    # And back: the budget holds again, so one of the two running engines drains and stops.
    page.get_by_role("tab", name="Engine mode").click()
    page.get_by_role("button", name="Switch to On demand").click()
    page.locator("#mode-confirm").get_by_role("button", name="Switch").click()
    expect(page.locator("#budget")).to_be_visible(timeout=REFRESH_MS * 3)
    expect(page.locator("#budget-summary")).to_contain_text("1 of 1 GPUs held", timeout=30_000)
    shot(page, "budget-back-on-demand")
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the budget view scrolls sideways by {overflow}px on a narrow screen"
    shot(page, "budget-narrow")
