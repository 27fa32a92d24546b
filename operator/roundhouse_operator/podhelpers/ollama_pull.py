"""`roundhouse-ollama-pull --url URL --model TAG`: the Ollama pod's model sidecar.

Waits for `ollama serve`, pulls the model only when the server does not list it (a model already on
the volume needs no registry), logs the pull's progress, then stays up until the pod stops.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx

from roundhouse_api.families.ollama import has_model

from . import log, wait_for_termination

PROGRESS_EVERY = 5.0


def wait_for_server(client: httpx.Client, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get(f"{url}/api/version").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"ollama at {url} did not answer within {timeout:.0f}s")
        time.sleep(0.5)


def pull(client: httpx.Client, url: str, model: str) -> None:
    """POST /api/pull and follow its NDJSON progress; an error line ends the pull."""
    last = 0.0
    with client.stream("POST", f"{url}/api/pull", json={"model": model, "stream": True}, timeout=None) as r:
        if r.status_code != 200:
            raise SystemExit(f"pull of {model} failed: HTTP {r.status_code}: {r.read().decode(errors='replace')}")
        for line in r.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if "error" in event:
                raise SystemExit(f"pull of {model} failed: {event['error']}")
            if time.monotonic() - last >= PROGRESS_EVERY or event.get("status") == "success":
                last = time.monotonic()
                log("pull", model=model, status=event.get("status"), completed=event.get("completed"),
                    total=event.get("total"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="the Ollama server, e.g. http://127.0.0.1:11434")
    parser.add_argument("--model", required=True)
    parser.add_argument("--server-timeout", type=float, default=300.0)
    parser.add_argument("--exit", action="store_true", help="exit once the model is there (no sidecar wait)")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    with httpx.Client(timeout=30) as client:
        wait_for_server(client, url, args.server_timeout)
        tags = client.get(f"{url}/api/tags")
        if tags.status_code == 200 and has_model(tags.content, args.model):
            log("present", model=args.model, detail="already on the volume: not pulled")
        else:
            log("pulling", model=args.model)
            pull(client, url, args.model)
            log("pulled", model=args.model)
    if not args.exit:
        wait_for_termination()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
