"""tools/deploy/linklab/relay.py, the link lab's delay element, on loopback (no root): a
request and its response pay 2 × latency; a stream is delayed once, not once per chunk; the
order holds when the latency falls; a new latency comes from the control file."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from tools.deploy.linklab.relay import CHUNK, Delay, serve

LATENCY_S = 0.1


@pytest.fixture()
def relay(tmp_path):
    """An echo server behind a relay with LATENCY_S each way: (relay port, Delay)."""
    echo = socket.create_server(("127.0.0.1", 0))

    def serve_echo():
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve_echo, daemon=True).start()
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    delay = Delay(LATENCY_S, tmp_path / "control.json")
    ready: dict = {}
    started = threading.Event()

    async def run() -> None:  # serve until told to stop; asyncio.run then ends every task
        ready["loop"], ready["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        server = asyncio.create_task(serve(("127.0.0.1", port), ("127.0.0.1",
                                           echo.getsockname()[1]), delay, signals=False))
        await ready["stop"].wait()
        server.cancel()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    started.wait(5)
    _wait_listening(port)
    yield port, delay
    ready["loop"].call_soon_threadsafe(ready["stop"].set)
    thread.join(timeout=5)
    echo.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise AssertionError("the relay did not listen")


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "the relay closed early"
        got += chunk
    return got


def test_a_request_and_its_response_pay_two_latencies(relay):
    port, _ = relay
    with _connect(port) as sock:
        t0 = time.monotonic()
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - t0 >= 2 * LATENCY_S


def test_a_stream_is_delayed_once_not_per_chunk(relay):
    port, _ = relay
    data = bytes(range(256)) * (64 * CHUNK // 256)  # 64 chunks
    with _connect(port) as sock:
        t0 = time.monotonic()
        for _ in range(4):  # four request-response round trips, one after the other
            sock.sendall(b"ping")
            assert _recv_exactly(sock, 4) == b"ping"
        t1 = time.monotonic()
        threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
        assert _recv_exactly(sock, len(data)) == data  # in order, complete
        t2 = time.monotonic()
    # 64 chunks each held for the latency in turn would take 16 times the four round trips.
    assert t2 - t1 < t1 - t0


def test_order_holds_when_the_latency_falls_and_the_control_file_sets_it(relay):
    port, delay = relay
    with _connect(port) as sock:
        sock.sendall(b"a")  # held 0.1 s each way
        delay.seconds = 0.0
        sock.sendall(b"b")  # due at once, but never before "a"
        assert _recv_exactly(sock, 2) == b"ab"
    delay.control.write_text(json.dumps({"latency-ms": 30}))
    delay.reload()
    assert delay.seconds == pytest.approx(0.03)
    delay.control.write_text("not json")
    delay.reload()  # a bad file keeps the latency
    assert delay.seconds == pytest.approx(0.03)
