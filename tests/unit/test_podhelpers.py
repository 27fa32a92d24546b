"""roundhouse-fetch against a loopback HTTP server: kept when cached, resumed after a break, complete or absent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from roundhouse_operator.podhelpers import fetch

BODY = bytes(range(256)) * 400  # 100 KiB


class Handler(BaseHTTPRequestHandler):
    requests: list[str | None] = []

    def do_GET(self) -> None:
        Handler.requests.append(self.headers.get("Range"))
        if self.path.endswith("/missing.gguf"):
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(BODY) - start))
        self.end_headers()
        self.wfile.write(BODY[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_downloads_then_keeps_the_cached_file(server: str, tmp_path: Path) -> None:
    assert fetch.main(["--dest", str(tmp_path), f"{server}/m/a.gguf", f"{server}/m/b.gguf"]) == 0
    assert (tmp_path / "a.gguf").read_bytes() == BODY and (tmp_path / "b.gguf").read_bytes() == BODY
    fetch.main(["--dest", str(tmp_path), f"{server}/m/a.gguf"])
    assert len(Handler.requests) == 2  # the second run asked for nothing


def test_resumes_a_partial_download(server: str, tmp_path: Path) -> None:
    (tmp_path / "a.gguf.part").write_bytes(BODY[:1000])
    fetch.main(["--dest", str(tmp_path), f"{server}/m/a.gguf"])
    assert Handler.requests == ["bytes=1000-"]
    assert (tmp_path / "a.gguf").read_bytes() == BODY and not (tmp_path / "a.gguf.part").exists()


def test_a_failed_download_leaves_no_file_under_the_final_name(server: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"could not fetch .*missing\.gguf after 2 attempts"):
        fetch.main(["--dest", str(tmp_path), "--attempts", "2", "--retry-delay", "0", f"{server}/m/missing.gguf"])
    assert not (tmp_path / "missing.gguf").exists()
