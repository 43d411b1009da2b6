"""`ocn-edge hub` speaks sd_notify the way ocn-hub.service (Type=notify, WatchdogSec=) expects.

The hub runs as a real process with $NOTIFY_SOCKET pointing at a datagram socket this test
binds, exactly as systemd would hand it over: it must say READY=1 once it listens, ping
WATCHDOG=1 from its event loop, and say STOPPING=1 on SIGTERM before it exits 0.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

OCN_EDGE = Path(sys.executable).with_name("ocn-edge")


def _messages(sock: socket.socket, hub: subprocess.Popen[str], until: str) -> list[str]:
    """Every message up to the first containing `until`; fails with the hub's stderr if it exits first."""
    seen: list[str] = []
    while not any(until in m for m in seen):
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            if hub.poll() is not None:
                raise AssertionError(f"the hub exited {hub.returncode} before {until}: {hub.stderr.read() if hub.stderr else ''}") from None
    return seen


def test_hub_reports_ready_pings_the_watchdog_and_says_stopping(tmp_path):
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(1)
    env = dict(os.environ, NOTIFY_SOCKET=str(address), WATCHDOG_USEC="400000")
    hub = subprocess.Popen(
        [str(OCN_EDGE), "hub", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "hub"),
         "--admin-token", "admin-secret"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert hub.stderr is not None
    try:
        ready = _messages(sock, hub, "READY=1")
        assert any(m.startswith("READY=1") and "STATUS=serving on http://127.0.0.1:" in m for m in ready), ready
        assert "WATCHDOG=1" in _messages(sock, hub, "WATCHDOG=1")
        hub.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in _messages(sock, hub, "STOPPING=1")
        assert hub.wait(timeout=60) == 0, hub.stderr.read()
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        sock.close()
