"""The virtual boards' network: the broker proxy's link, latency and loss models."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from auxilio.emulator.netem import RTO_S, BrokerProxy
from auxilio.testing.wait import wait_for

pytestmark = pytest.mark.emulator


@pytest.fixture
def echo_server() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def round_trip(port: int, payload: bytes = b"ping") -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(4096)
            assert chunk, "connection closed"
            got += chunk
        assert got == payload
        return time.perf_counter() - t0


def test_forwards_and_adds_latency_both_ways(echo_server: int) -> None:
    proxy = BrokerProxy("127.0.0.1", echo_server)
    try:
        fast = round_trip(proxy.port)
        proxy.set_latency(100)
        slow = round_trip(proxy.port)
        assert slow >= 0.2 > fast  # 100 ms each way
        assert proxy.stats["bytes_up"] > 0 and proxy.stats["bytes_down"] > 0
    finally:
        proxy.close()


def test_link_down_cuts_connections_and_refuses_new_ones(echo_server: int) -> None:
    proxy = BrokerProxy("127.0.0.1", echo_server)
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        wait_for(lambda: proxy.connections(), 10, "the proxy to count the connection")
        proxy.set_link(False)
        s.settimeout(10)
        try:
            assert s.recv(10) == b""  # cut
        except ConnectionResetError:
            pass
        s.close()
        with pytest.raises(OSError):
            round_trip(proxy.port)
        assert proxy.stats["refused"] >= 1
        proxy.set_link(True)
        assert round_trip(proxy.port) < 5
    finally:
        proxy.close()


def test_loss_costs_retransmission_time_not_bytes(echo_server: int) -> None:
    proxy = BrokerProxy("127.0.0.1", echo_server, seed=1)
    try:
        proxy.set_drop(100)  # every segment "lost" once: delivered after an RTO
        t = round_trip(proxy.port, b"x" * 100)
        assert t >= 2 * RTO_S * 0.9  # one RTO each way, bytes intact (checked in round_trip)
        assert proxy.stats["lost"] >= 2
    finally:
        proxy.close()
