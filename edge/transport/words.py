"""A failure to reach the hub or the broker, said in our words: no library's class name or message reaches the log.

Our own sentences for the text aiohttp's, aiomqtt's and paho's exceptions carry; where a message we raise ourselves
("the broker closed the connection") passes through, it is kept.

aiohttp's exceptions print as ``ClientConnectorError: Cannot connect to host 127.0.0.1:8443 ssl:default
[Connect call failed ('127.0.0.1', 8443)]`` or ``ClientOSError: [Errno None] Can not write request body for
http://…`` (seen in the soak's logs): an operator should read what happened and what it points at instead.
"""

from __future__ import annotations

import errno
import re
import ssl
import sys

__all__ = ["broker_problem", "certificate_words", "link_problem"]

_ERRNO = {
    errno.ECONNREFUSED: "connection refused (nothing listens there: is it running?)",
    errno.ECONNRESET: "the connection was reset",
    errno.ECONNABORTED: "the connection was aborted",
    errno.EPIPE: "the connection broke",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EHOSTUNREACH: "no route to the host",
    errno.ENETUNREACH: "the network is unreachable (no link or no route)",
    errno.EHOSTDOWN: "the host is down",
    errno.ENETDOWN: "the network is down",
    errno.EADDRNOTAVAIL: "no local address to connect from",
}


def _os_words(exc: BaseException | None) -> str:
    """An OSError's errno in our words; its own text (lowercased) for one we have no words for."""
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or 'no reason given'})" if exc.reason else "the TLS handshake failed"
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO:
            return _ERRNO[exc.errno]
        if exc.strerror:
            return exc.strerror[0].lower() + exc.strerror[1:]
    return "the connection failed"


def certificate_words(error: BaseException) -> str:
    """Why a certificate did not verify, as OpenSSL names it ("self-signed certificate"), without CPython's framing."""
    return str(getattr(error, "verify_message", "") or getattr(error, "reason", "") or "it does not verify")


def link_problem(exc: BaseException, peer: str = "the hub") -> str:
    """What went wrong reaching ``peer`` (an aiohttp client error or an OSError), in one line of our words."""
    aiohttp = sys.modules.get("aiohttp")  # its errors are only raised once it is loaded; never loaded here
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"{peer}'s TLS certificate is not trusted ({certificate_words(exc.certificate_error)})"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"cannot find {exc.host}: the name does not resolve (check the URL and the DNS server)"
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return f"cannot connect to the proxy {exc.host}:{exc.port}: {_os_words(exc.os_error)}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return f"cannot connect to {peer} at {exc.host}:{exc.port}: {_os_words(exc.os_error)}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return f"{peer} closed the connection before answering"
        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            return f"{peer}'s certificate is not the one pinned"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return f"{peer}'s answer was cut off"
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"{peer}'s answer is not valid HTTP (status {exc.status})" if exc.status else f"{peer}'s answer is not valid HTTP"
        if isinstance(exc, aiohttp.InvalidURL):
            return f"not a valid URL: {exc.url}"
        if isinstance(exc, OSError):  # ClientOSError: the connection failed while the request went out or the answer came
            # aiohttp's own (errno None, its sentence as strerror) or the OS's error it wraps, as its cause or itself
            cause = next((e for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, OSError) and e.errno), None)
            return f"the connection to {peer} broke during the request" + (f": {_os_words(cause)}" if cause else "")
        return f"the request to {peer} failed"
    if isinstance(exc, OSError):
        return f"cannot reach {peer}: {_os_words(exc)}"
    return f"the request to {peer} failed"


_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")  # aiomqtt turns connect's OSError into MqttError(str(exc)), errno kept in the text
_MQTT_CONNECT = {  # MQTT 3.1.1 CONNACK return codes (aiomqtt's MqttConnectError with an int)
    1: "it does not speak this MQTT version",
    2: "it does not accept this client id",
    3: "the broker is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
_PAHO_CODES = {  # paho's client error numbers (MQTT_ERR_*) aiomqtt passes on
    4: "not connected to the broker",
    5: "the broker refused the connection",
    7: "the connection to the broker was lost",
}
_MQTT_WHAT = (  # aiomqtt's own sentence, by how it starts, and ours
    ("Could not subscribe", "the broker refused the subscription"),
    ("Could not publish", "the broker refused the message"),
    ("Unexpected disconnection", "the broker dropped the connection"),
    ("Disconnected during message iteration", "the broker dropped the connection"),
    ("Operation timed out", "the broker did not answer in time"),
)


def broker_problem(exc: BaseException) -> str:
    """What went wrong with the MQTT broker (an aiomqtt or an OS error), in one line of our words."""
    if isinstance(exc, OSError):
        return link_problem(exc, "the broker")
    aiomqtt = sys.modules.get("aiomqtt.exceptions")  # MqttConnectError is not exported by aiomqtt itself
    text = str(exc.args[0]) if exc.args else ""
    if aiomqtt is not None and isinstance(exc, aiomqtt.MqttConnectError):
        rc = exc.rc
        why = _MQTT_CONNECT.get(rc, f"code {rc}") if isinstance(rc, int) else f"{getattr(rc, 'value', rc)}: {rc}"
        return f"the broker refused the connection ({why})"
    if aiomqtt is not None and isinstance(exc, aiomqtt.MqttCodeError):
        what = next((ours for theirs, ours in _MQTT_WHAT if text.startswith(theirs)), "the broker failed the request")
        rc = exc.rc
        if isinstance(rc, int):
            return f"{what} ({_PAHO_CODES.get(rc, f'client error {rc}')})"
        return f"{what} ({getattr(rc, 'value', rc)}: {rc})" if rc is not None else what
    if (found := _ERRNO_IN_TEXT.search(text)) is not None:
        return f"cannot reach the broker: {_os_words(OSError(int(found.group(1)), ''))}"
    if aiomqtt is not None and isinstance(exc, aiomqtt.MqttError):
        return next((ours for theirs, ours in _MQTT_WHAT if text.startswith(theirs)), text if text.startswith("the broker") else
                    "the connection to the broker failed")
    return "the connection to the broker failed"
