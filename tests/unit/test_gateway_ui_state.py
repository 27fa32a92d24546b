"""What the admin page is fed: the mode's phase and switch timing (cluster and standalone), the
static assets and their headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from roundhouse_api import EngineMode, Mode
from roundhouse_gateway.admin import ui
from roundhouse_gateway.engines.catalog import Catalog, ModeState, mode_from_resource, switch_finished, with_mode


def em(spec_mode: str, **status: Any) -> EngineMode:
    return EngineMode.model_validate({"metadata": {"name": "default", "namespace": "prod"},
                                      "spec": {"mode": spec_mode}, "status": status or None})  # fmt: skip


def test_mode_status_from_the_engine_mode() -> None:
    started = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    m = mode_from_resource(em("ollama", phase="Switching", activeMode="vllm", previousMode="vllm",
                              switchStartedAt=started.isoformat()))  # fmt: skip
    assert (m.phase, m.previous, m.switching, m.source) == ("Switching", Mode.VLLM, True, "prod/default")
    assert m.switch_started_at == started.timestamp()
    done = mode_from_resource(em("ollama", phase="Ready", activeMode="ollama", previousMode="vllm",
                                 lastSwitchSeconds=4.2))  # fmt: skip
    assert (done.phase, done.previous, done.last_switch_seconds, done.switching) == ("Ready", Mode.VLLM, 4.2, False)


def test_a_patch_the_operator_has_not_taken_up_yet_shows_as_switching() -> None:
    m = mode_from_resource(em("ollama", phase="Ready", activeMode="vllm", previousMode="llamacpp",
                              lastSwitchSeconds=3.0, switchStartedAt="2026-11-23T11:00:00Z"))  # fmt: skip
    assert (m.phase, m.previous, m.switch_started_at) == ("Switching", Mode.VLLM, None)
    # Routing holds for it too (bounded by maxHoldSeconds): on the real node, requests sent in the moment
    # between the patch and the operator's Switching status were refused with 503 no_healthy_engine.
    assert m.switching is True


def test_no_status_yet_and_no_engine_mode() -> None:
    assert mode_from_resource(em("vllm")).phase is None
    assert mode_from_resource(None) == ModeState()


def test_standalone_switch_is_timed_from_request_to_healthy_family() -> None:
    ready = Catalog(mode=ModeState(mode=Mode.VLLM, phase="Ready"))
    switching = with_mode(ready, Mode.OLLAMA, now=100.0)
    m = switching.mode
    assert (m.mode, m.switching, m.phase, m.previous, m.switch_started_at) == (Mode.OLLAMA, True, "Switching",
                                                                               Mode.VLLM, 100.0)  # fmt: skip
    assert m.message == "switching from vllm to ollama"
    done = switch_finished(switching, now=102.5).mode
    assert (done.switching, done.phase, done.last_switch_seconds) == (False, "Ready", 2.5)
    assert done.message == "now ollama (from vllm) in 2.5s"
    assert with_mode(ready, Mode.VLLM, now=5.0) is ready  # the mode in force: nothing changes


@pytest.mark.parametrize("name", ["", "index.html", "app.js", "usage.js", "app.css"])
def test_assets_ship_in_the_package_with_strict_headers(name: str) -> None:
    found = ui.asset(name)
    assert found is not None
    body, headers = found
    assert body
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Type"].split(";")[0] in {"text/html", "text/javascript", "text/css"}


@pytest.mark.parametrize("name", ["../app.py", "app.py", "ui/app.js", "%2e%2e/app.py", "index.htm"])
def test_only_the_page_assets_are_served(name: str) -> None:
    assert ui.asset(name) is None


def test_the_page_has_no_inline_script_or_style_the_policy_would_block() -> None:
    page = ui.asset("index.html")
    assert page is not None
    html = page[0].decode()
    assert "<script>" not in html and "style=" not in html and "onclick=" not in html
    assert '<script src="app.js" defer></script>' in html
