"""A real S3-compatible server on loopback for the tests, and a fault-injecting proxy.

The server is moto's standalone server (``moto_server -H 127.0.0.1 -p PORT``), started in
its own process on a free port and killed at the end of the session. Credentials are set
in the environment (moto accepts any), never in URLs.

:class:`FaultProxy` is a small HTTP/1.1 proxy in front of it. Every request passes through
``FaultProxy.rule(method, path)``, which answers ``None`` (forward it), an HTTP status (answer
that status with an S3 error body instead of forwarding: 503 SlowDown, 500, 403) or
``"cut"`` (drop the connection and refuse every request until :meth:`FaultProxy.restore`:
the server as the client sees it is dead). moto keeps its state in memory, so killing and
restarting the real server would lose every object, committed ones included; cutting the
proxy is the meaningful "server died mid-flush, came back" for the tests.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BUCKET = "bp-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

Rule = Callable[[str, str], "int | str | None"]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (all held until all are drawn, so two
    draws never return the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class MotoServer:
    """moto's S3 server in a child process, with one bucket created."""

    def __init__(self) -> None:
        os.environ.update(CREDENTIALS)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120  # a bound only: it ends once the port answers
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        self.create_bucket(BUCKET)

    def create_bucket(self, name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("PUT", f"/{name}")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status in (200, 409), resp.status

    def url(self, prefix: str, endpoint: str | None = None, **options: object) -> str:
        query = "&".join([f"endpoint_url={endpoint or self.endpoint}", "region=us-east-1"]
                         + [f"{k}={v}" for k, v in options.items()])
        return f"s3://{BUCKET}/{prefix}?{query}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def _s3_error(status: int) -> bytes:
    code = {503: "SlowDown", 500: "InternalError", 403: "AccessDenied"}.get(status, "Error")
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test proxy</Message></Error>").encode()


class FaultProxy:
    """An HTTP proxy in front of an S3 endpoint that injects errors or dies on command."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rule: Rule = lambda method, path: None
        self.cut = threading.Event()
        self.seen: list[tuple[str, str, int | str | None]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                verdict = None if proxy.cut.is_set() else proxy.rule(self.command, self.path)
                with proxy._lock:
                    proxy.seen.append((self.command, self.path, verdict))
                if proxy.cut.is_set() or verdict == "cut":
                    proxy.cut.set()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(verdict, int):
                    payload = _s3_error(verdict)
                    self.send_response(verdict)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def restore(self) -> None:
        """Answer again (the server 'restarted'), forwarding everything."""
        self.rule = lambda method, path: None
        self.cut.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
