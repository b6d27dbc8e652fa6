"""`podnet cni-server`: the long-lived side of the plugin, holding warm netlink sockets.

Each request acts in the network namespace of the plugin process that sent it, so one server
serves its node. The plugin hands over that namespace and the pod's as descriptors (SCM_RIGHTS):
the runtime's CNI_NETNS path may not exist in the server's mount namespace, and a path from a
request is never trusted to name a namespace. A descriptor that is not a network namespace is
refused. Workers are a fixed pool because pyroute2 binds a
socket to the thread that made it: each worker keeps its own sockets, one per node namespace.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from types import FrameType

from podnet.cni import protocol, shim
from podnet.cni.errors import INVALID_ENV, UNKNOWN_CONTAINER, CNIError
from podnet.ipam import store
from podnet.netlink import netns
from podnet.plugins import bridge
from podnet.plugins.context import HostContext

WORKERS = 8
CACHED_NAMESPACES = 8
_local = threading.local()


def _peer_pid(conn: socket.socket) -> tuple[int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _context_for(ns_path: str) -> HostContext:
    """This worker's warm context for the namespace at ns_path."""
    cache: collections.OrderedDict[tuple[int, int], HostContext] = getattr(
        _local, "cache", None) or collections.OrderedDict()
    _local.cache = cache
    key = netns.ns_id(ns_path)
    ctx = cache.get(key)
    if ctx is None:
        ctx = HostContext(ns_path)
        ctx.fast  # noqa: B018  (made now, while the caller's namespace is sure to exist)
        cache[key] = ctx
        while len(cache) > CACHED_NAMESPACES:
            _, old = cache.popitem(last=False)
            old.close()
    cache.move_to_end(key)
    # The same namespace may come from another caller next time: enter it through this one.
    ctx.host_ns = ns_path
    return ctx


MAX_FDS = 2  # the caller's namespace and the pod's


def _read_request(conn: socket.socket) -> tuple[dict[str, str], bytes, list[int]]:
    """The request and the descriptors sent with it (they come with its first bytes; any
    sent later are dropped by the kernel, since plain recv takes no ancillary data)."""
    first, fds, flags, _ = socket.recv_fds(conn, 65536, MAX_FDS + 1)
    if flags & socket.MSG_CTRUNC:
        fds.append(-1)  # more than the room: refused below
    chunks = [first]
    while first and (chunk := conn.recv(65536)):
        chunks.append(chunk)
    env, stdin = shim.decode_request(b"".join(chunks))
    return env, stdin, fds


def _resolver(fds: list[int]) -> Callable[[protocol.Request], None]:
    """Where the request's pod namespace is entered: by the descriptor the plugin sent."""
    def resolve(req: protocol.Request) -> None:
        if len(fds) > MAX_FDS:
            raise CNIError(INVALID_ENV, f"more than {MAX_FDS} descriptors came with the request")
        req.enter = ""
        if not req.netns:
            return
        pod = fds[1] if len(fds) == MAX_FDS else None
        if pod is not None and netns.is_netns(pod):
            req.enter = f"/proc/self/fd/{pod}"
        elif req.command == "DEL":
            return  # gone (or never a namespace): DEL removes the host's side only
        elif pod is None:
            raise CNIError(UNKNOWN_CONTAINER, f"network namespace {req.netns} does not exist "
                           "(the plugin could not open it)")
        else:
            raise CNIError(INVALID_ENV, f"CNI_NETNS {req.netns} is not a network namespace")
    return resolve


def handle(conn: socket.socket, judge: Callable[[], None] = lambda: None,
           on_change: Callable[[], None] = lambda: None) -> None:
    fds: list[int] = []
    changed = False
    with conn:
        try:
            pid, uid = _peer_pid(conn)
            if uid not in (0, os.getuid()):
                return  # only the node's runtime (root) may wire pods
            env, stdin, fds = _read_request(conn)
            # The node: the namespace the plugin runs in, sent by it; else (a client of its
            # own) the caller's as the kernel reports it.
            host = (f"/proc/self/fd/{fds[0]}" if fds and fds[0] >= 0 and netns.is_netns(fds[0])
                    else f"/proc/{pid}/ns/net")
            ctx = _context_for(host)
            code, out = protocol.run(bridge.handlers(ctx), env, stdin, _resolver(fds))
            if changed := env.get("CNI_COMMAND") in ("ADD", "DEL"):
                # Before the reply: the runtime starts the pod once ADD returns, and a pod
                # that NetworkPolicy has not judged yet can neither send nor be reached.
                judge()
            conn.sendall(f"{code}\n{out}".encode())
        except Exception as exc:  # one bad client must not take the server down
            protocol.log(f"cni-server: request failed: {exc!r}")
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
    # After the reply is complete (the plugin reads to the end): the agent's thread this wakes
    # would otherwise hold the interpreter while the reply waits to be closed.
    if changed:
        on_change()


class Server:
    def __init__(self, path: str, workers: int = WORKERS,
                 judge: Callable[[], None] = lambda: None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        """After each ADD and DEL (the node's pods may have changed): `judge` before the
        reply, `on_change` once the reply is sent."""
        self.path = path
        self.judge = judge
        self.on_change = on_change
        self.workers = workers
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        try:
            store.remember_reads()
        except OSError as exc:
            protocol.log(f"cni-server: IPAM stores are read in full on every request ({exc})")

    def bind(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old = os.umask(0o077)  # root only: the socket wires pods
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        self.sock.listen(128)

    def start_workers(self) -> None:
        """Each worker accepts on the listening socket itself: the kernel hands a connection
        to one waiting worker, with no hand-over between threads (a thread wake-up less on
        every pod's ADD and DEL, 1 ms of it)."""
        self._threads = [threading.Thread(target=self._work, name=f"cni-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError as exc:
                if self._stop.is_set():
                    return
                protocol.log(f"cni-server: accept failed: {exc}")  # e.g. out of descriptors
                self._stop.wait(0.1)
                continue
            conn.settimeout(120)
            handle(conn, self.judge, self.on_change)

    def serve_forever(self) -> None:
        self.start_workers()
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        # Wakes the workers blocked in accept (Linux: EINVAL), where closing would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stop()
        for thread in self._threads:
            thread.join()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def start_thread(self) -> None:
        """Serve from background threads (the agent embeds the server this way)."""
        self.bind()
        self.start_workers()


def serve(path: str) -> None:
    server = Server(path)
    server.bind()

    def _term(_sig: int, _frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    protocol.log(f"cni-server listening on {path}")
    try:
        server.serve_forever()
    finally:
        server.close()
