"""Prometheus metrics and /healthz over HTTP (the text exposition format, stdlib only)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, by: float = 1.0) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0.0) + by

    def gauge(self, name: str, fn: Callable[[], float], text: str) -> None:
        self.gauges[name] = fn
        self.help[name] = text

    def counter(self, name: str, text: str) -> None:
        self.counters.setdefault(name, 0.0)
        self.help[name] = text

    def render(self) -> str:
        lines = []
        with self._lock:
            counters = dict(self.counters)
        for name, value in sorted(counters.items()):
            lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} counter",
                      f"{name} {value:g}"]
        for name, fn in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {self.help[name]}", f"# TYPE {name} gauge",
                      f"{name} {fn():g}"]
        return "\n".join(lines) + "\n"


def serve(metrics: Metrics, problems: Callable[[], list[str]], host: str, port: int
          ) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz (200 "ok", or 503 with one problem a line) from a thread;
    OSError when the address cannot be bound."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, code = metrics.render().encode(), 200
            elif self.path == "/healthz":
                found = problems()
                body, code = ((b"ok\n", 200) if not found else
                              ("".join(f"{p}\n" for p in found).encode(), 503))
            else:
                body, code = b"not found\n", 404
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
