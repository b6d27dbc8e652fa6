"""The etcd gateway's HTTP client against a scripted server on loopback: what it does with a
kept connection the server closed, an answer that never comes, a refused connection, and a
watch's lines split across chunks."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from podnet.datastore import gateway

Script = Callable[[socket.socket], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Script], int]]:
    """A loopback server running `script` on each connection it accepts; its port."""
    listeners: list[socket.socket] = []

    def start(script: Script) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=script, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += conn.recv(4096)
    return body


def _answer(conn: socket.socket, body: bytes, extra: bytes = b"") -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def test_a_kept_connection_the_server_closed_is_not_reused(
        serve: Callable[[Script], int]) -> None:
    """etcd closes idle connections; the next request must not go to a closed one (it would
    fail as unreachable although the member is up)."""
    seen: list[int] = []

    def one_answer_then_close(conn: socket.socket) -> None:
        with conn:
            echo = json.loads(_read_request(conn))
            seen.append(echo["n"])
            _answer(conn, json.dumps(echo).encode())  # keep-alive, then closed after all

    member = gateway.Member(f"http://127.0.0.1:{serve(one_answer_then_close)}")
    try:
        assert member.post("/kv/range", {"n": 1}, 5).json() == {"n": 1}
        # Wait until the server's end is closed: the kept connection reads end of file.
        sock = member._idle[0].sock
        sock.settimeout(5)
        assert sock.recv(1, socket.MSG_PEEK) == b""
        assert member.post("/kv/range", {"n": 2}, 5).json() == {"n": 2}
        assert seen == [1, 2]
    finally:
        member.close()


def test_kept_connections_carry_later_requests(serve: Callable[[Script], int]) -> None:
    connections: list[int] = []

    def keep_answering(conn: socket.socket) -> None:
        connections.append(1)
        with conn:
            while True:
                try:
                    body = _read_request(conn)
                except (OSError, StopIteration, ValueError):
                    return
                _answer(conn, body)

    member = gateway.Member(f"http://127.0.0.1:{serve(keep_answering)}")
    try:
        for n in range(3):
            assert member.post("/kv/put", {"n": n}, 5).json() == {"n": n}
        assert len(connections) == 1
    finally:
        member.close()


def test_no_answer_in_time_is_timed_out_not_unreachable(
        serve: Callable[[Script], int]) -> None:
    """A request the member took may have been applied: not one to send to another member."""
    done = threading.Event()

    def never_answer(conn: socket.socket) -> None:
        with conn:
            _read_request(conn)
            done.wait(10)

    member = gateway.Member(f"http://127.0.0.1:{serve(never_answer)}")
    try:
        with pytest.raises(gateway.TimedOut):
            member.post("/kv/put", {}, 0.2)
    finally:
        done.set()
        member.close()


def test_a_refused_connection_is_unreachable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # bound, then closed: nothing listens there
    member = gateway.Member(f"http://127.0.0.1:{port}")
    with pytest.raises(gateway.Unreachable):
        member.post("/kv/range", {}, 2)


def test_a_watch_stream_s_lines_split_across_chunks(serve: Callable[[Script], int]) -> None:
    def chunked(conn: socket.socket) -> None:
        with conn:
            _read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b'{"a": 1}\n{"b"', b': 2}\n', b'{"c": 3}'):
                conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.sendall(b"0\r\n\r\n")

    member = gateway.Member(f"http://127.0.0.1:{serve(chunked)}")
    conn, resp = member.stream("/watch", {}, 5, 5)
    try:
        assert [json.loads(line) for line in gateway.lines(resp)] == [
            {"a": 1}, {"b": 2}, {"c": 3}]
    finally:
        conn.close()
