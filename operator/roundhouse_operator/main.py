"""`roundhouse-operator`: run the kopf operator with JSON logs, metrics and a health endpoint."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

import kopf
from prometheus_client import start_http_server

from . import handlers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="roundhouse-operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces")  # fmt: skip
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--health-port", type=int, default=8081, help="/healthz port (0: off)")
    parser.add_argument("--bind", default="0.0.0.0", help="address for the metrics and health endpoints")
    parser.add_argument("--leader-election", action="store_true",
                        help="run as one of several replicas: only the holder of a Lease reconciles")  # fmt: skip
    parser.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                        help="namespace of the Lease (default: $POD_NAMESPACE, else default)")  # fmt: skip
    parser.add_argument("--leader-election-id", default="roundhouse-operator", help="name of the Lease")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON, log_refkey="object")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # kopf logs every watch event's handler outcome at INFO: one line per pod/deployment change is
    # noise for users and measurable CPU at scale; our own log lines say what changed.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind)
    liveness = f"http://{args.bind}:{args.health_port}/healthz" if args.health_port else None
    handlers.STATE["namespaces"] = args.namespace  # the handlers registered themselves on import
    if args.leader_election:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        handlers.STATE["election"] = (args.leader_election_namespace, args.leader_election_id, identity)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
        )
    )


if __name__ == "__main__":
    main()
