"""`roundhouse-gateway`: one OpenAI-compatible URL in front of the engines."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from roundhouse_api import Mode
from roundhouse_gateway.app import Gateway
from roundhouse_gateway.engines.catalog import Catalog, with_mode
from roundhouse_gateway.http.drain import DEADLINE, DELAY, serve
from roundhouse_gateway.keys.auth import Auth, KeySource
from roundhouse_gateway.keys.keys import KeyFileError
from roundhouse_gateway.settings import Settings
from roundhouse_gateway.sources.budget import BudgetState, History
from roundhouse_gateway.sources.cluster import ClusterSource
from roundhouse_gateway.sources.config import Config, ConfigError, load_config
from roundhouse_gateway.sources.local import LocalEngines
from roundhouse_gateway.state.open import StateError, open_state

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roundhouse"
RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }  # fmt: skip
        out.update({k: v for k, v in record.__dict__.items() if k not in RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="roundhouse-gateway", description=__doc__)
    p.add_argument("--config", type=Path,
                   help="standalone: YAML file of InferenceEngine/EngineMode documents (engines give spec.endpoints);"
                        " without it the gateway watches the cluster")  # fmt: skip
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                   help="cluster mode: namespace of the engines and the EngineMode")  # fmt: skip
    p.add_argument("--kubeconfig", help="cluster mode: kubeconfig (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--endpoint-map", action="append", default=[], metavar="ENGINE=URL",
                   help="development and demos: send ENGINE's traffic to URL, not to its pods")  # fmt: skip
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-keys-file", type=Path,
                   help="client keys: one per line, or YAML entries with names and limits (docs/keys.md);"
                        " reloaded when it changes (none: no auth)")  # fmt: skip
    p.add_argument("--admin-keys-file", type=Path, help="admin keys, one per line (none: admin API disabled)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--probe-interval", type=float, default=2.0, help="seconds between active health probes")
    p.add_argument("--engine-log-dir", type=Path, default=CACHE / "engine-logs",
                   help="standalone onDemand: one log file per engine the gateway runs")  # fmt: skip
    p.add_argument("--engine-cache-dir", type=Path, default=CACHE / "models",
                   help="standalone onDemand: where engines keep models (the pods' cache volume)")  # fmt: skip
    p.add_argument("--drain-delay", type=float, default=DELAY,
                   help="after SIGTERM: seconds to keep accepting connections (readyz says 503 at once)")  # fmt: skip
    p.add_argument(
        "--drain-deadline",
        type=float,
        default=DEADLINE,
        help="after SIGTERM: seconds requests in flight may take; streams then end with an error event",
    )
    p.add_argument("--state", default=f"sqlite://{CACHE / 'gateway-state.sqlite'}", metavar="URL",
                   help="where limits, budgets and usage are kept: sqlite:///PATH (one gateway), redis://HOST:PORT"
                        "/DB (shared by replicas; rediss:// with TLS; the password from $ROUNDHOUSE_STATE_PASSWORD),"
                        " or memory: (this process only)")  # fmt: skip
    p.add_argument(
        "--state-on-failure",
        choices=["open", "closed"],
        default="open",
        help="while the state store does not answer: count locally and serve (open), or answer 503",
    )
    p.add_argument("--state-timeout", type=float, default=0.25, help="seconds one state store call may take")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    try:
        clients, admins = KeySource(args.api_keys_file), KeySource(args.admin_keys_file)
        clients.load()
        admins.load()
        settings = Settings(max_body_bytes=args.max_body_bytes, probe_interval=args.probe_interval)
        config = load_config(args.config) if args.config else None
        state = open_state(args.state, args.state_on_failure, args.state_timeout)
    except (ConfigError, KeyFileError, StateError, OSError) as err:
        sys.exit(f"roundhouse-gateway: {err}")
    endpoint_map = {}
    for item in args.endpoint_map:
        name, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            sys.exit(f"roundhouse-gateway: --endpoint-map wants ENGINE=http(s)://host:port, got {item!r}")
        endpoint_map[name] = url.rstrip("/")
    auth = Auth(clients, admins, state)
    if config is None:
        gateway = cluster_gateway(settings, auth, args.namespace, args.kubeconfig, endpoint_map)
    else:
        gateway = standalone_gateway(settings, auth, config.catalog)
        if config.local and config.mode is not None:
            run_locally(gateway, config, args.engine_log_dir, args.engine_cache_dir)
    gateway.on_shutdown.append(state.close)  # the last second's counts, and an embedded store's windows
    serve(gateway, args.host, args.port, gateway.drain, args.drain_delay, args.drain_deadline)


def cluster_gateway(
    settings: Settings, auth: Auth, namespace: str, kubeconfig: str | None, endpoint_map: dict[str, str]
) -> Gateway:
    """Engines, mode and endpoints from the API server; the admin mode switch patches the EngineMode."""
    gateway = Gateway(settings, auth=auth, standalone=False)
    source = ClusterSource(namespace, gateway.update, kubeconfig, endpoint_map)
    gateway.set_mode = source.set_mode
    gateway.stale_since = source.stale_since
    gateway.budget = lambda now: source.budget_state(now, gateway.demand)
    gateway.demand.write = source.write_report
    gateway.on_startup.append(lambda: source.start(asyncio.get_running_loop()))
    return gateway


def standalone_gateway(settings: Settings, auth: Auth, catalog: Catalog) -> Gateway:
    """Engines and mode from the config file; the admin mode switch changes the gateway's own mode."""
    gateway = Gateway(settings, catalog, auth=auth)

    async def set_mode(mode: Mode) -> dict[str, Any]:
        previous = gateway.catalog.mode.mode
        gateway.update(with_mode(gateway.catalog, mode, time.time()))
        logging.getLogger("roundhouse.gateway").info("engine mode", extra={"mode": mode, "previous": previous})
        return {"mode": mode.value, "previous": previous.value if previous else None, "standalone": True,
                "message": "standalone gateway: changed its own routing mode (no cluster to patch)"}  # fmt: skip

    gateway.set_mode = set_mode
    return gateway


def run_locally(gateway: Gateway, config: Config, log_dir: Path, cache_dir: Path) -> None:
    """Standalone mode onDemand: the gateway starts and stops the config's local engines itself."""
    assert config.mode is not None
    engines = LocalEngines(config.catalog, config.local, config.mode, gateway.demand, gateway.update, log_dir,
                           cache_dir)  # fmt: skip

    async def budget(now: float) -> tuple[BudgetState | None, History]:
        if gateway.fleet.source.mode.mode != Mode.ON_DEMAND:  # switched to a manual mode: no budget in force
            return None, engines.history
        return engines.budget_state(now)

    gateway.budget = budget
    engines.current_mode = lambda: gateway.fleet.source.mode  # the admin page may switch it
    gateway.on_startup.append(lambda: gateway.background(engines.run(), "local-engines"))
    gateway.on_shutdown.append(engines.close)


if __name__ == "__main__":
    main()
