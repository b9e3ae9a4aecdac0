"""A loopback HTTP server for the fetch tests: plain files, Range requests, and the hub's resolve endpoint.

It binds 127.0.0.1 only, serves from memory, and shuts itself down after `lifetime_s` even if a test
forgets to stop it. Knobs (set per test): `cut` sends only the first N bytes of a path once and drops
the connection; `status` answers a path with an HTTP error; `corrupt` flips one byte of a path's body;
`no_range` ignores Range requests (answers 200 with the whole body).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    """What the server holds and what it has seen."""

    files: dict[str, bytes] = field(default_factory=dict)
    hub: set[str] = field(default_factory=set)
    cut: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    no_range: set[str] = field(default_factory=set)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests(self, path: str, method: str = "GET") -> list[str | None]:
        """The Range headers of the requests seen for `path` (None: no Range)."""
        with self.lock:
            return [rng for m, p, rng in self.log if p == path and m == method]


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, *args: object) -> None:
            """Quiet: the tests read `served.log`."""

        def _answer(self, head: bool) -> None:
            path = self.path.split("?")[0]
            with served.lock:
                served.log.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
                status = served.status.get(path)
                cut = None if head else served.cut.pop(path, None)
            if status is not None or path not in served.files:
                self.send_response(status or 404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = served.files[path]
            sha256 = hashlib.sha256(body).hexdigest()
            if path in served.corrupt:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and not head and path not in served.no_range:
                start = int(rng[len("bytes="):].split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Accept-Ranges", "bytes")
            if path in served.hub:
                # What hf_hub_download reads from the hub's resolve endpoint: commit, ETag (sha256 of an LFS file).
                self.send_header("X-Repo-Commit", HUB_COMMIT)
                self.send_header("ETag", f'"{sha256}"')
            self.end_headers()
            if head:
                return
            chunk = body[start:] if cut is None else body[start:cut]
            self.wfile.write(chunk)
            self.wfile.flush()
            if cut is not None:
                self.close_connection = True

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(head=False)

    return Handler


class LoopbackServer:
    """`with LoopbackServer(served) as base_url:` serves `served` until the block ends (or `lifetime_s` passes)."""

    def __init__(self, served: Served, lifetime_s: float = 120.0) -> None:
        self.served = served
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(lifetime_s, self.server.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> str:
        self.thread.start()
        self.timer.start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
