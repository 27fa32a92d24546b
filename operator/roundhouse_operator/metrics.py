"""Prometheus metrics of the operator (served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("roundhouse_operator_reconciles_total", "Namespace reconciles, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "roundhouse_operator_reconcile_duration_seconds", "Time to reconcile one namespace.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
APPLIES = Counter("roundhouse_operator_applies_total", "Server-side applies of rendered objects, by kind.", ["kind"])
PHASE_CHANGES = Counter(
    "roundhouse_operator_engine_phase_transitions_total", "Engine phase transitions, by new phase.", ["phase"]
)
SWITCHES = Counter("roundhouse_operator_mode_switches_total", "Completed engine-mode switches.")
SWITCH_SECONDS = Histogram(
    "roundhouse_operator_mode_switch_duration_seconds", "Time from a mode change to every engine in place.",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)  # fmt: skip
ADAPTER_CALLS = Counter(
    "roundhouse_operator_adapter_calls_total",
    "Run-time adapter calls to engine replicas (vLLM's load/unload_lora_adapter), by call (load, unload) and"
    " result (ok, refused, error).",
    ["call", "result"],
)  # fmt: skip
ENGINES = Gauge("roundhouse_operator_engines", "InferenceEngines by phase, as last reconciled.", ["phase"])
API_REQUESTS = Counter(
    "roundhouse_operator_api_requests_total", "Requests the operator sent to the API server (watches aside).", ["verb"]
)
ON_DEMAND_STEPS = Counter(
    "roundhouse_operator_on_demand_steps_total",
    "Mode onDemand steps taken, by step (Activating, Draining, Stopped).", ["step"],
)  # fmt: skip
ACTIVATION_SECONDS = Histogram(
    "roundhouse_operator_activation_duration_seconds", "Mode onDemand: from an engine's start to its readiness.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)  # fmt: skip
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 120, 600)  # one step of an activation or switch
ACTIVATION_PHASE_SECONDS = Histogram(
    "roundhouse_operator_activation_phase_seconds",
    "Mode onDemand: each phase of an activation, from the request that asked for the engine to its pod Ready"
    " (scale-up, created, scheduled, sandbox, started, healthy, ready).", ["phase"], buckets=PHASE_BUCKETS,
)  # fmt: skip
SWITCH_PHASE_SECONDS = Histogram(
    "roundhouse_operator_switch_phase_seconds",
    "Engine-mode switches: each phase, from the switch's start to the last incoming pod Ready"
    " (drain-and-gone, scheduled, sandbox, started, healthy, ready).", ["phase"], buckets=PHASE_BUCKETS,
)  # fmt: skip
LEADER = Gauge("roundhouse_operator_leader", "1 while this replica holds the leader lease (or runs without election).")
ENGINE_OK = Gauge(
    "roundhouse_operator_engine_ok",
    "1 while an engine is where its mode wants it (Ready; Standby when switched off or on demand), else 0.",
    ["namespace", "engine"],
)  # fmt: skip
SWITCH_AGE = Gauge(
    "roundhouse_operator_mode_switch_age_seconds", "How long the EngineMode's switch has been under way (0: none).",
    ["namespace", "mode"],
)  # fmt: skip
SWITCH_BOUND = Gauge(
    "roundhouse_operator_mode_switch_bound_seconds",
    "How long a switch may take before it counts as stuck: drainSeconds + maxHoldSeconds.", ["namespace", "mode"],
)  # fmt: skip
SCALINGS = Counter(
    "roundhouse_operator_scalings_total", "spec.autoscaling: replica changes of running engines.", ["direction"]
)
