"""The admin web page (/ui) in a real browser: Debian's headless Chromium driven by Playwright, against
the real gateway with engine simulators behind it (standalone) and against the local control plane.

Screenshots of each view are written to artifacts/ui/."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support import processes, tools
from tests.support.cluster import Cluster, wait_until
from tests.support.gateway_stack import ADMIN, KEY, Stack
from tests.support.processes import Process

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"
REFRESH_MS = 1000  # the page's refresh interval in these tests (?refresh=); the default is 2 s
PROBE_S = 0.3  # the gateway's probe interval (tests.support.processes.gateway)
REQUEST_ID, MILLISECONDS = re.compile(r"^[0-9a-f]{32}$"), re.compile(r"^\d+ ms$")
# Flags for a sandboxed root user on a machine without a network: no GPU, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium_path() -> str:
    try:
        return tools.path("chromium")  # ROUNDHOUSE_CHROMIUM, else Debian's on PATH
    except tools.ToolMissing as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (empty session storage); any script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda err: errors.append(str(err)))
    yield p
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, ARTIFACTS)
    yield s
    s.stop()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_ui(page: Page, url: str, admin: str | None = ADMIN, api: str | None = KEY) -> None:
    page.goto(f"{url}/ui/?refresh={REFRESH_MS}")
    if admin:
        page.get_by_label("Admin key").fill(admin)
    if api:
        page.get_by_label("API key").fill(api)
    if admin or api:
        page.get_by_role("button", name="Use keys").click()


def row(page: Page, engine: str) -> Any:
    return page.locator(f'#engines-body tr[data-engine="{engine}"]')


def ask(page: Page, text: str) -> None:
    page.get_by_role("tab", name="Playground").click()
    expect(page.locator("#play-model option")).not_to_have_count(0)
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def last_answer(page: Page) -> Any:
    return page.locator("#chat-log li.assistant .text").last


def three_families(stack: Stack, mode: str, **knobs: Any) -> None:
    stack.sim("v", "vllm", ["m"], **knobs)
    stack.sim("g", "llamacpp", ["m"], **knobs)
    stack.sim("o", "ollama", ["m"], **knobs)
    stack.start([{"name": "qwen-vllm", "engine": "vllm", "sims": ["v"]},
                 {"name": "qwen-gguf", "engine": "llamacpp", "sims": ["g"]},
                 {"name": "qwen-ollama", "engine": "ollama", "sims": ["o"], "source": "m"}], mode=mode)  # fmt: skip


def test_engines_table_needs_the_admin_key_shows_health_and_a_dead_gateway(stack: Stack, page: Page) -> None:
    three_families(stack, "vllm")
    open_ui(page, stack.url, admin=None, api=None)
    expect(page.locator("#engines-banner")).to_contain_text("needs the admin key")

    page.get_by_label("Admin key").fill("not-the-admin-key")
    page.get_by_role("button", name="Use keys").click()
    expect(page.locator("#engines-banner")).to_contain_text("The admin key was refused")
    expect(page.locator("#engines-banner")).to_contain_text("Invalid or missing admin key")
    shot(page, "engines-wrong-key")

    page.get_by_label("Admin key").fill(ADMIN)
    page.get_by_role("button", name="Use keys").click()
    expect(page.locator("#engines-banner")).to_be_hidden()
    for name, family in (("qwen-vllm", "vLLM"), ("qwen-gguf", "GGUF (llama.cpp)"), ("qwen-ollama", "Ollama")):
        expect(row(page, name)).to_contain_text(family)
        expect(row(page, name)).to_contain_text("✓ healthy")
    expect(row(page, "qwen-vllm").locator("td").nth(3)).to_have_text("Yes")  # active under mode vllm
    expect(row(page, "qwen-ollama").locator("td").nth(3)).to_have_text("No (mode)")
    # The key went into session storage, nowhere else.
    assert ADMIN not in page.url
    assert page.evaluate("sessionStorage.getItem('roundhouse.adminKey')") == ADMIN
    assert page.evaluate("localStorage.length") == 0
    shot(page, "engines")

    stack.sims["g"].kill()
    # Within the refresh interval (plus one probe round): the row says the replica is down.
    expect(row(page, "qwen-gguf")).to_contain_text("✗ down", timeout=REFRESH_MS + PROBE_S * 1000 + 1500)
    expect(row(page, "qwen-vllm")).to_contain_text("✓ healthy")
    shot(page, "engines-one-down")

    assert stack.gw is not None
    stack.gw.stop()
    expect(page.locator("#connection")).to_contain_text("Gateway unreachable", timeout=REFRESH_MS * 4)
    expect(page.locator("#engines-banner")).to_contain_text("stale")
    expect(row(page, "qwen-vllm")).to_be_visible()  # the last data stays, marked stale, not an empty table
    expect(page.locator("#engines-table")).to_have_class("stale")
    shot(page, "engines-gateway-unreachable")
    assert ADMIN not in stack.gw.log_path.read_text()


def test_playground_streams_with_a_persistent_engine_choice_and_can_be_stopped(stack: Stack, page: Page) -> None:
    three_families(stack, "auto", itl_ms=20)
    open_ui(page, stack.url)
    page.get_by_role("tab", name="Playground").click()
    engine = page.get_by_label("Engine", exact=True)
    expect(engine.locator('option[value="qwen-gguf"]')).to_have_count(1)  # engines listed once known
    choices = engine.locator("option").all_inner_texts()
    families = ["vLLM", "GGUF (llama.cpp)", "Ollama", "SGLang", "External API"]
    assert choices[:6] == ["Auto (let the gateway route)", *families]
    assert {"qwen-vllm", "qwen-gguf", "qwen-ollama"} <= set(choices)

    engine.select_option(label="GGUF (llama.cpp)")
    ask(page, "Say something")
    expect(last_answer(page)).to_have_text("g-0 g-1 g-2 g-3 g-4 g-5 g-6 g-7 ")
    expect(page.locator("#route-engine")).to_have_text("qwen-gguf (GGUF (llama.cpp))")
    expect(page.locator("#route-reason")).not_to_have_text("—")
    expect(page.locator("#route-request-id")).to_have_text(REQUEST_ID)
    expect(page.locator("#route-ttft")).to_have_text(MILLISECONDS)
    expect(page.locator("#route-status")).to_have_text("HTTP 200 · done")
    reason = page.locator("#route-reason").inner_text()
    assert "llamacpp" in reason or "override" in reason

    ask(page, "And again")  # the choice persists across messages; the conversation goes with it
    expect(page.locator("#chat-log li.assistant")).to_have_count(2)
    expect(page.locator("#route-status")).to_have_text("HTTP 200 · done")
    expect(page.locator("#route-engine")).to_contain_text("qwen-gguf")
    sent = stack.knobs("g")
    assert [m["content"] for m in sent["last_request"]["messages"]] == [
        "Say something", "g-0 g-1 g-2 g-3 g-4 g-5 g-6 g-7 ", "And again"]  # fmt: skip
    assert sent["last_headers"].get("X-Roundhouse-Engine") is None  # the gateway does not forward its own header
    assert sent["served"] == 2
    shot(page, "playground")

    engine.select_option("qwen-ollama")  # one engine, by name
    ask(page, "Who answers?")
    expect(page.locator("#route-engine")).to_contain_text("qwen-ollama")
    expect(last_answer(page)).to_have_text("o-0 o-1 o-2 o-3 o-4 o-5 o-6 o-7 ")

    # A slow answer, stopped half-way: the stream is cancelled, upstream too.
    stack.knobs("o", itl_ms=300, tokens=60)
    ask(page, "Tell me a long story")
    expect(last_answer(page)).to_contain_text("o-1")
    page.get_by_role("button", name="Stop").click()
    expect(last_answer(page)).to_contain_text("[stopped]")
    expect(page.locator("#route-status")).to_contain_text("stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    wait_until(lambda: in_flight(stack, "qwen-ollama") == 0, 5, "the stopped stream to leave the gateway")
    assert "o-59" not in last_answer(page).inner_text()
    shot(page, "playground-stopped")


def in_flight(stack: Stack, engine: str) -> int:
    engines = stack.admin("GET", "/admin/engines").json()["engines"]
    return int(next(e["inFlight"] for e in engines if e["name"] == engine))


def test_mode_cards_switch_the_standalone_gateway_and_routing_follows(stack: Stack, page: Page) -> None:
    three_families(stack, "vllm")
    open_ui(page, stack.url)
    ask(page, "Before the switch")
    expect(page.locator("#route-engine")).to_contain_text("qwen-vllm")

    page.get_by_role("tab", name="Engine mode").click()
    cards = page.locator("#mode-cards li")
    expect(cards).to_have_count(5)  # vLLM, GGUF, Ollama, SGLang, Auto
    expect(page.locator('li[data-mode="sglang"] h3')).to_have_text("SGLang")
    expect(page.locator('li[data-mode="vllm"]')).to_contain_text("Active")
    expect(page.locator('li[data-mode="vllm"]')).to_contain_text("✓ healthy (1 of 1)")
    expect(page.locator('li[data-mode="llamacpp"] h3')).to_have_text("GGUF (llama.cpp)")
    expect(page.locator("#mode-phase")).to_contain_text("Ready: vLLM is active")
    expect(page.locator("#mode-scope")).to_contain_text("Standalone gateway")
    expect(page.locator("#mode-scope")).to_contain_text("no cluster to patch")
    shot(page, "mode")

    # Cancel changes nothing.
    page.get_by_role("button", name="Switch to Ollama").click()
    expect(page.locator("#mode-confirm")).to_be_visible()
    expect(page.locator("#mode-confirm-text")).to_contain_text("Switch from vLLM to Ollama?")
    shot(page, "mode-confirm")
    page.get_by_role("button", name="Cancel").click()
    assert stack.admin("GET", "/admin/engine-mode").json()["mode"] == "vllm"

    page.get_by_role("button", name="Switch to Ollama").click()
    page.locator("#mode-confirm").get_by_role("button", name="Switch").click()
    expect(page.locator("#mode-phase")).to_contain_text("Ready: Ollama is active", timeout=10_000)
    expect(page.locator("#mode-phase")).to_contain_text("from vLLM, took")
    expect(page.locator('li[data-mode="ollama"]')).to_contain_text("Active")
    expect(page.locator("#mode-banner")).to_contain_text("changed its own routing mode")
    assert stack.admin("GET", "/admin/engine-mode").json()["mode"] == "ollama"
    shot(page, "mode-switched")

    ask(page, "After the switch")
    expect(page.locator("#route-engine")).to_contain_text("qwen-ollama")
    expect(last_answer(page)).to_contain_text("o-0")


def test_keyboard_labels_and_narrow_screen(stack: Stack, page: Page) -> None:
    three_families(stack, "vllm")
    open_ui(page, stack.url)
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels.length).map(e => e.id)"
    )
    assert unlabelled == []

    # Tabs with the arrow keys, a card's button with Enter, the dialog dismissed with Escape.
    page.get_by_role("tab", name="Engines").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Engine mode")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tab", name="Engine mode")).to_be_focused()
    page.get_by_role("button", name="Switch to Ollama").focus()
    page.wait_for_timeout(REFRESH_MS * 2.5)  # refreshes update the cards in place: focus stays
    expect(page.get_by_role("button", name="Switch to Ollama")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#mode-confirm")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#mode-confirm")).to_be_hidden()
    assert stack.admin("GET", "/admin/engine-mode").json()["mode"] == "vllm"

    page.keyboard.press("Shift+Tab")  # focus order continues from the button
    page.get_by_role("tab", name="Engine mode").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Playground")).to_have_attribute("aria-selected", "true")
    page.get_by_label("Message").focus()
    page.keyboard.type("typed only")
    page.keyboard.press("Control+Enter")
    expect(last_answer(page)).to_contain_text("v-0")

    # State is written out, not only coloured: every health cell has words.
    page.get_by_role("tab", name="Engines").click()
    expect(row(page, "qwen-vllm")).to_contain_text("healthy")

    page.set_viewport_size({"width": 390, "height": 844})
    for view in ("Engines", "Engine mode", "Playground", "Usage", "Compare"):
        page.get_by_role("tab", name=view).click()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{view}: the page scrolls sideways by {overflow}px on a narrow screen"
        shot(page, f"narrow-{view.lower().replace(' ', '-')}")


def test_usage_tab_shows_each_keys_totals_and_tokens_per_minute(stack: Stack, page: Page) -> None:
    three_families(stack, "vllm")
    for _ in range(3):
        stack.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    name = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]  # the old one-key form: named by its digest
    open_ui(page, stack.url)
    page.get_by_role("tab", name="Usage").click()
    key_row = page.locator(f'#usage-body tr[data-key="{name}"]')
    expect(key_row.locator("td").first).to_have_text("3")
    expect(page.locator("#usage-chart rect.bar")).to_have_count(60)  # one bar a minute, the last hour
    tokens = page.evaluate("[...document.querySelectorAll('#usage-chart rect.bar')].map(b => +b.dataset.tokens)")
    report = stack.admin("GET", "/admin/usage").json()
    assert sum(tokens) == report["totals"][name]["promptTokens"] + report["totals"][name]["completionTokens"] > 0
    expect(page.locator("#usage-chart-summary")).to_contain_text(f"{sum(tokens)} tokens in the last 60 minutes")
    expect(page.locator("#usage-scope")).to_contain_text("this gateway replica")
    assert KEY not in page.content()  # usage never shows a key
    shot(page, "usage")


# --- against the local control plane --------------------------------------------------------------
CLUSTER_KEY, CLUSTER_ADMIN = "sk-ui-cluster", "admin-ui-cluster"


def gpu_engine(name: str, family: str) -> dict[str, Any]:
    """An engine the operator runs as a Deployment on a (simulated) GPU node."""
    source = {"vllm": "org/m", "ollama": "m"}[family]
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "InferenceEngine", "metadata": {"name": name},
            "spec": {"engine": family, "gpus": 1, "model": {"source": source, "servedName": "m"}}}  # fmt: skip


def test_mode_cards_patch_the_real_engine_mode(
    operator: Process, crds: Cluster, namespace: str, page: Page, tmp_path: Path
) -> None:
    # Real pods on the simulated GPU nodes; their traffic goes to simulators (--endpoint-map).
    # A stream on the vLLM simulator lasts 60 x 100 ms: the one in flight when the switch starts holds
    # the drain to its 4 s deadline (an idle drain ends at once: test_switch_drain.py).
    knobs: dict[str, dict[str, Any]] = {"vllm": {"tokens": 60, "itl_ms": 100}, "ollama": {}}
    sims = {f: processes.enginesim(f, f[0], ["m"], ARTIFACTS, **knobs[f]).start() for f in ("vllm", "ollama")}
    mapping = ("--endpoint-map", f"c-vllm={sims['vllm'].url}",  # type: ignore[attr-defined]
               "--endpoint-map", f"c-ollama={sims['ollama'].url}")  # type: ignore[attr-defined]  # fmt: skip
    gw = processes.cluster_gateway(namespace, crds.kubeconfig, tmp_path, ARTIFACTS, [CLUSTER_KEY], [CLUSTER_ADMIN],
                                   extra=mapping).start()  # fmt: skip
    try:
        crds.apply([{"apiVersion": "roundhouse.dev/v1alpha1", "kind": "EngineMode", "metadata": {"name": "default"},
                     "spec": {"mode": "vllm", "switchPolicy": {"drainSeconds": 4}}},
                    gpu_engine("c-vllm", "vllm"), gpu_engine("c-ollama", "ollama")], namespace)  # fmt: skip
        wait_until(lambda: (crds.get("em", "default", namespace).get("status") or {}).get("phase") == "Ready"
                   and (crds.get("ie", "c-vllm", namespace).get("status") or {}).get("phase") == "Ready", 90,
                   "EngineMode and the vLLM engine Ready")  # fmt: skip
        open_ui(page, gw.url, CLUSTER_ADMIN, CLUSTER_KEY)  # type: ignore[attr-defined]
        expect(row(page, "c-vllm").locator("td").nth(2)).to_have_text("Ready")  # the operator's phase
        shot(page, "cluster-engines")
        page.get_by_role("tab", name="Engine mode").click()
        expect(page.locator("#mode-scope")).to_contain_text(f"EngineMode {namespace}/default")
        expect(page.locator("#mode-phase")).to_contain_text("Ready: vLLM is active")

        in_flight = threading.Thread(target=lambda: httpx.post(
            gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {CLUSTER_KEY}"}, timeout=60,  # type: ignore[attr-defined]
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}))  # fmt: skip
        in_flight.start()
        time.sleep(0.5)  # running on c-vllm
        page.get_by_role("button", name="Switch to Ollama").click()
        page.locator("#mode-confirm").get_by_role("button", name="Switch").click()
        # The operator drains for 4 s: the page shows the switch in progress with its elapsed time.
        expect(page.locator("#mode-phase")).to_contain_text("Switching from vLLM to Ollama")
        expect(page.locator("#mode-elapsed")).to_contain_text("s elapsed")
        page.wait_for_timeout(1500)
        expect(page.locator("#mode-phase")).to_contain_text("Switching from vLLM to Ollama")  # still draining
        expect(page.locator('li[data-mode="ollama"] .badge')).to_have_text("Switching to")
        shot(page, "cluster-mode-switching")
        assert crds.get("em", "default", namespace)["spec"]["mode"] == "ollama"
        expect(page.locator("#mode-phase")).to_contain_text("Ready: Ollama is active", timeout=60_000)
        status = crds.get("em", "default", namespace)["status"]
        assert status["activeMode"] == "ollama" and status["phase"] == "Ready"
        assert status["lastSwitchSeconds"] >= 4  # the drain, then the vLLM pod gone, then the Ollama pod Ready
        in_flight.join(30)
        expect(row(page, "c-ollama").locator("td").nth(2)).to_have_text("Ready")
        expect(row(page, "c-vllm").locator("td").nth(3)).to_have_text("No (mode)")
        expect(page.locator("#mode-phase")).to_contain_text(f"took {status['lastSwitchSeconds']} s")
        expect(page.locator('li[data-mode="ollama"] .badge')).to_have_text("Active")
        shot(page, "cluster-mode-ready")

        ask(page, "Which family now?")
        expect(page.locator("#route-engine")).to_contain_text("c-ollama")

        # An error from the API is shown in words: here there is no EngineMode left to patch.
        crds.kubectl("delete", "em", "default", namespace=namespace)
        page.get_by_role("tab", name="Engine mode").click()
        wait_until(lambda: httpx.get(gw.url + "/admin/engine-mode",  # type: ignore[attr-defined]
                                     headers={"Authorization": f"Bearer {CLUSTER_ADMIN}"}).json()["mode"] is None,
                   10, "the gateway to see the EngineMode gone")  # fmt: skip
        expect(page.locator("#mode-phase")).to_have_text("No engine mode is set.")
        page.locator('li[data-mode="vllm"] button').click()
        page.locator("#mode-confirm").get_by_role("button", name="Switch").click()
        expect(page.locator("#mode-banner")).to_contain_text("Could not switch to vLLM: no EngineMode in namespace")
        expect(page.locator("#mode-banner")).to_contain_text("(HTTP 404)")
        shot(page, "cluster-mode-error")
        log = gw.log_path.read_text()
        assert CLUSTER_ADMIN not in log and CLUSTER_KEY not in log
    finally:
        gw.stop()
        for s in sims.values():
            s.stop()
