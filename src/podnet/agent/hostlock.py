"""One agent per host. The lock is an abstract unix socket: abstract names belong to the network
namespace (a host, or a lab node), vanish with the process that bound them (a crashed agent
leaves no stale lock), and the holder answers who it is, so a refusal can name it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading

ADDRESS = b"\0podnet-agent"


class HostBusy(Exception):
    def __init__(self, node: str, pid: int) -> None:
        super().__init__(f"another podnet agent runs on this host: node {node!r}, pid {pid}")
        self.node = node
        self.pid = pid


def holder() -> tuple[str, int] | None:
    """The node name and pid of the agent holding this host, or None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(2.0)
        try:
            sock.connect(ADDRESS)
            raw = sock.recv(4096)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError:
            return ("?", 0)  # bound, but not answering: still held
    try:
        obj = json.loads(raw)
        return str(obj["node"]), int(obj["pid"])
    except (ValueError, KeyError, TypeError):
        return ("?", 0)


class HostLock:
    def __init__(self, node: str) -> None:
        self.node = node
        self.sock: socket.socket | None = None

    def acquire(self) -> None:
        """Hold the host or raise HostBusy naming the agent that does."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(ADDRESS)
        except OSError:
            sock.close()
            node, pid = holder() or ("?", 0)
            raise HostBusy(node, pid) from None
        sock.listen(8)
        self.sock = sock
        threading.Thread(target=self._answer, name="hostlock", daemon=True).start()

    def _answer(self) -> None:
        reply = json.dumps({"node": self.node, "pid": os.getpid()}).encode()
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(reply)

    def release(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
