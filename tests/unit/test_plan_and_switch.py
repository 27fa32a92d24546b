"""plan() and mode_status(): exclusive switches computed from observed state only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from roundhouse_api import EngineMode, EngineStatus, Family, Mode, ModePhase, Phase
from roundhouse_operator.plan import EngineView, plan, wanted
from roundhouse_operator.status import condition
from roundhouse_operator.switch import drain_deadline, mode_status

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def view(name: str, family: Family, spec: int = 1, deployed: int = 0, pods: int = 0, **kw: object) -> EngineView:
    return EngineView(name, family, spec, deployed, pods, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "family", "expected"),
    [
        (Mode.VLLM, Family.VLLM, True), (Mode.VLLM, Family.OLLAMA, False), (Mode.VLLM, Family.LLAMACPP, False),
        (Mode.OLLAMA, Family.OLLAMA, True), (Mode.LLAMACPP, Family.LLAMACPP, True), (Mode.LLAMACPP, Family.VLLM, False),
        (Mode.AUTO, Family.VLLM, True), (Mode.AUTO, Family.OLLAMA, True), (None, Family.OLLAMA, True),
        (Mode.VLLM, Family.EXTERNAL, True), (Mode.OLLAMA, Family.EXTERNAL, True),
    ],
)  # fmt: skip
def test_which_families_a_mode_runs(mode: Mode | None, family: Family, expected: bool) -> None:
    assert wanted(mode, family) is expected


def test_incoming_family_waits_for_outgoing_pods() -> None:
    engines = [view("v", Family.VLLM, spec=2, deployed=2, pods=2), view("o", Family.OLLAMA, spec=1)]
    p = plan(Mode.OLLAMA, engines)
    assert p.engines["v"].replicas == 0 and not p.engines["v"].active
    assert p.engines["o"].replicas == 0 and p.engines["o"].held
    assert p.switching and p.outgoing_pods == 2


def test_incoming_family_starts_once_outgoing_pods_are_gone() -> None:
    engines = [view("v", Family.VLLM, spec=2, deployed=0, pods=0), view("o", Family.OLLAMA, spec=3)]
    p = plan(Mode.OLLAMA, engines)
    assert p.engines["o"].replicas == 3 and not p.engines["o"].held
    assert not p.switching


def test_terminating_pods_still_block() -> None:
    engines = [view("v", Family.VLLM, spec=1, deployed=0, pods=1), view("o", Family.OLLAMA)]
    assert plan(Mode.OLLAMA, engines).engines["o"].held


def test_running_engines_of_the_mode_are_never_held() -> None:
    engines = [view("v", Family.VLLM, deployed=1, pods=1), view("l", Family.LLAMACPP, deployed=1, pods=1)]
    p = plan(Mode.LLAMACPP, engines)
    assert p.engines["l"].replicas == 1 and not p.engines["l"].held


def test_draining_keeps_outgoing_replicas() -> None:
    engines = [view("v", Family.VLLM, spec=2, deployed=2, pods=2), view("o", Family.OLLAMA)]
    p = plan(Mode.OLLAMA, engines, draining=True)
    assert p.engines["v"].replicas == 2 and not p.engines["v"].active
    assert p.engines["o"].held


def test_auto_runs_everything_and_ungoverned_engines_are_untouched() -> None:
    engines = [view("v", Family.VLLM, spec=2), view("o", Family.OLLAMA), view("x", Family.LLAMACPP, governed=False)]
    p = plan(Mode.AUTO, engines)
    assert {n: e.replicas for n, e in p.engines.items()} == {"v": 2, "o": 1, "x": 1}
    p = plan(Mode.VLLM, engines)
    assert p.engines["x"].active and p.engines["x"].replicas == 1


def test_external_engines_do_not_count_as_outgoing() -> None:
    engines = [view("e", Family.EXTERNAL, runs_workload=False), view("o", Family.OLLAMA)]
    assert plan(Mode.OLLAMA, engines).engines["o"].replicas == 1


def mode(spec_mode: str, status: dict[str, object] | None = None, drain: int = 0) -> EngineMode:
    doc: dict[str, object] = {
        "kind": "EngineMode", "metadata": {"name": "default", "namespace": "ns", "generation": 2},
        "spec": {"mode": spec_mode, "switchPolicy": {"drainSeconds": drain}},
    }  # fmt: skip
    if status:
        doc["status"] = status
    return EngineMode.model_validate(doc)


def engine_status(phase: Phase, scheduled: str = "True", message: str = "") -> EngineStatus:
    return EngineStatus(phase=phase, message=message, conditions=[
        condition("Scheduled", scheduled == "True", "r", message, 1, NOW)])  # fmt: skip


def test_switch_starts_then_completes_with_timings() -> None:
    m = mode("ollama", {"phase": "Ready", "activeMode": "vllm"})
    engines = [view("v", Family.VLLM, deployed=1, pods=1), view("o", Family.OLLAMA)]
    p = plan(Mode.OLLAMA, engines)
    statuses = {"v": (Family.VLLM, engine_status(Phase.STANDBY), True),
                "o": (Family.OLLAMA, engine_status(Phase.PENDING), True)}  # fmt: skip
    st, events = mode_status(m, p, statuses, NOW)
    assert st.phase == ModePhase.SWITCHING and st.active_mode == Mode.VLLM and st.previous_mode == Mode.VLLM
    assert st.switch_started_at == NOW and [e.reason for e in events] == ["SwitchStarted"]
    assert "1 outgoing pod(s) stopping" in (st.message or "")

    # Later pass (e.g. after an operator restart): only the stored status and observed pods matter.
    m2 = mode("ollama", st.wire())
    later = NOW + timedelta(seconds=7)
    p2 = plan(Mode.OLLAMA, [view("v", Family.VLLM), view("o", Family.OLLAMA, deployed=1, pods=1)])
    statuses["o"] = (Family.OLLAMA, engine_status(Phase.READY), True)
    st2, events2 = mode_status(m2, p2, statuses, later)
    assert st2.phase == ModePhase.READY and st2.active_mode == Mode.OLLAMA and st2.previous_mode == Mode.VLLM
    assert st2.last_switch_seconds == 7.0 and st2.switch_completed_at == later
    assert [e.reason for e in events2] == ["SwitchCompleted"]
    ready = {c.type: c.status for c in st2.conditions}
    assert ready == {"Ready": "True", "Switching": "False"}

    # Nothing changes on a further pass: no new events, same status.
    st3, events3 = mode_status(mode("ollama", st2.wire()), p2, statuses, later + timedelta(seconds=30))
    assert events3 == [] and st3.wire() == st2.wire()


def test_auto_that_cannot_fit_is_degraded_naming_engine_and_reason() -> None:
    m = mode("auto", {"phase": "Ready", "activeMode": "auto"})
    p = plan(Mode.AUTO, [view("big", Family.VLLM, deployed=1, pods=1), view("o", Family.OLLAMA, deployed=1, pods=1)])
    statuses = {
        "big": (Family.VLLM, engine_status(Phase.PENDING, "False", "0/4 nodes: Insufficient nvidia.com/gpu"), True),
        "o": (Family.OLLAMA, engine_status(Phase.READY), True),
    }
    st, _ = mode_status(m, p, statuses, NOW)
    assert st.phase == ModePhase.DEGRADED
    assert "big: 0/4 nodes: Insufficient nvidia.com/gpu" in (st.message or "")


def test_external_engines_do_not_hold_up_a_switch() -> None:
    m = mode("vllm", {"phase": "Switching", "activeMode": "ollama", "switchStartedAt": NOW.isoformat()})
    p = plan(Mode.VLLM, [view("v", Family.VLLM, deployed=1, pods=1), view("e", Family.EXTERNAL, runs_workload=False)])
    statuses = {"v": (Family.VLLM, engine_status(Phase.READY), True),
                "e": (Family.EXTERNAL, engine_status(Phase.FAILED), False)}  # fmt: skip
    assert mode_status(m, p, statuses, NOW)[0].phase == ModePhase.READY


def test_drain_deadline() -> None:
    assert drain_deadline(mode("ollama", {"phase": "Ready", "activeMode": "vllm"}, drain=10), NOW) == NOW + timedelta(
        seconds=10
    )
    started = NOW - timedelta(seconds=4)
    switching = {"phase": "Switching", "activeMode": "vllm", "switchStartedAt": started.isoformat()}
    assert drain_deadline(mode("ollama", switching, drain=10), NOW) == started + timedelta(seconds=10)
    assert drain_deadline(mode("ollama", {"phase": "Ready", "activeMode": "ollama"}), NOW) is None
