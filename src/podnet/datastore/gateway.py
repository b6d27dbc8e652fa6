"""One etcd member's JSON gateway (`/v3/...`) over the standard library's http.client: a POST
of JSON per call on kept connections (one per concurrent caller), a streamed response per
watch, the cluster's CA and client certificate, and the auth token header.

`requests` did the same at 40 ms of every agent's and command's start (its import); what it
added beyond this (redirects, proxies, cookies, the environment's CA bundle) an etcd client
must not have.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlparse

if TYPE_CHECKING:
    import ssl

DEFAULT_PORT = 2379  # etcd's client port
API = "/v3/"  # the gateway's path


class Unreachable(Exception):
    """The member did not take the request (no connection, refused, reset): another may."""


class TimedOut(Exception):
    """The member took the request and did not answer in time: it may have been applied."""


class Reply(NamedTuple):
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Member:
    """One member: its URL, its idle kept connections, the headers every request carries."""

    def __init__(self, url: str, ca_cert: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"etcd URL {url!r} must look like http(s)://HOST:PORT")
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = parsed.port or DEFAULT_PORT
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        self.base = f"{parsed.scheme}://{bracketed}:{self.port}{API}"
        self.headers: dict[str, str] = {}  # the auth token, once authenticated
        self._tls = (ca_cert, cert, key)
        self._context: ssl.SSLContext | None = None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return self.base + path.lstrip("/")

    def post(self, path: str, payload: dict[str, Any], timeout: float) -> Reply:
        """The member's reply; Unreachable or TimedOut."""
        conn = self._kept() or self._connect(timeout)
        try:
            resp = self._send(conn, path, payload, timeout)
            reply = Reply(resp.status, resp.read())
        except TimeoutError as exc:
            conn.close()
            raise TimedOut(f"{self.base}: no answer in {timeout:g} s ({exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Unreachable(f"{self.base}: {exc!r}") from None
        if resp.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return reply

    def stream(self, path: str, payload: dict[str, Any], timeout: float,
               idle: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A connection of its own and its response, to read as it comes (`lines`): a read
        waits at most `idle` seconds (TimeoutError). Unreachable where it cannot start."""
        conn = self._connect(timeout)
        try:
            return conn, self._send(conn, path, payload, idle)
        except TimeoutError:  # delivered: the caller's to take as idle
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Unreachable(f"{self.base}: {exc!r}") from None

    def _send(self, conn: http.client.HTTPConnection, path: str, payload: dict[str, Any],
              timeout: float) -> http.client.HTTPResponse:
        conn.sock.settimeout(timeout)
        conn.request("POST", API + path.lstrip("/"), json.dumps(payload).encode(),
                     {"Content-Type": "application/json", **self.headers})
        return conn.getresponse()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _kept(self) -> http.client.HTTPConnection | None:
        """An idle kept connection the member has not closed meanwhile (it would be readable:
        its end of file, or data it never should have sent), else None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        try:
            if self.https:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self._ssl())
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
            raise Unreachable(f"{self.base}: {exc!r}") from None
        return conn

    def _ssl(self) -> ssl.SSLContext:
        """The cluster's CA (else the system's) and the client certificate; ssl is imported
        only for an https member (8 ms)."""
        with self._lock:
            if self._context is None:
                import ssl

                ca_cert, cert, key = self._tls
                context = ssl.create_default_context(cafile=ca_cert)
                if cert is not None and key is not None:
                    context.load_cert_chain(cert, key)
                self._context = context
            return self._context


def lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """A streamed response's lines as they arrive (the gateway writes one JSON object per
    line), without their newline."""
    pending = b""
    while chunk := resp.read1(65536):
        *complete, pending = (pending + chunk).split(b"\n")
        yield from complete
    if pending:
        yield pending
