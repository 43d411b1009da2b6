"""A failure to reach the hub, the broker or the update server, said in our words: no library's class name or
sentence reaches the log, ``/status``, the hub or the command line.

aiohttp's exceptions print as ``ClientConnectorError: Cannot connect to host 127.0.0.1:8443 ssl:default
[Connect call failed ('127.0.0.1', 8443)]`` or ``ClientOSError: [Errno None] Can not write request body for
http://…`` (both seen in the soak's logs), aiomqtt's as ``[code:135] Not authorized``: an operator should read what
happened and what it points at instead.  An OS error number is said in our words where we have some, else as the
C library's ``strerror`` of that number (never the text an exception carries, which may be a library's); a message
we raise ourselves ("the broker closed the connection") passes through as it is.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
import sys

from edge.util.files import file_words

__all__ = ["broker_problem", "ca_bundle_problem", "certificate_words", "link_problem", "listen_problem", "os_words", "printable", "url_problem"]

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
_RESOLVER = {  # getaddrinfo's errors (socket.gaierror), negative numbers on Linux
    socket.EAI_NONAME: "the name does not resolve (check the address and the DNS server)",
    socket.EAI_AGAIN: "the name server did not answer (check the network and the DNS server)",
    socket.EAI_FAIL: "the name server failed",
}


def _number_words(number: int) -> str:
    if number in _ERRNO:
        return _ERRNO[number]
    if number in _RESOLVER:
        return _RESOLVER[number]
    text = os.strerror(number) if number > 0 else f"resolver error {number}"
    return text[0].lower() + text[1:]


def os_words(exc: BaseException | None) -> str:
    """An OS-level failure in our words: a TLS failure by OpenSSL's reason, an errno in ours or the C library's."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the TLS certificate does not verify ({certificate_words(exc)})"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        return f"the TLS handshake failed ({reason})" if reason else "the TLS handshake failed"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        return _number_words(exc.errno)
    return "the connection failed"


def certificate_words(error: BaseException) -> str:
    """Why a certificate did not verify, as OpenSSL names it ("self-signed certificate"), without CPython's framing."""
    return str(getattr(error, "verify_message", "") or getattr(error, "reason", "") or "it does not verify")


_LISTEN = {  # why a server cannot listen where it is told: bind's errors
    errno.EADDRINUSE: "the address is in use (another program listens there; `ss -ltnp` names it)",
    errno.EADDRNOTAVAIL: "this machine has no such address",
    errno.EACCES: "permission denied (a port below 1024 needs privileges)",
}


def listen_problem(exc: OSError) -> str:
    """Why a server cannot listen, in our words, never asyncio's "error while attempting to bind on address (…): …"."""
    if isinstance(exc.errno, int) and exc.errno in _LISTEN:
        return _LISTEN[exc.errno]
    return os_words(exc)


def url_problem(exc: BaseException, peer: str) -> str:
    """Why urllib could not reach ``peer``: a URLError's reason (an OSError, another error, or a sentence) or an OSError."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, OSError):
        return os_words(reason)
    return link_problem(reason, peer) if isinstance(reason, BaseException) else str(reason)


def printable(text: str, limit: int = 200) -> str:
    """What a peer said (an error's detail, an answer that is not one), fit for one line of a log or a terminal:
    whitespace folded, at most ``limit`` characters, anything that is not printable (escape sequences, NUL) as '?'."""
    folded = " ".join(text.split())[:limit]
    return "".join(c if c.isprintable() else "?" for c in folded)


def ca_bundle_problem(exc: BaseException) -> str:
    """Why a CA bundle does not load (``ssl.create_default_context(cafile=…)`` or ``cadata=…``), in our words.

    OpenSSL says ``[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)`` or
    ``[X509] PEM lib (_ssl.c:4154)``; a missing file comes as a bare FileNotFoundError.
    """
    if isinstance(exc, ssl.SSLError):
        if getattr(exc, "reason", None) == "NO_CERTIFICATE_OR_CRL_FOUND" or "no start line" in str(exc):  # cafile= / cadata=
            return "it holds no PEM certificate"
        return "a certificate in it does not parse"
    if isinstance(exc, OSError):
        return file_words(exc)
    return "it is not PEM text"


_AIOHTTP_FIXED = (  # aiohttp's errors that say the same whatever they carry, by class name, and ours
    ("ServerDisconnectedError", "{peer} closed the connection before answering"),
    ("ServerFingerprintMismatch", "{peer}'s certificate is not the one pinned"),
    ("ClientPayloadError", "{peer}'s answer was cut off"),
    ("TooManyRedirects", "{peer} redirected the request too many times (check the URL)"),
)


def link_problem(exc: BaseException, peer: str = "the hub") -> str:
    """What went wrong reaching ``peer`` (an aiohttp client error, a timeout or an OSError), in one line of our words."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError too
        return f"{peer} did not answer in time"
    aiohttp = sys.modules.get("aiohttp")  # its errors are only raised once it is loaded; never loaded here
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return f"{peer}'s TLS certificate is not trusted ({certificate_words(exc.certificate_error)})"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"cannot find {exc.host}: {os_words(exc.os_error) if exc.os_error.errno else _RESOLVER[socket.EAI_NONAME]}"
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return f"cannot connect to the proxy {exc.host}:{exc.port}: {os_words(exc.os_error)}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return f"cannot connect to {peer} at {exc.host}:{exc.port}: {os_words(exc.os_error)}"
        for name, words in _AIOHTTP_FIXED:
            if isinstance(exc, getattr(aiohttp, name)):
                return words.format(peer=peer)
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            return f"the proxy refused to carry the request to {peer} (it answered {exc.status}: check the proxy and its credentials)"
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"{peer}'s answer could not be read (status {exc.status})" if exc.status else f"{peer}'s answer could not be read"
        if isinstance(exc, aiohttp.InvalidURL):
            return f"not a valid URL: {exc.url}"
        if isinstance(exc, OSError):  # ClientOSError: the connection failed while the request went out or the answer came
            # aiohttp's own (its sentence as strerror) or the OS's error it wraps, as its cause or itself: the number only
            cause = next((e for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, OSError) and e.errno), None)
            return f"the connection to {peer} broke during the request" + (f": {os_words(cause)}" if cause else "")
        return f"the request to {peer} failed"
    if isinstance(exc, OSError):
        return f"cannot reach {peer}: {os_words(exc)}"
    return f"the request to {peer} failed"


_ERRNO_IN_TEXT = re.compile(r"\[Errno (-?\d+)\]")  # aiomqtt turns connect's OSError into MqttError(str(exc)): the number is kept
_SSL_IN_TEXT = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")  # and an SSLError likewise
_MQTT_REASONS = {  # MQTT 5 reason codes (paho's ReasonCode.value) the broker gives a client, in our words
    128: "an unspecified error", 129: "a malformed packet", 130: "a protocol error", 131: "an implementation-specific error",
    132: "it does not speak this MQTT version", 133: "it does not accept this client id",
    134: "bad user name or password (check the broker password file)", 135: "not authorised (check the broker's ACL for this gateway)",
    136: "the broker is unavailable", 137: "the broker is busy", 138: "this client is banned", 139: "the broker is shutting down",
    140: "bad authentication method", 141: "the keep-alive ran out", 142: "another connection took over this client id",
    143: "the topic filter is not valid", 144: "the topic name is not valid", 147: "too many messages unacknowledged",
    149: "the packet is too large", 151: "a quota was exceeded", 153: "the payload format is not valid",
    154: "retained messages are not supported", 155: "this QoS is not supported", 156: "use another broker",
    157: "the broker has moved", 159: "connecting too often", 160: "the connection lasted its maximum time",
}
_MQTT_CONNECT = {  # MQTT 3.1.1 CONNACK return codes, should an MQTT 3 session give one
    1: "it does not speak this MQTT version", 2: "it does not accept this client id", 3: "the broker is unavailable",
    4: "bad user name or password (check the broker password file)", 5: "not authorised (check the broker's ACL for this gateway)",
}
_PAHO_CODES = {  # paho's client error numbers (MQTT_ERR_*)
    4: "not connected to the broker", 5: "the broker refused the connection", 7: "the connection to the broker was lost",
}
_MQTT_WHAT = (  # aiomqtt's own sentence, by how it starts, and ours
    ("Could not subscribe", "the broker refused the subscription"),
    ("Could not unsubscribe", "the broker refused to end the subscription"),
    ("Could not publish", "the broker refused the message"),
    ("Unexpected disconnection", "the broker dropped the connection"),
    ("Disconnected during message iteration", "the broker dropped the connection"),
    ("Operation timed out", "the broker did not answer in time"),
)


def _reason_words(rc: object, ints: dict[int, str]) -> str:
    """A paho ReasonCode (its .value) or a plain number, in our words, with the number."""
    value = getattr(rc, "value", rc)
    if not isinstance(value, int):
        return "no reason given"
    words = _MQTT_REASONS.get(value) if hasattr(rc, "value") else ints.get(value)
    return f"{words}, code {value}" if words else f"code {value}"


def broker_problem(exc: BaseException) -> str:
    """What went wrong with the MQTT broker (an aiomqtt, paho or OS error), in one line of our words."""
    if isinstance(exc, OSError | TimeoutError):
        return link_problem(exc, "the broker")
    exceptions = sys.modules.get("aiomqtt.exceptions")  # MqttConnectError is not exported by aiomqtt itself
    text = str(exc.args[0]) if exc.args else ""
    if exceptions is not None and isinstance(exc, exceptions.MqttConnectError):
        return f"the broker refused the connection ({_reason_words(exc.rc, _MQTT_CONNECT)})"
    if exceptions is not None and isinstance(exc, exceptions.MqttCodeError):
        what = next((ours for theirs, ours in _MQTT_WHAT if text.startswith(theirs)), "the broker failed the request")
        return f"{what} ({_reason_words(exc.rc, _PAHO_CODES)})" if exc.rc is not None else what
    if (found := _ERRNO_IN_TEXT.search(text)) is not None:
        return f"cannot reach the broker: {_number_words(int(found.group(1)))}"
    if (found := _SSL_IN_TEXT.search(text)) is not None:
        return f"cannot reach the broker: the TLS handshake failed ({found.group(1)})"
    ours = next((ours for theirs, ours in _MQTT_WHAT if text.startswith(theirs)), None)
    if ours is not None:
        return ours
    if exceptions is not None and isinstance(exc, exceptions.MqttError) and text.startswith("the broker"):
        return text  # raised by us (edge/transport/mqtt.py)
    return "the connection to the broker failed"
