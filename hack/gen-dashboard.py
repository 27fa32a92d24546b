#!/usr/bin/env python3
"""Write the chart's Grafana dashboard (charts/roundhouse/files/dashboard.json) from the panel list
below; `--check` fails if the file differs (CI). Every query names only metrics that the gateway and
the operator export (tests/integration/test_observability.py checks it against real scrapes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "charts" / "roundhouse" / "files" / "dashboard.json"
GW = "roundhouse_gateway_"
OP = "roundhouse_operator_"

# (title, unit, [(query, legend)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests by status", "reqps", [(f"sum by (status) (rate({GW}requests_total[5m]))", "{{status}}")]),
    (
        "5xx error ratio",
        "percentunit",
        [(f'sum(rate({GW}requests_total{{status=~"5.."}}[5m])) / sum(rate({GW}requests_total[5m]))', "5xx")],
    ),
    (
        "Time to first token p50 / p99",
        "s",
        [
            (
                f"histogram_quantile(0.5, sum by (le, engine) (rate({GW}time_to_first_token_seconds_bucket[5m])))",
                "p50 {{engine}}",
            ),
            (
                f"histogram_quantile(0.99, sum by (le, engine) (rate({GW}time_to_first_token_seconds_bucket[5m])))",
                "p99 {{engine}}",
            ),
        ],
    ),
    (
        "Completion tokens/s",
        "short",
        [(f'sum by (engine) (rate({GW}tokens_total{{type="completion"}}[5m]))', "{{engine}}")],
    ),
    ("Requests in flight", "short", [(f"sum by (engine) ({GW}in_flight_requests)", "{{engine}}")]),
    ("Failovers", "short", [(f"sum by (engine, reason) (rate({GW}failovers_total[5m]))", "{{engine}} {{reason}}")]),
    ("Routing reasons", "short", [(f"sum by (reason) (rate({GW}routing_decisions_total[5m]))", "{{reason}}")]),
    ("Healthy endpoints", "short", [(f"sum by (engine) ({GW}endpoint_healthy)", "{{engine}}")]),
    ("Engines by phase", "short", [(f"sum by (phase) ({OP}engines)", "{{phase}}")]),
    ("Engines not where their mode wants them", "short", [(f"count({OP}engine_ok == 0)", "not ok")]),
    (
        "Mode switches and their duration",
        "s",
        [
            (f"increase({OP}mode_switches_total[1h])", "switches in the hour"),
            (
                f"histogram_quantile(0.9, sum by (le) (rate({OP}mode_switch_duration_seconds_bucket[1h])))",
                "p90 duration",
            ),
            (f"max by (namespace, mode) ({OP}mode_switch_age_seconds)", "under way {{namespace}}/{{mode}}"),
        ],
    ),
    (
        "On-demand: waiting requests and activations",
        "short",
        [
            (f"sum by (engine) ({GW}requests_waiting)", "waiting for {{engine}}"),
            (f"sum by (step) (increase({OP}on_demand_steps_total[1h]))", "{{step}} in the hour"),
        ],
    ),
    (
        "Operator: reconciles and leader",
        "short",
        [(f"sum by (result) (rate({OP}reconciles_total[5m]))", "{{result}}"), (f"max({OP}leader)", "a replica leads")],
    ),
]


def dashboard() -> dict[str, object]:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": q, "legendFormat": legend}
                        for j, (q, legend) in enumerate(queries)],
        })  # fmt: skip
    return {
        "title": "Roundhouse", "uid": "roundhouse", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "tags": ["roundhouse", "llm"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }  # fmt: skip


def main() -> None:
    text = json.dumps(dashboard(), indent=2) + "\n"
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run hack/gen-dashboard.py")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
