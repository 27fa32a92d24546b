"""`roundhouse-fetch --dest DIR URL...`: download model files once into the cache volume.

A file already there is kept; a partial download resumes (HTTP Range) after a restart; a file
appears under its final name only once complete. Progress is logged as JSON lines.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from . import log

PROGRESS_EVERY = 5.0


def target(dest: Path, url: str) -> Path:
    return dest / posixpath.basename(urlparse(url).path)


def download(client: httpx.Client, url: str, path: Path) -> None:
    """One attempt: resume `path.part` where it stopped, rename it when complete."""
    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as r:
        if r.status_code == 416 and have:
            part.unlink()  # the partial file is longer than the remote one: start over next attempt
            raise httpx.HTTPError(f"{url}: range not satisfiable; restarting")
        r.raise_for_status()
        if r.status_code == 200:
            have = 0  # the server ignored the range
        total = int(r.headers.get("content-length", 0)) + have or None
        last = time.monotonic()
        with open(part, "ab" if have else "wb") as f:
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)
                have += len(chunk)
                if time.monotonic() - last >= PROGRESS_EVERY:
                    last = time.monotonic()
                    pct = round(100 * have / total, 1) if total else None
                    log("progress", url=url, bytes=have, total=total, percent=pct)
    os.replace(part, path)


def fetch(url: str, dest: Path, attempts: int, delay: float, timeout: float) -> None:
    path = target(dest, url)
    if path.exists() and path.stat().st_size > 0:
        log("cached", url=url, path=str(path))
        return
    log("fetching", url=url, path=str(path))
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for attempt in range(1, attempts + 1):
            try:
                download(client, url, path)
                log("fetched", url=url, path=str(path), bytes=path.stat().st_size)
                return
            except (httpx.HTTPError, OSError) as err:
                log("retry" if attempt < attempts else "failed", url=url, attempt=attempt, error=str(err))
                if attempt < attempts:
                    time.sleep(delay)
    raise SystemExit(f"could not fetch {url} after {attempts} attempts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dest", required=True, type=Path, help="directory on the cache volume")
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--retry-delay", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without progress before a retry")
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for url in args.urls:
        fetch(url, args.dest, args.attempts, args.retry_delay, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
