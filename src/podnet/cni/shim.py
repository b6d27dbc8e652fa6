"""The exec'd plugin process: it relays the request to the node's cni-server.

`podnet install-cni` installs this file as a module beside the plugin executables, which import
it (its bytecode cached): it needs only the standard library and runs with the host's python3,
3.6 or later (hence no `from __future__`, no walrus, annotations as strings), whatever podnet
was installed from or where. Relaying, it imports nothing beyond what the interpreter loaded
at start-up (`posix`, not `os`: under -S nothing has imported `os`, a millisecond) and the
built-in `_socket` (json, re, enum and the `socket` wrapper each cost milliseconds on every pod
start). Where no server answers, it does the same work in-process if the podnet package is
importable here, and otherwise answers the spec's error 11 (try again later) naming the socket.

Wire format, over one unix stream connection:
  request:  K=V\\0K=V\\0...\\0\\0<stdin>     (the CNI_* environment, then the config)
            with SCM_RIGHTS: the plugin's own network namespace (the node's), then CNI_NETNS
            where it could be opened. The runtime's path may name nothing in the server's
            mount namespace (a DaemonSet's container, containerd's state dir), so the server
            enters the namespaces by these descriptors, never by a path from the request.
  response: <exit code>\\n<stdout>
"""
# Annotations are strings: Python 3.6 runs this file, and evaluates them otherwise.

import _socket
import posix
import sys

CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 120.0
TRY_AGAIN_LATER = 11  # the spec's codes, as in podnet.cni.errors
IO_FAILURE = 5
OLDEST_PYTHON = (3, 6)
_WS = b" \t\r\n"


def top_level_string(text: "bytes", key: "bytes") -> "str | None":
    """The string value of a top-level key of a JSON object, found without a JSON parser.

    Anything unusual (escapes, a non-string value) answers None, and the slow path decides.
    """
    want = b'"' + key + b'"'
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == 0x22:  # '"'
            j = i + 1
            while j < n and text[j] != 0x22:
                j += 2 if text[j] == 0x5C else 1
            k = j + 1
            while k < n and text[k] in _WS:
                k += 1
            if depth == 1 and text[i:j + 1] == want and k < n and text[k] == 0x3A:  # ':'
                k += 1
                while k < n and text[k] in _WS:
                    k += 1
                end = text.find(b'"', k + 1)
                if k >= n or text[k] != 0x22 or end < 0 or b"\\" in text[k + 1:end]:
                    return None
                return text[k + 1:end].decode("utf-8", "replace")
            i = j + 1
            continue
        if c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
        i += 1
    return None


def encode_request(env: "dict[str, str]", stdin: "bytes") -> "bytes":
    return b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0\0" + stdin


def decode_request(data: "bytes") -> "tuple[dict[str, str], bytes]":
    head, _, stdin = data.partition(b"\0\0")
    env = {}
    for item in filter(None, head.split(b"\0")):
        key, _, value = item.decode("utf-8", "replace").partition("=")
        env[key] = value
    return env, stdin


def via_server(path: "str", env: "dict[str, str]", stdin: "bytes") -> "tuple[int, str] | None":
    """(code, stdout) from the server; None when no server is listening there."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            return None
        try:
            sock.settimeout(REPLY_TIMEOUT)
            data = encode_request(env, stdin)
            fds = _namespaces(env.get("CNI_NETNS", ""))
            try:
                rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
                sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            finally:
                for fd in fds:
                    posix.close(fd)
            sock.sendall(data[sent:])
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\n")
            return int(head), body.decode()
        except (OSError, ValueError) as exc:
            # The server took the request and may have acted on it: no blind retry in-process.
            return 1, error_json(TRY_AGAIN_LATER, f"cni-server at {path} failed mid-request: "
                                 f"{exc}", stdin)
    finally:
        sock.close()


def _namespaces(netns: "str") -> "list[int]":
    """Descriptors of this process's network namespace and of CNI_NETNS (left out where it
    cannot be opened: the server then treats it as gone)."""
    fds = [posix.open("/proc/thread-self/ns/net", posix.O_RDONLY | posix.O_CLOEXEC)]
    if netns:
        try:  # noqa: SIM105  (contextlib is not imported on this path: start-up cost)
            fds.append(posix.open(netns, posix.O_RDONLY | posix.O_CLOEXEC))
        except OSError:
            pass
    return fds


def error_json(code: "int", msg: "str", stdin: "bytes") -> "str":
    """The spec's error object, in the config's version (the newest where it has none)."""
    import json

    version = top_level_string(stdin, b"cniVersion") or VERSIONS[-1]
    return json.dumps({"cniVersion": version, "code": code, "msg": msg})


def run_in_process(plugin: "str", env: "dict[str, str]", stdin: "bytes",
                   fallback: "tuple[str, ...]" = (), socket_path: "str | None" = None
                   ) -> "tuple[int, str]":
    """The plugin's work in this process, with podnet from `fallback` (where install-cni found
    it) or the interpreter's own path; error 11 (or 5 where no server is configured) where
    podnet is not importable here."""
    sys.path[:0] = [p for p in fallback if p not in sys.path]
    try:
        from podnet.cni import protocol
    except (ImportError, SyntaxError):  # absent, or this interpreter is older than podnet
        if socket_path:
            return 1, error_json(TRY_AGAIN_LATER, f"no cni-server answers at {socket_path} and "
                                 "podnet is not installed on this host to do the work itself: "
                                 "start the node's podnet agent", stdin)
        return 1, error_json(IO_FAILURE, f"{plugin} runs in-process only and podnet is not "
                             "installed on this host", stdin)
    if plugin == "podnet-ipam":
        from podnet.ipam.plugin import HANDLERS

        return protocol.run(HANDLERS, env, stdin)
    try:
        from podnet.plugins import bridge, context

        with context.local() as ctx:
            return protocol.run(bridge.handlers(ctx), env, stdin)
    except Exception as exc:  # no netlink or a broken install: still an error object
        return 1, error_json(IO_FAILURE, f"podnet cannot run in-process: {exc}", stdin)


# VERSION needs no config and no imports: podnet.cni.version.SUPPORTED_VERSIONS, checked equal
# by the unit tests.
VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_QUOTED = ", ".join(f'"{v}"' for v in VERSIONS)
VERSION_REPLY = f'{{"cniVersion": "{VERSIONS[-1]}", "supportedVersions": [{_QUOTED}]}}'


def main(plugin: "str", fallback: "tuple[str, ...]" = ()) -> "None":
    env = {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
           for k, v in posix.environ.items() if k.startswith(b"CNI_")}
    if env.get("CNI_COMMAND") == "VERSION":
        _exit(0, VERSION_REPLY)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    path = top_level_string(stdin, b"socket") if plugin == "podnet" else None
    result = via_server(path, env, stdin) if path else None
    if result is not None:
        _exit(*result)
    code, out = run_in_process(plugin, env, stdin, fallback, path)
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    sys.exit(code)


def _exit(code: "int", out: "str") -> "None":
    """Out without the interpreter's finalization (1.2 ms of every pod's start): the relay
    holds nothing that needs it, the reply once written and flushed. The in-process path
    exits normally, its modules' clean-up included."""
    sys.stdout.write(out)
    sys.stdout.flush()
    posix._exit(code)
