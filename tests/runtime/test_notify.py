"""sd_notify: readiness and watchdog datagrams reach a real socket named by NOTIFY_SOCKET."""

import asyncio
import os
import socket

from edge.notify import Notifier, watchdog_loop


def drain(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_is_sent_to_the_socket_path(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("3 devices")
    assert drain(sock) == ["READY=1\nSTATUS=3 devices"]


def test_abstract_namespace_socket_is_supported():
    name = f"ocn-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(1)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_watchdog_interval_comes_from_watchdog_usec_for_this_pid():
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 4.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 4.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


async def test_watchdog_pings_at_half_the_interval(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(watchdog_loop(notifier))
    await asyncio.sleep(0.45)
    task.cancel()
    messages = drain(sock)
    # at t = 0, 0.1, 0.2, 0.3, 0.4 s: five pings, allowing one for scheduling slack
    assert set(messages) == {"WATCHDOG=1"}
    assert 4 <= len(messages) <= 6


async def test_a_blocked_event_loop_stops_the_watchdog_pings(notify_socket):
    import time

    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(watchdog_loop(notifier))
    await asyncio.sleep(0.01)
    drain(sock)
    time.sleep(0.3)  # a stuck loop: no ping can be sent while it blocks
    assert drain(sock) == []
    task.cancel()
