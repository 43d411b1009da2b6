import socket

import pytest

from hilsim.pytest_plugin import hilsim_run

# hil-sim's fixtures, offered to these tests by name.
__all__ = ['hilsim_run']


@pytest.fixture
def notify_socket(tmp_path):
    """A systemd-style notification socket: (its path for NOTIFY_SOCKET, the bound datagram socket)."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield str(path), sock
    sock.close()
